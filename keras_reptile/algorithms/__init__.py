"""The stacked network, the inner loop, the inner optimizers and the Reptile / FOMAML updates."""

from keras_reptile.algorithms.adaptation import Settings, adapt, adapt_and_predict, predict
from keras_reptile.algorithms.inner_loop import (
    adapt_tasks,
    group_sizes,
    inner_loop,
    minibatch_indices,
    predict_tasks,
    sgd_step,
    stack_state,
)
from keras_reptile.algorithms.inner_optimizers import AdamState, InnerOptimizer
from keras_reptile.algorithms.reptile import (
    TaskBatches,
    meta_step_size,
    meta_update,
    stack_batches,
    task_batches,
    task_update,
)
from keras_reptile.algorithms.stacked import (
    StackedModel,
    batch_norm,
    check_supported,
    flatten_weights,
    stack,
    unflatten_weights,
)

__all__ = [
    "AdamState",
    "InnerOptimizer",
    "Settings",
    "StackedModel",
    "TaskBatches",
    "adapt",
    "adapt_and_predict",
    "adapt_tasks",
    "batch_norm",
    "check_supported",
    "flatten_weights",
    "group_sizes",
    "inner_loop",
    "meta_step_size",
    "meta_update",
    "minibatch_indices",
    "predict",
    "predict_tasks",
    "sgd_step",
    "stack",
    "stack_batches",
    "stack_state",
    "task_batches",
    "task_update",
    "unflatten_weights",
]
