"""Stateless inner-loop optimizers on lists of weight tensors.

Keras' optimizers have no stateless path on the TensorFlow backend, so the two updates the paper
uses are written here as pure functions: `(weights, grads, state, lr) -> (weights, state)`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import tensorflow as tf

OPTIMIZERS = ("adam", "sgd")


class AdamState(NamedTuple):
    """Adam's carried statistics. With beta1=0 the first moment is the gradient itself."""

    step: tf.Tensor  # float32 scalar: updates taken so far (TF1's beta2_power = beta2**step).
    v: tuple[tf.Tensor, ...]  # second-moment estimates, one per weight.


@dataclasses.dataclass(frozen=True)
class InnerOptimizer:
    """Adam with beta1=0 (the paper's default) or plain SGD.

    Adam follows TF1's `AdamOptimizer` exactly: `lr_t = lr * sqrt(1 - beta2**t)`,
    `v = beta2 * v + (1 - beta2) * g**2`, `w -= lr_t * g / (sqrt(v) + epsilon)`.

    Args:
        kind: str. "adam" or "sgd".
        beta2: float. Second-moment decay.
        epsilon: float. Added to `sqrt(v)`.
    """

    kind: str = "adam"
    beta2: float = 0.999
    epsilon: float = 1e-8

    def __post_init__(self):
        if self.kind not in OPTIMIZERS:
            raise ValueError(
                f"Unknown inner optimizer. Expected one of {OPTIMIZERS}. "
                f"Received: kind={self.kind!r}"
            )

    def init_state(self, weights: list[tf.Tensor]) -> AdamState | tuple:
        """Fresh state: zero statistics for Adam, none for SGD."""
        if self.kind == "sgd":
            return ()
        return AdamState(tf.constant(0.0), tuple(tf.zeros_like(w) for w in weights))

    def apply(
        self, weights: list[tf.Tensor], grads: list[tf.Tensor], state: AdamState | tuple, lr
    ) -> tuple[list[tf.Tensor], AdamState | tuple]:
        """One update of every weight. Returns the new weights and state."""
        if self.kind == "sgd":
            return [w - lr * g for w, g in zip(weights, grads)], state
        step = state.step + 1.0
        lr_t = lr * tf.sqrt(1.0 - tf.pow(self.beta2, step))
        new_v = tuple(
            self.beta2 * v + (1.0 - self.beta2) * tf.square(g) for v, g in zip(state.v, grads)
        )
        new_weights = [
            w - lr_t * g / (tf.sqrt(v) + self.epsilon) for w, g, v in zip(weights, grads, new_v)
        ]
        return new_weights, AdamState(step, new_v)
