"""The inner loop: k optimizer steps on one task's mini-batches, as a pure function of tensors.

Meta-training, the evaluator and the exported `adapt_and_predict` signature all adapt through
`adapt` / `inner_loop`, so a served answer is computed exactly as the evaluator computes it.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from keras_reptile.algorithms.functional import FunctionalModel
from keras_reptile.algorithms.inner_optimizers import InnerOptimizer


class InnerLoopResult(NamedTuple):
    weights: list[tf.Tensor]
    state: object  # AdamState or () for SGD
    mean_loss: tf.Tensor


def minibatch_indices(seed: tf.Tensor, num_examples, batch_size, num_batches) -> tf.Tensor:
    """Indices `[num_batches, batch_size]` into a task's examples, as the official code batches.

    The examples are shuffled, cut into consecutive batches, and reshuffled when used up; a batch
    may straddle two shuffles (and so hold an example twice when `batch_size > num_examples`).

    Args:
        seed: int tensor of shape [2]. Stateless seed.
        num_examples: int or scalar tensor. Examples in the task.
        batch_size: int or scalar tensor.
        num_batches: int or scalar tensor.
    """
    needed = num_batches * batch_size
    num_epochs = (needed + num_examples - 1) // num_examples
    keys = tf.random.stateless_uniform(tf.stack([num_epochs, num_examples]), seed)
    order = tf.reshape(tf.argsort(keys, axis=1, stable=True), [-1])[:needed]
    return tf.reshape(tf.cast(order, tf.int32), tf.stack([num_batches, batch_size]))


def sgd_step(fmodel: FunctionalModel, optimizer: InnerOptimizer, weights, state, x, y, lr):
    """One inner update on the batch `(x, y)`. Returns `(weights, state, loss)`."""
    with tf.GradientTape() as tape:
        tape.watch(weights)
        loss = fmodel.loss(weights, x, y)
    grads = tape.gradient(loss, weights)
    weights, state = optimizer.apply(weights, grads, state, lr)
    return weights, state, loss


def inner_loop(
    fmodel: FunctionalModel,
    optimizer: InnerOptimizer,
    weights: list[tf.Tensor],
    state,
    batches_x: tf.Tensor,
    batches_y: tf.Tensor,
    lr,
    unroll: bool = False,
    examples: tuple[tf.Tensor, tf.Tensor] | None = None,
) -> InnerLoopResult:
    """Takes one step per leading entry of `batches_x` / `batches_y`.

    Args:
        fmodel: FunctionalModel. The network as a function of its weights.
        optimizer: InnerOptimizer. Adam (beta1=0) or SGD.
        weights: list of tensors. Starting point (the meta-initialization).
        state: the optimizer's starting state (carried Adam statistics or `()`).
        batches_x: tensor `[steps, batch, ...]`.
        batches_y: tensor `[steps, batch, ...]`.
        lr: float or scalar tensor. Inner step size.
        unroll: bool. Trace a Python loop (needs a static step count) instead of `tf.while_loop`.
        examples: optional `(x, y)`. If given, `batches_x` and `batches_y` hold indices into them
            and each step gathers its own batch (with `tf.while_loop`), so memory does not grow
            with the number of steps.
    """
    weights = list(weights)
    if unroll and examples is None:
        total = tf.constant(0.0)
        steps = batches_x.shape[0]
        for i in range(steps):
            weights, state, loss = sgd_step(
                fmodel, optimizer, weights, state, batches_x[i], batches_y[i], lr
            )
            total += loss
        return InnerLoopResult(weights, state, total / max(steps, 1))

    steps = tf.shape(batches_x)[0]

    def body(i, w, s, total):
        x, y = batches_x[i], batches_y[i]
        if examples is not None:  # the batches are indices into the examples
            x, y = tf.gather(examples[0], x), tf.gather(examples[1], y)
        w, s, loss = sgd_step(fmodel, optimizer, list(w), s, x, y, lr)
        return i + 1, tuple(w), s, total + loss

    _, weights, state, total = tf.while_loop(
        lambda i, *_: i < steps, body, (tf.constant(0), tuple(weights), state, tf.constant(0.0))
    )
    return InnerLoopResult(list(weights), state, total / tf.cast(tf.maximum(steps, 1), tf.float32))


def adapt(
    fmodel: FunctionalModel,
    optimizer: InnerOptimizer,
    weights: list[tf.Tensor],
    state,
    support_x: tf.Tensor,
    support_y: tf.Tensor,
    lr,
    num_steps,
    batch_size,
    seed: tf.Tensor,
) -> list[tf.Tensor]:
    """Fine-tunes `weights` on a support set for `num_steps` mini-batch steps."""
    indices = minibatch_indices(seed, tf.shape(support_x)[0], batch_size, num_steps)
    result = inner_loop(
        fmodel, optimizer, weights, state, indices, indices, lr, examples=(support_x, support_y)
    )
    return result.weights


def predict_queries(
    fmodel: FunctionalModel,
    weights: list[tf.Tensor],
    support_x: tf.Tensor,
    query_x: tf.Tensor,
    transductive: bool,
) -> tf.Tensor:
    """Outputs for each query.

    Transductive: all queries in one batch. Otherwise, as the paper: each query is run in a batch
    with the support set, so BatchNorm's statistics never see another query.
    """
    if transductive or not fmodel.uses_batch_statistics:
        return fmodel(weights, query_x)

    def one(query):
        return fmodel(weights, tf.concat([support_x, query[None]], axis=0))[-1]

    return tf.map_fn(
        one, query_x, fn_output_signature=tf.TensorSpec([fmodel.num_outputs], tf.float32)
    )
