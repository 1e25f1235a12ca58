"""The meta-learner's variables: the initialization, the carried inner-optimizer state, the step."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_reptile.algorithms.inner_optimizers import AdamState, InnerOptimizer


class MetaState(tf.Module):
    """Raw `tf.Variable`s of a meta-training run; checkpointed and exported as they are.

    The step is also the whole random state: every task is derived from `(seed, task index)`.

    Args:
        initial_weights: list of arrays. The starting initialization.
        optimizer: InnerOptimizer. Decides whether Adam statistics are kept.
        seed: int. The run's seed, stored so that a resumed run can check it.
    """

    def __init__(self, initial_weights, optimizer: InnerOptimizer, seed: int):
        super().__init__(name="meta_state")
        self.weights = [tf.Variable(w, name=f"weight_{i}") for i, w in enumerate(initial_weights)]
        self.step = tf.Variable(0, dtype=tf.int64, name="step")
        self.seed = tf.Variable(seed, dtype=tf.int64, name="seed")
        self.adam_step = tf.Variable(0.0, name="adam_step")
        self.adam_v = [
            tf.Variable(tf.zeros_like(w), name=f"adam_v_{i}") for i, w in enumerate(initial_weights)
        ]
        self.optimizer = optimizer

    def read_weights(self) -> list[tf.Tensor]:
        return [w.read_value() for w in self.weights]

    def optimizer_state(self) -> AdamState | tuple:
        if self.optimizer.kind == "sgd":
            return ()
        return AdamState(self.adam_step.read_value(), tuple(v.read_value() for v in self.adam_v))

    def numpy_weights(self) -> list[np.ndarray]:
        return [w.numpy() for w in self.weights]
