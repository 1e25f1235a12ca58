"""Reptile and first-order MAML: the per-task update and the meta-update, as pure functions."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from keras_reptile.algorithms.inner_loop import inner_loop, minibatch_indices, sgd_step
from keras_reptile.algorithms.inner_optimizers import InnerOptimizer


class TaskBatches(NamedTuple):
    """The inner loop's mini-batches: `inner_iters - 1` head batches, then the last batch."""

    head_x: tf.Tensor  # one task: [inner_iters - 1, batch, ...]; stacked: [.., T, batch, ...]
    head_y: tf.Tensor
    last_x: tf.Tensor  # one task: [batch, ...]; stacked: [T, batch, ...]
    last_y: tf.Tensor


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


def task_batches(
    x: tf.Tensor,
    y: tf.Tensor,
    seed: tf.Tensor,
    *,
    inner_batch: int,
    inner_iters: int,
    foml_tail: int = 0,
    ways: int = 1,
) -> TaskBatches:
    """Cuts one task's class-ordered examples into the inner loop's mini-batches.

    With `foml_tail`, the first `inner_iters - 1` batches come from the other examples and the last
    batch is the `foml_tail` held-out shots of every class, which the earlier steps never see.
    """
    if foml_tail:
        x, y, last_x, last_y = split_tail(x, y, ways, foml_tail)
        idx = minibatch_indices(seed, x.shape[0], inner_batch, inner_iters - 1)
        return TaskBatches(tf.gather(x, idx), tf.gather(y, idx), last_x, last_y)
    idx = minibatch_indices(seed, x.shape[0], inner_batch, inner_iters)
    bx, by = tf.gather(x, idx), tf.gather(y, idx)
    return TaskBatches(bx[:-1], by[:-1], bx[-1], by[-1])


def stack_batches(batches: list[TaskBatches]) -> TaskBatches:
    """Stacks tasks' batches for a `StackedModel` (task axis after the step axis)."""
    return TaskBatches(
        *(tf.stack(parts, axis=1 if i < 2 else 0) for i, parts in enumerate(zip(*batches)))
    )


def task_update(
    model,
    optimizer: InnerOptimizer,
    theta: list[tf.Tensor],
    state,
    batches: TaskBatches,
    *,
    lr,
    foml: bool = False,
    unroll: bool = True,
) -> TaskUpdate:
    """Trains stacked tasks from `theta`; returns each one's contribution to the meta-update.

    Per-replica maths: no variable is read or written. `theta`, `state` and `batches` carry a task
    axis (`stack`, `stack_state`, `stack_batches`).
    """
    head = inner_loop(
        model, optimizer, theta, state, batches.head_x, batches.head_y, lr, unroll=unroll
    )
    phi, state, last_loss = sgd_step(
        model, optimizer, head.weights, head.state, batches.last_x, batches.last_y, lr
    )
    origin = head.weights if foml else theta
    delta = [p - o for p, o in zip(phi, origin)]
    steps = batches.head_x.shape[0]
    mean_loss = (head.mean_loss * steps + last_loss) / (steps + 1)
    return TaskUpdate(delta, state, mean_loss)


def meta_step_size(step, meta_iters: int, start: float, final: float) -> tf.Tensor:
    """Outer step size annealed linearly from `start` (step 0) to `final` (step `meta_iters`)."""
    frac = tf.cast(step, tf.float32) / float(meta_iters)
    return frac * final + (1.0 - frac) * start


def meta_update(
    theta: list[tf.Tensor], delta_sum: list[tf.Tensor], num_tasks: int, step_size
) -> list[tf.Tensor]:
    """`theta + step_size * mean delta` over `num_tasks` tasks: Reptile's interpolation, or
    FOMAML's step."""
    return [t + step_size * d / num_tasks for t, d in zip(theta, delta_sum)]
