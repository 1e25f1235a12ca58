"""Test-time adaptation: tasks adapted from one initialization, then their queries answered.

`adapt_and_predict` is the one function that adapts and answers: the evaluator runs it, and so
does every serving signature (the split ones run its two halves, `adapt` and `predict`), which
the Python API calls. A served task is therefore adapted and answered as an evaluated one.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from keras_reptile.algorithms.inner_loop import adapt_tasks, predict_tasks, stack_state
from keras_reptile.algorithms.inner_optimizers import InnerOptimizer
from keras_reptile.algorithms.stacked import StackedModel, stack


class Settings(NamedTuple):
    """How a task is adapted: scalar tensors, as a served request gives them (the signatures'
    `inner_steps`, `inner_batch_size` and `learning_rate`)."""

    inner_steps: tf.Tensor  # int32
    inner_batch_size: tf.Tensor  # int32
    learning_rate: tf.Tensor  # float32

    @classmethod
    def of(cls, inner_steps, inner_batch_size, learning_rate) -> Settings:
        return cls(
            tf.convert_to_tensor(inner_steps, tf.int32),
            tf.convert_to_tensor(inner_batch_size, tf.int32),
            tf.convert_to_tensor(learning_rate, tf.float32),
        )


def adapt(
    model: StackedModel,
    optimizer: InnerOptimizer,
    weights: list[tf.Tensor],
    state,
    support_x: tf.Tensor,
    support_y: tf.Tensor,
    settings: Settings,
    seeds: tf.Tensor,
) -> list[tf.Tensor]:
    """Stacked adapted weights `[T, ...]` of `T` tasks `[T, S, ...]` (`adapt_tasks`; task `t`
    draws its mini-batches with `seeds[t]`).

    Each task gets its own copy of `weights` (no task axis) and of the carried optimizer `state`
    (`()` for SGD), as the official code restores them before every test task.
    """
    support_x = tf.convert_to_tensor(support_x)
    num_tasks = support_x.shape[0] or tf.shape(support_x)[0]
    return adapt_tasks(
        model,
        optimizer,
        stack(list(weights), num_tasks),
        stack_state(state, num_tasks),
        support_x,
        support_y,
        settings.learning_rate,
        settings.inner_steps,
        settings.inner_batch_size,
        seeds,
    )


def predict(model: StackedModel, adapted, support_x, query_x, transductive) -> tf.Tensor:
    """Outputs `[T, Q, outputs]` of adapted tasks for their queries (`predict_tasks`).

    Args:
        transductive: bool, or a scalar bool tensor chosen at run time. Ignored by a model
            without BatchNorm, whose two answers are the same.
    """
    if not model.uses_batch_statistics:
        return predict_tasks(model, adapted, support_x, query_x, True)
    if isinstance(transductive, bool):
        return predict_tasks(model, adapted, support_x, query_x, transductive)
    return tf.cond(
        transductive,
        lambda: predict_tasks(model, adapted, support_x, query_x, True),
        lambda: predict_tasks(model, adapted, support_x, query_x, False),
    )


def adapt_and_predict(
    model: StackedModel,
    optimizer: InnerOptimizer,
    weights: list[tf.Tensor],
    state,
    support_x: tf.Tensor,
    support_y: tf.Tensor,
    query_x: tf.Tensor,
    settings: Settings,
    seeds: tf.Tensor,
    answers: tuple = (False,),
) -> list[tf.Tensor]:
    """`T` tasks adapted on their support sets (`adapt`), then their queries `[T, Q, ...]`
    answered once per entry of `answers` (`predict`'s `transductive`, from one adaptation)."""
    adapted = adapt(model, optimizer, weights, state, support_x, support_y, settings, seeds)
    return [predict(model, adapted, support_x, query_x, answer) for answer in answers]
