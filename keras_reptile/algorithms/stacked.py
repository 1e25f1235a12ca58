"""A Keras model as a pure function of stacked weights: `T` tasks' networks in one graph.

Each trainable weight gets a leading task axis `T`. With `T` known when tracing, each task's image
layers run on plain kernels of its own (TensorFlow's executor runs the tasks' ops side by side),
so a task's result is the same whatever it is stacked with; dense layers are batched matmuls.
One forward/backward pass trains `T` independent tasks; a single task is a stack of one. A task
count known only at run time (forward passes of the serving signatures) runs the image layers as
one grouped convolution with `T` groups. The tests check both against Keras' own
`stateless_call`, task by task.

Only what is computed exactly is accepted: a model with another layer or option is refused when
the `StackedModel` is built.
"""

from __future__ import annotations

import functools
import math

import keras
import tensorflow as tf

from keras_reptile.models.cost import ModelCost
from keras_reptile.task_kind import TaskKind

# Element-wise activations, computed by Keras's own functions (so exactly as the Keras model).
_ELEMENTWISE = (
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish",
    "tanh", "sigmoid", "hard_sigmoid", "hard_silu", "softplus", "softsign", "log_sigmoid",
)  # fmt: skip
# A last layer's softmax is taken as logits: the loss and the signatures apply their own.
_HEAD_ACTIVATIONS = ("softmax", "log_softmax")
_POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
_GLOBAL_POOLING = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
_IMAGE_LAYERS = (keras.layers.Conv2D, keras.layers.BatchNormalization, *_POOLING, *_GLOBAL_POOLING)
# Weightless element-wise layers: called as they are.
_ELEMENTWISE_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU)
_LAYERS = (
    *_IMAGE_LAYERS,
    *_ELEMENTWISE_LAYERS,
    keras.layers.Activation,
    keras.layers.LayerNormalization,
    keras.layers.Softmax,
    keras.layers.Flatten,
    keras.layers.Dense,
)
_RANDOM_LAYERS = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)
SUPPORTED = (
    "a chain of Conv2D, Dense, BatchNormalization, LayerNormalization (last axis), "
    "MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, Flatten, "
    "ReLU, LeakyReLU, ELU and Activation layers, channels-last, with element-wise activations "
    f"({', '.join(_ELEMENTWISE)}); a softmax on the last layer is taken as logits"
)


def _activation_name(layer) -> str:
    activation = keras.activations.serialize(layer.activation)
    if isinstance(activation, str):
        return activation
    return activation.get("config", {}).get("name", activation.get("class_name", "?"))


def _refuse(layer, what: str, value, instead: str = "") -> ValueError:
    hint = f" {instead}" if instead else f" Supported: {SUPPORTED}."
    return ValueError(
        f"The stacked implementation cannot compute layer {layer.name!r} "
        f"({type(layer).__name__}): {what} is not supported.{hint} Received: {what}={value!r}"
    )


def _check_activation(layer, last: bool) -> None:
    name = _activation_name(layer)
    if name in _HEAD_ACTIVATIONS and not last:
        raise _refuse(layer, "activation", name, "A softmax is only taken as the last layer's.")
    if name not in (*_ELEMENTWISE, *_HEAD_ACTIVATIONS):
        raise _refuse(layer, "activation", name)


