"""Inner loop, inner optimizers, and the Reptile / FOMAML updates."""

from keras_reptile.algorithms.functional import FunctionalModel
from keras_reptile.algorithms.inner_loop import (
    adapt,
    inner_loop,
    minibatch_indices,
    predict_queries,
    sgd_step,
)
from keras_reptile.algorithms.inner_optimizers import AdamState, InnerOptimizer
from keras_reptile.algorithms.reptile import meta_step_size, meta_update, task_update

__all__ = [
    "AdamState",
    "FunctionalModel",
    "InnerOptimizer",
    "adapt",
    "inner_loop",
    "meta_step_size",
    "meta_update",
    "minibatch_indices",
    "predict_queries",
    "sgd_step",
    "task_update",
]
