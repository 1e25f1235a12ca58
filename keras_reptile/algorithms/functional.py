"""A Keras model seen as a pure function of its trainable weight tensors."""

from __future__ import annotations

import keras
import tensorflow as tf


class FunctionalModel:
    """Runs a Keras model on given weight tensors through `stateless_call`; never writes a variable.

    BatchNorm always normalises with the batch's own statistics (`training=True`), as the paper's
    model does at meta-training and evaluation alike, so the moving statistics are never read or
    updated and are held here as constants.

    Args:
        model: keras.Model. Defines the architecture and the initial weights.
        regression: bool. Mean squared error loss if True, else summed softmax cross-entropy
            over the batch (as the official code's `minimize` of a per-example loss vector).

    Example:
    >>> from keras_reptile.models import build_model
    >>> fmodel = FunctionalModel(build_model("sine_mlp", 1, (1,)), regression=True)
    >>> fmodel(fmodel.initial_weights(), tf.zeros([3, 1])).shape
    TensorShape([3, 1])
    """

    def __init__(self, model: keras.Model, regression: bool):
        self.model = model
        self.regression = regression
        self._non_trainable = [
            tf.constant(keras.ops.convert_to_numpy(v)) for v in model.non_trainable_variables
        ]
        self.uses_batch_statistics = any(
            isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.model.input_shape[1:])

    @property
    def num_outputs(self) -> int:
        return int(self.model.output_shape[-1])

    @property
    def weight_names(self) -> list[str]:
        return [v.path for v in self.model.trainable_variables]

    def initial_weights(self) -> list[tf.Tensor]:
        """The model's current trainable weights, as tensors."""
        return [tf.constant(keras.ops.convert_to_numpy(v)) for v in self.model.trainable_variables]

    def __call__(self, weights: list[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """Logits (or regression outputs) for `x` under `weights`."""
        outputs, _ = self.model.stateless_call(list(weights), self._non_trainable, x, training=True)
        return outputs

    def loss_from_outputs(self, outputs: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        if self.regression:
            return tf.reduce_mean(tf.square(outputs - y))
        return tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=outputs)
        )

    def loss(self, weights: list[tf.Tensor], x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.loss_from_outputs(self(weights, x), y)
