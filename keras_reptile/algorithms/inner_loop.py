"""The inner loop on stacked tasks: k optimizer steps on each task's mini-batches, pure functions.

Meta-training adapts through `adapt_tasks`; test-time adaptation (`adaptation.py`) through it too,
answering through `predict_tasks`; a single task is a stack of one.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from keras_reptile.algorithms.inner_optimizers import InnerOptimizer
from keras_reptile.algorithms.stacked import StackedModel, stack


class InnerLoopResult(NamedTuple):
    weights: list[tf.Tensor]
    state: object  # AdamState or () for SGD
    mean_loss: tf.Tensor  # per step, summed over tasks


def group_sizes(num_tasks: int, groups: int) -> list[int]:
    """Sizes of at most `groups` near-equal, non-empty, contiguous groups of `num_tasks` tasks.

    Independent groups run concurrently on TensorFlow's inter-op thread pool: on a few cores,
    two single-threaded stacked networks beat one network whose small kernels are split across
    the cores (benchmarks/meta_step.py).
    """
    groups = max(1, min(groups, num_tasks))
    bounds = [round(i * num_tasks / groups) for i in range(groups + 1)]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def stack_state(state, num_tasks):
    """Gives every task its own copy of the carried optimizer statistics (the step is shared)."""
    if not state:
        return state
    return type(state)(state.step, tuple(stack(list(state.v), num_tasks)))


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


def sgd_step(model: StackedModel, optimizer: InnerOptimizer, weights, state, x, y, lr):
    """One inner update of every task on its batch `(x, y)`. Returns `(weights, state, loss)`."""
    with tf.GradientTape() as tape:
        tape.watch(weights)
        loss = model.loss(weights, x, y)
    # A weight that changes no output (a bias BatchNorm cancels) has a zero gradient.
    grads = tape.gradient(loss, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    new_weights, state = optimizer.apply(weights, grads, state, lr)
    for new, old in zip(new_weights, weights):
        new.set_shape(old.shape)  # gradients through a batch of unknown size can lose it
    return new_weights, state, loss


def inner_loop(
    model: StackedModel,
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
        model: StackedModel. The tasks' networks as a function of their stacked weights.
        optimizer: InnerOptimizer. Adam (beta1=0) or SGD.
        weights: list of tensors `[T, ...]`. Starting point.
        state: the optimizer's starting state (stacked Adam statistics or `()`).
        batches_x: tensor `[steps, T, batch, ...]`, or with `examples`, indices `[T, steps,
            batch]` into them.
        batches_y: tensor `[steps, T, batch, ...]` (ignored with `examples`).
        lr: float or scalar tensor. Inner step size.
        unroll: bool. Trace a Python loop (needs a static step count) instead of `tf.while_loop`.
        examples: optional `(x [T, S, ...], y [T, S, ...])`. Each step then gathers its own
            batches inside the loop, so memory does not grow with the number of steps.
    """
    weights = list(weights)

    def batch(i):
        if examples is None:
            return batches_x[i], batches_y[i]
        idx = batches_x[:, i]
        return (tf.gather(e, idx, batch_dims=1) for e in examples)

    if unroll:
        total = tf.constant(0.0)
        steps = batches_x.shape[0 if examples is None else 1]
        for i in range(steps):
            weights, state, loss = sgd_step(model, optimizer, weights, state, *batch(i), lr)
            total += loss
        return InnerLoopResult(weights, state, total / max(steps, 1))

    steps = tf.shape(batches_x)[0 if examples is None else 1]

    def body(i, w, s, total):
        w, s, loss = sgd_step(model, optimizer, list(w), s, *batch(i), lr)
        return i + 1, tuple(w), s, total + loss

    _, weights, state, total = tf.while_loop(
        lambda i, *_: i < steps, body, (tf.constant(0), tuple(weights), state, tf.constant(0.0))
    )
    return InnerLoopResult(list(weights), state, total / tf.cast(tf.maximum(steps, 1), tf.float32))