def check_supported(model: keras.Model) -> None:
    """Raises `ValueError` naming the first layer or option the stacked path cannot compute, and
    what to use instead. Supported: see `SUPPORTED`."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        raise ValueError(
            "The model has no defined input: start a Sequential with keras.Input(shape) (or "
            f"build a functional model on one). Received: model={model.name!r}"
        ) from None
    layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            "The stacked implementation needs one input and one output. "
            f"Received: inputs={len(inputs)}, outputs={len(outputs)}"
        )
    image = len(inputs[0].shape) == 4
    if len(inputs[0].shape) not in (2, 4):
        raise ValueError(
            "The stacked implementation takes vectors [N, D] or channels-last images "
            f"[N, H, W, C]. Received: input_shape={tuple(inputs[0].shape)}"
        )
    previous = inputs[0]
    for position, layer in enumerate(layers):
        last = position == len(layers) - 1
        if isinstance(layer, _RANDOM_LAYERS):
            raise _refuse(
                layer,
                "layer type",
                type(layer).__name__,
                "It draws new random numbers at every inner step, which the stacked "
                "implementation does not reproduce; remove it (few-shot adaptation runs a "
                "handful of steps on a handful of examples).",
            )
        if type(layer) not in _LAYERS:
            raise _refuse(layer, "layer type", type(layer).__name__)
        if layer.input is not previous:
            raise _refuse(layer, "a layer off the chain (branches or skips)", layer.input.name)
        previous = layer.output
        if getattr(layer, "lora_enabled", False):
            raise _refuse(layer, "lora_enabled", True)
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise _refuse(layer, "data_format", layer.data_format)
        if isinstance(layer, _IMAGE_LAYERS) and not image:
            raise _refuse(layer, "an image layer after Flatten", type(layer).__name__)
        if isinstance(layer, keras.layers.Dense) and image:
            raise _refuse(layer, "Dense on an image (Flatten first)", tuple(layer.input.shape))
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense, keras.layers.Activation)):
            _check_activation(layer, last)
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            expected = 1 + int(layer.use_bias)
            if len(layer.trainable_weights) != expected:
                raise _refuse(layer, "frozen weights", len(layer.trainable_weights))
        if isinstance(layer, keras.layers.Softmax) and not (last and layer.axis in (-1, [-1])):
            raise _refuse(
                layer, "Softmax other than the last layer's, on the last axis", layer.axis
            )
        if isinstance(layer, keras.layers.Conv2D):
            if tuple(layer.dilation_rate) != (1, 1):
                raise _refuse(layer, "dilation_rate", tuple(layer.dilation_rate))
            if layer.groups != 1:
                raise _refuse(layer, "groups", layer.groups)
        if isinstance(layer, keras.layers.BatchNormalization):
            axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
            if axis not in (-1, 3, [-1], [3], (-1,), (3,)):
                raise _refuse(layer, "axis", axis)
            if not (layer.center and layer.scale):
                raise _refuse(layer, "center=False or scale=False", (layer.center, layer.scale))
            if len(layer.trainable_weights) != 2:
                raise _refuse(layer, "frozen weights", len(layer.trainable_weights))
        if isinstance(layer, keras.layers.LayerNormalization):
            rank = len(layer.input.shape)
            axes = [
                a % rank for a in (layer.axis if isinstance(layer.axis, list) else [layer.axis])
            ]
            if axes != [rank - 1]:
                raise _refuse(layer, "axis other than the last", layer.axis)
            if layer.rms_scaling:
                raise _refuse(layer, "rms_scaling", True)
            if len(layer.trainable_weights) != int(layer.center) + int(layer.scale):
                raise _refuse(layer, "frozen weights", len(layer.trainable_weights))
        if isinstance(layer, _GLOBAL_POOLING) and layer.keepdims:
            raise _refuse(layer, "keepdims", True, "Pool without keepdims, then Dense layers.")
        if isinstance(layer, (keras.layers.Flatten, *_GLOBAL_POOLING)):
            image = False


class StackedModel:
    """Runs `T` copies of a model, each with its own weights, on `T` batches at once.

    Weights are the model's trainable weights with a leading task axis; inputs are
    `[T, batch, ...]`; outputs `[T, batch, outputs]`. Never writes a variable. BatchNorm always
    normalises with the batch's own statistics, as the paper's model does at meta-training and
    evaluation alike, so its moving statistics are never read.

    Args:
        model: keras.Model. The architecture and its initial weights (see `check_supported`).
        task_kind: TaskKind. Classification or regression: its loss is the inner loop's.

    Example:
    >>> from keras_reptile.models import build_model
    >>> from keras_reptile.task_kind import REGRESSION
    >>> model = StackedModel(build_model("sine_mlp", 1, (1,)), REGRESSION)
    >>> model(stack(model.initial_weights(), 2), tf.zeros([2, 3, 1])).shape
    TensorShape([2, 3, 1])
    """

    def __init__(self, model: keras.Model, task_kind: TaskKind):
        check_supported(model)
        self.model, self.task_kind = model, task_kind
        self._initial = [
            tf.constant(keras.ops.convert_to_numpy(v)) for v in model.trainable_variables
        ]
        self.uses_batch_statistics = any(
            isinstance(la, keras.layers.BatchNormalization) for la in model.layers
        )
        # Each layer with the index of its first trainable weight in the flat weight list.
        self._layers, index = [], 0
        for layer in model.layers:
            if not isinstance(layer, keras.layers.InputLayer):
                self._layers.append((layer, index))
            index += len(layer.trainable_weights)
        # A bias that BatchNorm follows is subtracted again with the batch mean: it changes no
        # output and its gradient is exactly zero, so it is not added (its float noise would
        # otherwise drive Adam's sign-like steps on it).
        self._cancelled_bias = {
            id(layer)
            for (layer, _), (after, _) in zip(self._layers, self._layers[1:])
            if isinstance(layer, keras.layers.Conv2D)
            and isinstance(after, keras.layers.BatchNormalization)
            and _activation_name(layer) == "linear"
        }

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.model.input_shape[1:])

    @property
    def num_outputs(self) -> int:
        return int(self.model.output_shape[-1])

    @property
    def weight_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(v.shape) for v in self.model.trainable_variables]

    @functools.cached_property
    def cost(self) -> ModelCost:
        """Per-example forward FLOPs, activation values and weights."""
        return ModelCost.of(self.model)

    @property
    def num_weights(self) -> int:
        """Values in one task's weights: the length of `flatten_weights`' rows."""
        return sum(math.prod(shape) for shape in self.weight_shapes)

    def initial_weights(self) -> list[tf.Tensor]:
        """The model's trainable weights (no task axis) as they were when it was wrapped; later
        assignments to the Keras model (a trainer showing it the current initialization) do
        not change them."""
        return list(self._initial)

    def __call__(self, weights: list[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """Outputs `[T, batch, outputs]` of each task's network on its own batch.

        With `T` known when tracing, each task runs as a network of its own (`network`), so its
        outputs and gradients are bit-identical to the task's alone. A `T` known only at run time
        runs the image layers as one grouped convolution: forward only, since TensorFlow
        differentiates grouped convolutions on CPU only under oneDNN.
        """
        num_tasks = x.shape[0]
        if num_tasks:
            return tf.stack([self.network(w, x_t) for w, x_t in self._tasks(weights, x)])
        return self._grouped(weights, x)

    def loss(self, weights: list[tf.Tensor], x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Sum over tasks of each task's loss (so each task's gradient is its own loss's).

        Needs the task count when tracing: the loss is for gradients, and a stack of unknown size
        is grouped, which TensorFlow cannot differentiate on CPU without oneDNN.
        """
        num_tasks = x.shape[0]
        if not num_tasks:
            raise ValueError(
                "The loss needs the number of stacked tasks when tracing. "
                f"Received: x.shape={x.shape}"
            )
        ys = tf.unstack(y, num_tasks)
        return tf.add_n(
            [
                self.task_kind.loss(self.network(w, x_t), ys[t])
                for t, (w, x_t) in enumerate(self._tasks(weights, x))
            ]
        )

    def _tasks(self, weights: list[tf.Tensor], x: tf.Tensor):
        """`(weights, x)` of each of the `T` tasks, the task axis removed."""
        num_tasks = x.shape[0]
        if num_tasks == 1:  # reshapes only, forward and backward (a slice's gradient copies)
            return [([tf.squeeze(w, 0) for w in weights], tf.squeeze(x, 0))]
        per_task = [tf.unstack(w, num_tasks) for w in weights]
        return [([w[t] for w in per_task], x_t) for t, x_t in enumerate(tf.unstack(x, num_tasks))]

    def network(self, weights: list[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """One task's network: outputs `[batch, outputs]` of weights without a task axis."""
        for layer, i in self._layers:
            n = len(layer.trainable_weights)
            if isinstance(layer, keras.layers.Flatten):
                x = tf.reshape(x, [tf.shape(x)[0], -1])
            elif isinstance(layer, _GLOBAL_POOLING):
                x = _global_pool(layer, x, axes=[1, 2])
            elif isinstance(layer, keras.layers.Dense):
                x = tf.matmul(x, weights[i])
                if layer.use_bias:
                    x = x + weights[i + 1]
                x = self._activate(layer, x)
            elif isinstance(layer, keras.layers.LayerNormalization):
                x = _layer_norm(layer, x, weights[i : i + n])
            elif self._is_elementwise(layer):
                x = self._elementwise(layer, x)
            else:
                x = self._image_layer(layer, weights[i : i + n], x)
        return x

    def _grouped(self, weights: list[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """`__call__` for a task count known only at run time: image layers on `[B, H, W, T*C]`
        with one group of channels per task, dense layers as batched matmuls."""
        image_x = None
        for layer, i in self._layers:
            n = len(layer.trainable_weights)
            if isinstance(layer, (keras.layers.Flatten, *_GLOBAL_POOLING)):
                if image_x is None:
                    x = tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], -1])
                else:  # [B, H, W, T*C] -> [T, B, H, W, C] -> [T, B, H*W*C] or pooled [T, B, C]
                    x = _from_grouped(image_x, tf.shape(weights[0])[0])
                    if isinstance(layer, keras.layers.Flatten):
                        x = tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], -1])
                    else:
                        x = _global_pool(layer, x, axes=[2, 3])
                image_x = None
            elif image_x is None and self._is_elementwise(layer):
                x = self._elementwise(layer, x)
            elif isinstance(layer, keras.layers.Dense):
                x = tf.matmul(x, weights[i])
                if layer.use_bias:
                    x = x + weights[i + 1][:, None, :]
                x = self._activate(layer, x)
            elif isinstance(layer, keras.layers.LayerNormalization):
                # Each task's own last axis: x [T, B, D] or [T, B, H, W, C].
                if image_x is not None:
                    x = _from_grouped(image_x, tf.shape(weights[i])[0])
                per_task = [
                    tf.reshape(w, [-1, *[1] * (len(x.shape) - 2), w.shape[-1]])
                    for w in weights[i : i + n]
                ]
                x = _layer_norm(layer, x, per_task)
                if image_x is not None:
                    image_x = _to_grouped(x)
            else:
                if image_x is None:
                    image_x = _to_grouped(x)
                if self._is_elementwise(layer):
                    image_x = self._elementwise(layer, image_x)
                    continue
                grouped = [_grouped_weight(w) for w in weights[i : i + n]]
                image_x = self._image_layer(layer, grouped, image_x)
        if image_x is not None:  # a model that ends on an image layer
            raise ValueError(f"Model {self.model.name} must end with Flatten and Dense layers.")
        return x

    def _is_elementwise(self, layer) -> bool:
        return isinstance(
            layer, (*_ELEMENTWISE_LAYERS, keras.layers.Activation, keras.layers.Softmax)
        )

    def _elementwise(self, layer, x: tf.Tensor) -> tf.Tensor:
        """A weightless element-wise layer, or the last layer's softmax, which is skipped."""
        if isinstance(layer, keras.layers.Softmax):
            return x
        if isinstance(layer, keras.layers.Activation):
            return self._activate(layer, x)
        return layer(x)

    def _activate(self, layer, x: tf.Tensor) -> tf.Tensor:
        if _activation_name(layer) in _HEAD_ACTIVATIONS:  # the last layer's: logits
            return x
        return layer.activation(x)

    def _image_layer(self, layer, weights: list[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """One per-channel layer on `x` [..., C'] with its weights laid out for C' channels (one
        task's, or all tasks' grouped). ReLU layers of vector models come here too."""
        if isinstance(layer, keras.layers.Conv2D):
            x = tf.nn.conv2d(x, weights[0], layer.strides, layer.padding.upper())
            if layer.use_bias and id(layer) not in self._cancelled_bias:
                x = x + tf.reshape(weights[1], [-1])
            return self._activate(layer, x)
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta = (tf.reshape(w, [-1]) for w in weights[:2])
            return batch_norm(x, gamma, beta, layer.epsilon)
        pool = (
            tf.nn.max_pool2d if isinstance(layer, keras.layers.MaxPooling2D) else tf.nn.avg_pool2d
        )
        return pool(x, layer.pool_size, layer.strides, layer.padding.upper())


def batch_norm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float) -> tf.Tensor:
    """BatchNorm of `x` [B, H, W, C] with its own batch statistics per channel, scaled by `gamma`
    and shifted by `beta` [C]; differentiable once in all three.

    The output is `tf.nn.batch_normalization`'s. The gradient is its closed form, with
    xhat = (x - mean) / sqrt(var + eps) and N = B*H*W: dgamma = sum(dy xhat), dbeta = sum(dy),
    dx = gamma / sqrt(var + eps) * (dy - dbeta / N - xhat dgamma / N). Differentiating
    `tf.nn.moments` instead materialises a broadcast of each mean's gradient on every inner step.
    """

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        mean, var = tf.nn.moments(x, axes=[0, 1, 2])
        inv = tf.math.rsqrt(var + epsilon)

        def grad(dy):
            xhat = (x - mean) * inv
            dbeta = tf.reduce_sum(dy, axis=[0, 1, 2])
            dgamma = tf.reduce_sum(dy * xhat, axis=[0, 1, 2])
            scale = gamma * inv
            per_example = scale / tf.cast(tf.reduce_prod(tf.shape(x)[:3]), x.dtype)
            dx = dy * scale - xhat * (per_example * dgamma) - per_example * dbeta
            return dx, dgamma, dbeta

        return tf.nn.batch_normalization(x, mean, var, beta, gamma, epsilon), grad

    return normalize(x, gamma, beta)


def stack(weights: list[tf.Tensor], num_tasks) -> list[tf.Tensor]:
    """Repeats every weight along a new leading task axis."""
    if isinstance(num_tasks, int) and num_tasks == 1:
        return [w[None] for w in weights]
    return [tf.repeat(w[None], num_tasks, axis=0) for w in weights]


def flatten_weights(weights: list[tf.Tensor]) -> tf.Tensor:
    """Stacked weights `[T, ...]` as one tensor `[T, P]`: each task's weights flattened in order
    and concatenated. Exact (values are only moved); `unflatten_weights` undoes it."""
    return tf.concat([tf.reshape(w, [tf.shape(w)[0], -1]) for w in weights], axis=1)


def unflatten_weights(flat: tf.Tensor, shapes: list[tuple[int, ...]]) -> list[tf.Tensor]:
    """`flatten_weights`' inverse: `flat` `[T, P]` back to stacked weights `[T, *shape]`, one
    per entry of `shapes` (a `StackedModel`'s `weight_shapes`)."""
    sizes = [math.prod(shape) for shape in shapes]
    if flat.shape[-1] is not None and flat.shape[-1] != sum(sizes):
        raise ValueError(
            f"Expected {sum(sizes)} weight values per task. Received: flat.shape={flat.shape}"
        )
    parts = tf.split(flat, sizes, axis=-1)
    return [tf.reshape(part, [-1, *shape]) for part, shape in zip(parts, shapes)]


def _to_grouped(x: tf.Tensor) -> tf.Tensor:
    """[T, B, H, W, C] -> [B, H, W, T*C], task-major channels."""
    x = tf.transpose(x, [1, 2, 3, 0, 4])
    return tf.reshape(x, [tf.shape(x)[0], *x.shape[1:3], -1])


def _grouped_weight(weight: tf.Tensor) -> tf.Tensor:
    """A task-stacked weight for the grouped layout: a kernel [T, kh, kw, C, O] becomes
    [kh, kw, C, T*O] (one group of output channels per task); a vector [T, C] becomes [T*C]."""
    if len(weight.shape) != 5:
        return tf.reshape(weight, [-1])
    kh, kw, c = weight.shape[1:4]
    return tf.reshape(tf.transpose(weight, [1, 2, 3, 0, 4]), [kh, kw, c, -1])


def _from_grouped(x: tf.Tensor, num_tasks) -> tf.Tensor:
    """[B, H, W, T*C] -> [T, B, H, W, C]: the inverse of `_to_grouped`."""
    b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
    x = tf.reshape(x, [b, h, w, num_tasks, -1])
    return tf.transpose(x, [3, 0, 1, 2, 4])


def _global_pool(layer, x: tf.Tensor, axes: list[int]) -> tf.Tensor:
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        return tf.reduce_mean(x, axis=axes)
    return tf.reduce_max(x, axis=axes)


def _layer_norm(layer, x: tf.Tensor, weights: list[tf.Tensor]) -> tf.Tensor:
    """Keras's LayerNormalization over the last axis, as it computes it, with `weights` the
    layer's gamma and beta (whichever it has) broadcastable against `x`."""
    weights = list(weights)
    gamma = weights.pop(0) if layer.scale else None
    beta = weights.pop(0) if layer.center else None
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    inv = tf.math.rsqrt(variance + layer.epsilon)
    if gamma is not None:
        inv = inv * gamma
    res = -mean * inv
    if beta is not None:
        res = res + beta
    return x * inv + res
