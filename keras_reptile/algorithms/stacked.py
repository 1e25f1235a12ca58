"""A Keras model as a pure function of stacked weights: `T` tasks' networks as one set of kernels.

Each trainable weight gets a leading task axis `T`. Convolutions become one grouped convolution
with `T` groups (channels laid out task-major), so BatchNorm's per-channel batch statistics are per
task by construction; dense layers become batched matmuls. One forward/backward pass trains `T`
independent tasks. A single task is a stack of one, computed with plain kernels (the task axis is
removed by reshapes, never by transposes). The tests check this against Keras' own
`stateless_call`, task by task.

Only what is computed exactly is accepted: a model with another layer or option is refused when
the `StackedModel` is built.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

_ACTIVATIONS = {"linear": None, "relu": tf.nn.relu, "tanh": tf.tanh}
_IMAGE_LAYERS = (keras.layers.Conv2D, keras.layers.BatchNormalization, keras.layers.MaxPooling2D)
_LAYERS = (*_IMAGE_LAYERS, keras.layers.ReLU, keras.layers.Flatten, keras.layers.Dense)


def _activation_name(layer) -> str:
    activation = keras.activations.serialize(layer.activation)
    if isinstance(activation, str):
        return activation
    return activation.get("config", {}).get("name", activation.get("class_name", "?"))


def _refuse(layer, what: str, value) -> ValueError:
    return ValueError(
        f"The stacked implementation cannot compute layer {layer.name!r} "
        f"({type(layer).__name__}): {what} is not supported. Received: {what}={value!r}"
    )


def check_supported(model: keras.Model) -> None:
    """Raises `ValueError` naming the first layer or option the stacked path cannot compute.

    Supported: a chain of Conv2D, BatchNormalization, ReLU, MaxPooling2D, Flatten and Dense
    layers, channels-last, with linear, ReLU or tanh activations.
    """
    layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            "The stacked implementation needs one input and one output. "
            f"Received: inputs={len(model.inputs)}, outputs={len(model.outputs)}"
        )
    image = len(model.inputs[0].shape) == 4
    if len(model.inputs[0].shape) not in (2, 4):
        raise ValueError(
            "The stacked implementation takes vectors [N, D] or channels-last images "
            f"[N, H, W, C]. Received: input_shape={tuple(model.inputs[0].shape)}"
        )
    previous = model.inputs[0]
    for layer in layers:
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
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            if _activation_name(layer) not in _ACTIVATIONS:
                raise _refuse(layer, "activation", _activation_name(layer))
            expected = 1 + int(layer.use_bias)
            if len(layer.trainable_weights) != expected:
                raise _refuse(layer, "frozen weights", len(layer.trainable_weights))
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
        if isinstance(layer, keras.layers.ReLU):
            options = (layer.max_value, float(layer.negative_slope), float(layer.threshold))
            if options != (None, 0.0, 0.0):
                raise _refuse(layer, "(max_value, negative_slope, threshold)", options)
        if isinstance(layer, keras.layers.Flatten):
            image = False


class StackedModel:
    """Runs `T` copies of a model, each with its own weights, on `T` batches at once.

    Weights are the model's trainable weights with a leading task axis; inputs are
    `[T, batch, ...]`; outputs `[T, batch, outputs]`. Never writes a variable. BatchNorm always
    normalises with the batch's own statistics, as the paper's model does at meta-training and
    evaluation alike, so its moving statistics are never read.

    Args:
        model: keras.Model. The architecture and its initial weights (see `check_supported`).
        regression: bool. Mean squared error if True, else softmax cross-entropy summed over the
            batch (the official code's `minimize` of a per-example loss vector).

    Example:
    >>> from keras_reptile.models import build_model
    >>> model = StackedModel(build_model("sine_mlp", 1, (1,)), regression=True)
    >>> model(stack(model.initial_weights(), 2), tf.zeros([2, 3, 1])).shape
    TensorShape([2, 3, 1])
    """

    def __init__(self, model: keras.Model, regression: bool):
        check_supported(model)
        self.model, self.regression = model, regression
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

    def initial_weights(self) -> list[tf.Tensor]:
        """The model's trainable weights (no task axis), as tensors."""
        return [tf.constant(keras.ops.convert_to_numpy(v)) for v in self.model.trainable_variables]

    def __call__(self, weights: list[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """Outputs `[T, batch, outputs]` of each task's network on its own batch."""
        single = x.shape[0] == 1  # a stack of one: plain kernels, reshapes only
        num_tasks = 1 if single else tf.shape(x)[0]
        grouped = False  # False: x is [T, B, ...]; True: x is [B, H, W, T*C]
        for layer, i in self._layers:
            if isinstance(layer, _IMAGE_LAYERS) and not grouped:
                x, grouped = _to_grouped(x, single), True
            if isinstance(layer, keras.layers.Conv2D):
                x = tf.nn.conv2d(
                    x, _grouped_kernel(weights[i], single), layer.strides, layer.padding.upper()
                )
                if layer.use_bias and id(layer) not in self._cancelled_bias:
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
                if grouped and single:  # [B, H, W, C]
                    x = tf.reshape(x, [1, -1, int(np.prod(x.shape[1:]))])
                else:
                    if grouped:  # [B, H, W, T*C] -> [T, B, H, W, C]
                        b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
                        x = tf.reshape(x, [b, h, w, num_tasks, -1])
                        x = tf.transpose(x, [3, 0, 1, 2, 4])
                    x = tf.reshape(x, [num_tasks, tf.shape(x)[1], -1])
                grouped = False
            elif isinstance(layer, keras.layers.Dense):
                x = tf.matmul(x, weights[i])
                if layer.use_bias:
                    x = x + weights[i + 1][:, None, :]
                x = _activate(layer, x)
        if grouped:  # a model that ends on an image layer
            raise ValueError(f"Model {self.model.name} must end with Flatten and Dense layers.")
        return x

    def loss(self, weights: list[tf.Tensor], x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Sum over tasks of each task's loss (so each task's gradient is its own loss's)."""
        outputs = self(weights, x)
        if self.regression:
            return tf.reduce_sum(tf.reduce_mean(tf.square(outputs - y), axis=[1, 2]))
        return tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=outputs)
        )


def stack(weights: list[tf.Tensor], num_tasks) -> list[tf.Tensor]:
    """Repeats every weight along a new leading task axis."""
    if isinstance(num_tasks, int) and num_tasks == 1:
        return [w[None] for w in weights]
    return [tf.repeat(w[None], num_tasks, axis=0) for w in weights]


def _to_grouped(x: tf.Tensor, single: bool) -> tf.Tensor:
    """[T, B, H, W, C] -> [B, H, W, T*C], task-major channels."""
    h, w, c = x.shape[2:]
    if single:
        return tf.reshape(x, [-1, h, w, c])
    x = tf.transpose(x, [1, 2, 3, 0, 4])
    return tf.reshape(x, [tf.shape(x)[0], h, w, -1])


def _grouped_kernel(kernel: tf.Tensor, single: bool) -> tf.Tensor:
    """[T, kh, kw, C, O] -> [kh, kw, C, T*O]: one group of output channels per task."""
    kh, kw, c, o = kernel.shape[1:]
    if single:
        return tf.reshape(kernel, [kh, kw, c, o])
    return tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [kh, kw, c, -1])


def _activate(layer, x: tf.Tensor) -> tf.Tensor:
    fn = _ACTIVATIONS[_activation_name(layer)]
    return x if fn is None else fn(x)
