"""The plain per-task implementation: the oracle every fast path is compared with.

A Keras model run through its own `stateless_call`, one task at a time, with a plain Python loop of
`GradientTape` steps. Nothing in the library uses it; it is kept simple so that it is easy to trust.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_reptile.algorithms import minibatch_indices


class FunctionalModel:
    """A Keras model as a function of its trainable weights (BatchNorm on batch statistics)."""

    def __init__(self, model: keras.Model, regression: bool):
        self.model, self.regression = model, regression
        self._non_trainable = [
            tf.constant(keras.ops.convert_to_numpy(v)) for v in model.non_trainable_variables
        ]
        self.uses_batch_statistics = any(
            isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers
        )

    def initial_weights(self) -> list[tf.Tensor]:
        return [tf.constant(keras.ops.convert_to_numpy(v)) for v in self.model.trainable_variables]

    def __call__(self, weights, x):
        outputs, _ = self.model.stateless_call(list(weights), self._non_trainable, x, training=True)
        return outputs

    def loss(self, weights, x, y):
        outputs = self(weights, x)
        if self.regression:
            return tf.reduce_mean(tf.square(outputs - y))
        return tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=outputs)
        )


def step(fmodel, optimizer, weights, state, x, y, lr):
    with tf.GradientTape() as tape:
        tape.watch(weights)
        loss = fmodel.loss(weights, x, y)
    weights, state = optimizer.apply(weights, tape.gradient(loss, weights), state, lr)
    return weights, state, loss


def task_update(fmodel, optimizer, theta, state, batches, lr, foml=False):
    """One task's Reptile (phi - theta) or FOMAML (phi_k - phi_{k-1}) delta, new state, mean loss.

    `batches` is `keras_reptile.algorithms.TaskBatches` of one task.
    """
    weights, losses = list(theta), []
    for i in range(batches.head_x.shape[0]):
        weights, state, loss = step(
            fmodel, optimizer, weights, state, batches.head_x[i], batches.head_y[i], lr
        )
        losses.append(loss)
    before = weights
    weights, state, loss = step(
        fmodel, optimizer, weights, state, batches.last_x, batches.last_y, lr
    )
    losses.append(loss)
    origin = before if foml else theta
    return [w - o for w, o in zip(weights, origin)], state, tf.reduce_mean(losses)


def adapt(fmodel, optimizer, weights, state, support_x, support_y, lr, steps, batch_size, seed):
    """`steps` inner steps on mini-batches of the support set drawn as the library draws them."""
    indices = minibatch_indices(seed, support_x.shape[0], batch_size, steps)
    weights = list(weights)
    for i in range(steps):
        x, y = tf.gather(support_x, indices[i]), tf.gather(support_y, indices[i])
        weights, state, _ = step(fmodel, optimizer, weights, state, x, y, lr)
    return weights


def predict(fmodel, weights, support_x, query_x, transductive):
    """Outputs for the queries: together, or each in a batch with the support set only."""
    if transductive or not fmodel.uses_batch_statistics:
        return fmodel(weights, query_x)
    return tf.stack(
        [fmodel(weights, tf.concat([support_x, q[None]], 0))[-1] for q in tf.unstack(query_x)]
    )


def official_meta_iteration(fmodel, optimizer, theta, state, tasks, lr, step_size, foml=False):
    """One meta-iteration as the official code runs it: the meta-batch's tasks one after another
    through one inner optimizer, each restarting from `theta` but continuing the optimizer state
    the task before it left; the last task's state is carried on.

    `tasks` is a list of one task's `TaskBatches` each. Returns `(theta, state)`.
    """
    deltas = []
    for batches in tasks:
        delta, state, _ = task_update(fmodel, optimizer, theta, state, batches, lr, foml)
        deltas.append(delta)
    mean = [tf.add_n(list(ds)) / len(deltas) for ds in zip(*deltas)]
    return [t + step_size * d for t, d in zip(theta, mean)], state
