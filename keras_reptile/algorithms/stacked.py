"""Many tasks' networks as one set of kernels: the fast path of the inner loop.

Each weight gets a leading task axis `T`. Convolutions become one grouped convolution with `T`
groups (channels laid out task-major), so BatchNorm's per-channel batch statistics are per task by
construction; dense layers become batched matmuls. One forward/backward pass then trains `T`
independent tasks, instead of `T` small passes. `StackedModel` has the interface of
`FunctionalModel`, so `inner_loop`, `sgd_step` and the optimizers run on it unchanged; tests check
it against `FunctionalModel` (the plain `stateless_call` path) task by task.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_reptile.algorithms.functional import FunctionalModel
from keras_reptile.algorithms.inner_loop import inner_loop, minibatch_indices

_SUPPORTED = (
    keras.layers.InputLayer,
    keras.layers.Conv2D,
    keras.layers.BatchNormalization,
    keras.layers.ReLU,
    keras.layers.MaxPooling2D,
    keras.layers.Flatten,
    keras.layers.Dense,
)


def supports(fmodel: FunctionalModel) -> bool:
    """Whether every layer of the model has a stacked implementation here."""
    for layer in fmodel.model.layers:
        if type(layer) not in _SUPPORTED:
            return False
        if isinstance(layer, keras.layers.BatchNormalization) and not (
            layer.center and layer.scale and layer.axis in (-1, 3)
        ):
            return False
    return True


def group_sizes(num_tasks: int, groups: int) -> list[int]:
    """Sizes of at most `groups` near-equal, non-empty, contiguous groups of `num_tasks` tasks.

    Independent groups run concurrently on TensorFlow's inter-op thread pool: on a few cores,
    two single-threaded stacked networks beat one network whose small kernels are split across
    the cores (benchmarks/meta_step.py).
    """
    groups = max(1, min(groups, num_tasks))
    bounds = [round(i * num_tasks / groups) for i in range(groups + 1)]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def stack(weights: list[tf.Tensor], num_tasks) -> list[tf.Tensor]:
    """Repeats every weight along a new leading task axis."""
    return [tf.repeat(w[None], num_tasks, axis=0) for w in weights]


class StackedModel:
    """Runs `T` copies of a model, each with its own weights, on `T` batches at once.

    Weights are the model's trainable weights with a leading task axis; inputs are
    `[T, batch, ...]`; outputs `[T, batch, outputs]`.

    Args:
        fmodel: FunctionalModel. The model (Conv2D, BatchNormalization, ReLU, MaxPooling2D,
            Flatten and Dense layers in a chain).
    """

    def __init__(self, fmodel: FunctionalModel):
        if not supports(fmodel):
            names = sorted(
                {type(la).__name__ for la in fmodel.model.layers} - {c.__name__ for c in _SUPPORTED}
            )
            raise ValueError(
                f"No stacked implementation for layers {names}. Received: model={fmodel.model.name}"
            )
        self.fmodel = fmodel
        self.regression = fmodel.regression
        self.uses_batch_statistics = fmodel.uses_batch_statistics
        self.num_outputs = fmodel.num_outputs
        self.input_shape = fmodel.input_shape
        # Index of each layer's first trainable weight in the flat weight list.
        self._layers, index = [], 0
        for layer in fmodel.model.layers:
            self._layers.append((layer, index))
            index += len(layer.trainable_weights)

    def __call__(self, weights: list[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        num_tasks = tf.shape(x)[0]
        grouped = False  # False: x is [T, B, ...]; True: x is [B, H, W, T*C]
        for layer, i in self._layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if (
                isinstance(
                    layer,
                    (
                        keras.layers.Conv2D,
                        keras.layers.BatchNormalization,
                        keras.layers.MaxPooling2D,
                    ),
                )
                and not grouped
            ):
                x = _to_grouped(x)
                grouped = True
            if isinstance(layer, keras.layers.Conv2D):
                kernel = weights[i]  # [T, kh, kw, C, O]
                kh, kw, c, o = kernel.shape[1:]
                kernel = tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [kh, kw, c, -1])
                x = tf.nn.conv2d(x, kernel, layer.strides, layer.padding.upper())
                if layer.use_bias:
                    x = x + tf.reshape(weights[i + 1], [-1])
                x = _activate(layer, x)
            elif isinstance(layer, keras.layers.BatchNormalization):
                mean, var = tf.nn.moments(x, axes=[0, 1, 2])
                gamma, beta = (tf.reshape(w, [-1]) for w in weights[i : i + 2])
                x = tf.nn.batch_normalization(x, mean, var, beta, gamma, layer.epsilon)
            elif isinstance(layer, keras.layers.ReLU):
                x = tf.nn.relu(x)
            elif isinstance(layer, keras.layers.MaxPooling2D):
                x = tf.nn.max_pool2d(x, layer.pool_size, layer.strides, layer.padding.upper())
            elif isinstance(layer, keras.layers.Flatten):
                if grouped:
                    b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
                    x = tf.reshape(x, [b, h, w, num_tasks, -1])
                    x = tf.transpose(x, [3, 0, 1, 2, 4])
                    grouped = False
                x = tf.reshape(x, [num_tasks, tf.shape(x)[1], -1])
            elif isinstance(layer, keras.layers.Dense):
                x = tf.matmul(x, weights[i])
                if layer.use_bias:
                    x = x + weights[i + 1][:, None, :]
                x = _activate(layer, x)
        return x

    def loss_from_outputs(self, outputs: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Sum over tasks of each task's loss (so each task's gradient is its own loss's)."""
        if self.regression:
            return tf.reduce_sum(tf.reduce_mean(tf.square(outputs - y), axis=[1, 2]))
        return tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=outputs)
        )

    def loss(self, weights: list[tf.Tensor], x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.loss_from_outputs(self(weights, x), y)


def _to_grouped(x: tf.Tensor) -> tf.Tensor:
    """[T, B, H, W, C] -> [B, H, W, T*C], task-major channels."""
    h, w, c = x.shape[2:]
    x = tf.transpose(x, [1, 2, 3, 0, 4])
    return tf.reshape(x, [tf.shape(x)[0], h, w, -1])


def _activate(layer, x: tf.Tensor) -> tf.Tensor:
    activation = keras.activations.serialize(layer.activation)
    name = (
        activation
        if isinstance(activation, str)
        else activation.get("config", {}).get("name", "linear")
    )
    if name == "linear":
        return x
    if name == "relu":
        return tf.nn.relu(x)
    if name == "tanh":
        return tf.tanh(x)
    raise ValueError(
        f"No stacked implementation for activation {name!r}. Received: layer={layer.name}"
    )


def stack_state(state, num_tasks):
    """Gives every task its own copy of the carried optimizer statistics (the step is shared)."""
    if not state:
        return state
    return type(state)(state.step, tuple(stack(list(state.v), num_tasks)))


def adapt_tasks(
    model: StackedModel,
    optimizer,
    weights,
    state,
    support_x,
    support_y,
    lr,
    num_steps,
    batch_size,
    seeds,
) -> list[tf.Tensor]:
    """`adapt` for `T` tasks at once: stacked weights, `[T, S, ...]` support sets, `[T, 2]` seeds.

    Task `t` sees exactly the mini-batches that `adapt` draws for it with seed `seeds[t]`.
    """
    support_x, support_y = tf.convert_to_tensor(support_x), tf.convert_to_tensor(support_y)
    num_examples = tf.shape(support_x)[1]
    indices = tf.map_fn(
        lambda s: minibatch_indices(s, num_examples, batch_size, num_steps),
        seeds,
        fn_output_signature=tf.int32,
    )  # [T, steps, batch]
    perm = [1, 0, *range(2, support_x.shape.rank + 1)]
    batches_x = tf.transpose(tf.gather(support_x, indices, batch_dims=1), perm)
    batches_y = tf.transpose(
        tf.gather(support_y, indices, batch_dims=1), perm[: support_y.shape.rank + 1]
    )
    return inner_loop(model, optimizer, weights, state, batches_x, batches_y, lr).weights


def predict_tasks(
    model: StackedModel, weights, support_x, query_x, transductive: bool
) -> tf.Tensor:
    """`predict_queries` for `T` tasks: `[T, Q, outputs]`.

    Non-transductive: every (task, query) pair becomes a network of its own, run on the task's
    support set plus that one query, so BatchNorm's statistics never see another query.
    """
    support_x, query_x = tf.convert_to_tensor(support_x), tf.convert_to_tensor(query_x)
    if transductive or not model.uses_batch_statistics:
        return model(weights, query_x)
    num_tasks, num_queries = tf.shape(query_x)[0], tf.shape(query_x)[1]
    pair_weights = [tf.repeat(w, num_queries, axis=0) for w in weights]
    support = tf.repeat(support_x, num_queries, axis=0)  # [T*Q, S, ...]
    queries = tf.reshape(query_x, [-1, 1, *query_x.shape[2:]])  # [T*Q, 1, ...]
    outputs = model(pair_weights, tf.concat([support, queries], axis=1))[:, -1]
    return tf.reshape(outputs, [num_tasks, num_queries, -1])
