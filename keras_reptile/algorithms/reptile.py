"""Reptile and first-order MAML: the per-task update and the meta-update, as pure functions."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from keras_reptile.algorithms.functional import FunctionalModel
from keras_reptile.algorithms.inner_loop import inner_loop, minibatch_indices, sgd_step
from keras_reptile.algorithms.inner_optimizers import InnerOptimizer


class TaskUpdate(NamedTuple):
    delta: list[tf.Tensor]  # Reptile: phi_k - theta. FOMAML: phi_k - phi_{k-1}.
    state: object  # the inner optimizer's state after the task
    mean_loss: tf.Tensor


def split_tail(x: tf.Tensor, y: tf.Tensor, ways: int, tail_shots: int):
    """Splits a class-ordered task into `(head_x, head_y, tail_x, tail_y)`.

    The tail holds the last `tail_shots` examples of every class.
    """
    per_class = x.shape[0] // ways
    xs = tf.reshape(x, [ways, per_class, *x.shape[1:]])
    ys = tf.reshape(y, [ways, per_class, *y.shape[1:]])
    head = per_class - tail_shots

    def flat(t):
        return tf.reshape(t, [-1, *t.shape[2:]])

    return flat(xs[:, :head]), flat(ys[:, :head]), flat(xs[:, head:]), flat(ys[:, head:])


def task_update(
    fmodel: FunctionalModel,
    optimizer: InnerOptimizer,
    theta: list[tf.Tensor],
    state,
    x: tf.Tensor,
    y: tf.Tensor,
    *,
    seed: tf.Tensor,
    lr,
    inner_batch: int,
    inner_iters: int,
    foml: bool = False,
    foml_tail: int = 0,
    ways: int = 1,
    unroll: bool = True,
) -> TaskUpdate:
    """Trains on one task from `theta` and returns its contribution to the meta-update.

    Per-replica maths: no variables are read or written. `x` / `y` hold the task's examples
    ordered by class. With `foml_tail`, the first `inner_iters - 1` steps use mini-batches of the
    other examples and the last step uses the `foml_tail` held-out shots of every class.
    """
    if foml and foml_tail:
        x, y, last_x, last_y = split_tail(x, y, ways, foml_tail)
        idx = minibatch_indices(seed, x.shape[0], inner_batch, inner_iters - 1)
        head_x, head_y = tf.gather(x, idx), tf.gather(y, idx)
    else:
        idx = minibatch_indices(seed, x.shape[0], inner_batch, inner_iters)
        bx, by = tf.gather(x, idx), tf.gather(y, idx)
        head_x, head_y, last_x, last_y = bx[:-1], by[:-1], bx[-1], by[-1]
    head = inner_loop(fmodel, optimizer, theta, state, head_x, head_y, lr, unroll=unroll)
    phi, state, last_loss = sgd_step(
        fmodel, optimizer, head.weights, head.state, last_x, last_y, lr
    )
    origin = head.weights if foml else theta
    delta = [p - o for p, o in zip(phi, origin)]
    steps = inner_iters - 1
    mean_loss = (head.mean_loss * steps + last_loss) / inner_iters
    return TaskUpdate(delta, state, mean_loss)


def meta_step_size(step, meta_iters: int, start: float, final: float) -> tf.Tensor:
    """Outer step size annealed linearly from `start` (step 0) to `final` (step `meta_iters`)."""
    frac = tf.cast(step, tf.float32) / float(meta_iters)
    return frac * final + (1.0 - frac) * start


def meta_update(theta: list[tf.Tensor], mean_delta: list[tf.Tensor], step_size) -> list[tf.Tensor]:
    """`theta + step_size * mean_delta`: Reptile's interpolation, or FOMAML's step."""
    return [t + step_size * d for t, d in zip(theta, mean_delta)]