def adapt_tasks(
    model: StackedModel,
    optimizer: InnerOptimizer,
    weights: list[tf.Tensor],
    state,
    support_x: tf.Tensor,
    support_y: tf.Tensor,
    lr,
    num_steps,
    batch_size,
    seeds: tf.Tensor,
) -> list[tf.Tensor]:
    """Fine-tunes `T` tasks from stacked `weights` on their support sets `[T, S, ...]`.

    Task `t` takes `num_steps` steps on mini-batches of `batch_size` drawn with seed `seeds[t]`
    (`minibatch_indices`), whatever the other tasks of the stack.
    """
    support_x, support_y = tf.convert_to_tensor(support_x), tf.convert_to_tensor(support_y)
    num_examples = tf.shape(support_x)[1]
    if seeds.shape[0] == 1:
        indices = minibatch_indices(seeds[0], num_examples, batch_size, num_steps)[None]
    else:
        indices = tf.map_fn(
            lambda s: minibatch_indices(s, num_examples, batch_size, num_steps),
            seeds,
            fn_output_signature=tf.int32,
        )  # [T, steps, batch]
    result = inner_loop(
        model, optimizer, weights, state, indices, None, lr, examples=(support_x, support_y)
    )
    return result.weights


# The non-transductive query pass runs its (task, query) networks in chunks of at most this many
# activation values (float32), so its memory stays bounded however many queries a task has.
QUERY_PASS_CHUNK_FLOATS = 2**25


def predict_tasks(
    model: StackedModel, weights, support_x, query_x, transductive: bool
) -> tf.Tensor:
    """Outputs `[T, Q, outputs]` for each task's queries `[T, Q, ...]`.

    Transductive: all of a task's queries in one batch. Otherwise, as the paper: every (task,
    query) pair becomes a network of its own, run on the task's support set plus that one query,
    so BatchNorm's statistics never see another query; the pairs run a chunk at a time
    (`query_pass_chunk`), so memory grows with the chunk, not with support x queries. `support_x`
    is only read then (it may be None otherwise).
    """
    query_x = tf.convert_to_tensor(query_x)
    if transductive or not model.uses_batch_statistics:
        return model(weights, query_x)
    support_x = tf.convert_to_tensor(support_x)
    num_tasks, num_queries = tf.shape(query_x)[0], tf.shape(query_x)[1]
    num_pairs = num_tasks * num_queries
    pair_task = tf.repeat(tf.range(num_tasks), num_queries)  # the task of each pair
    queries = tf.reshape(query_x, [-1, 1, *query_x.shape[2:]])  # [T*Q, 1, ...]
    # No more networks than pairs (but two at least): a lone query runs two, not a full chunk.
    chunk = tf.minimum(
        query_pass_chunk(model.cost.activation_floats, tf.shape(support_x)[1]),
        tf.maximum(2, num_pairs),
    )

    def pairs(start):
        # Always `chunk` networks (the last chunk repeats the last pair), the valid ones kept:
        # a grouped convolution of one group takes another kernel, which rounds differently.
        index = tf.minimum(tf.range(start, start + chunk), num_pairs - 1)
        task = tf.gather(pair_task, index)
        x = tf.concat([tf.gather(support_x, task), tf.gather(queries, index)], axis=1)
        outputs = model([tf.gather(w, task) for w in weights], x)[:, -1]
        return outputs[: tf.minimum(chunk, num_pairs - start)]

    num_chunks = (num_pairs + chunk - 1) // chunk
    parts = tf.TensorArray(tf.float32, size=num_chunks, infer_shape=False)
    _, parts = tf.while_loop(
        lambda i, _: i < num_chunks,
        lambda i, parts: (i + 1, parts.write(i, pairs(i * chunk))),
        (tf.constant(0), parts),
    )
    return tf.reshape(parts.concat(), [num_tasks, num_queries, -1])


def query_pass_chunk(activation_floats: int, support_size) -> tf.Tensor:
    """(task, query) networks per chunk of the non-transductive query pass, for a model of
    `activation_floats` per example and `support_size` support examples (an int or a tensor):
    as many as fit in `QUERY_PASS_CHUNK_FLOATS` activation values, at least two."""
    per_network = activation_floats * (tf.cast(support_size, tf.int64) + 1)
    chunk = tf.maximum(tf.constant(2, tf.int64), QUERY_PASS_CHUNK_FLOATS // per_network)
    return tf.cast(chunk, tf.int32)
