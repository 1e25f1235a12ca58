"""Inner loop, inner optimizers, the Reptile / FOMAML updates, and the stacked fast path."""

from keras_reptile.algorithms.functional import FunctionalModel
from keras_reptile.algorithms.inner_loop import (
    adapt,
    inner_loop,
    minibatch_indices,
    predict_queries,
    sgd_step,
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
    adapt_tasks,
    group_sizes,
    predict_tasks,
    stack,
    stack_state,
    supports,
)

__all__ = [
    "group_sizes",
    "AdamState",
    "FunctionalModel",
    "InnerOptimizer",
    "StackedModel",
    "TaskBatches",
    "adapt",
    "adapt_tasks",
    "inner_loop",
    "meta_step_size",
    "meta_update",
    "minibatch_indices",
    "predict_queries",
    "predict_tasks",
    "sgd_step",
    "stack",
    "stack_batches",
    "stack_state",
    "supports",
    "task_batches",
    "task_update",
]
