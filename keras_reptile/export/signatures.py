"""The SavedModel signature contract: names, keys, dtypes and shapes.

The exporter, the server and the client all import this module; nothing else spells a key.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

SERVING_DEFAULT = "serving_default"
ADAPT_AND_PREDICT = "adapt_and_predict"
SIGNATURES = (SERVING_DEFAULT, ADAPT_AND_PREDICT)

# Classification keys.
IMAGES = "images"
SUPPORT_IMAGES = "support_images"
SUPPORT_LABELS = "support_labels"
QUERY_IMAGES = "query_images"
LOGITS = "logits"
PROBABILITIES = "probabilities"
CLASSES = "classes"
# Regression keys.
INPUTS = "inputs"
SUPPORT_INPUTS = "support_inputs"
SUPPORT_TARGETS = "support_targets"
QUERY_INPUTS = "query_inputs"
PREDICTIONS = "predictions"
# Optional scalar inputs of adapt_and_predict (defaults: the preset's evaluation settings).
INNER_STEPS = "inner_steps"
LEARNING_RATE = "learning_rate"
TRANSDUCTIVE = "transductive"

# Fixed mini-batch seed of served adaptation: the same request always gets the same answer.
SERVING_BATCH_SEED = (0, 0)

CARD_FILE = "model_card.json"
WARMUP_FILE = "tf_serving_warmup_requests"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    key: str
    dtype: tf.DType
    shape: tuple  # None for a free dimension
    optional: bool = False

    def tensor_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec(self.shape, self.dtype, name=self.key)


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
    name: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]

    def input(self, key: str) -> InputSpec:
        return {i.key: i for i in self.inputs}[key]


def signature_specs(input_shape: tuple[int, ...], regression: bool) -> dict[str, SignatureSpec]:
    """The two signatures of a model whose single example has shape `input_shape`."""
    example = (None, *input_shape)
    scalars = (
        InputSpec(INNER_STEPS, tf.int32, (), optional=True),
        InputSpec(LEARNING_RATE, tf.float32, (), optional=True),
    )
    if regression:
        return {
            SERVING_DEFAULT: SignatureSpec(
                SERVING_DEFAULT, (InputSpec(INPUTS, tf.float32, example),), (PREDICTIONS,)
            ),
            ADAPT_AND_PREDICT: SignatureSpec(
                ADAPT_AND_PREDICT,
                (
                    InputSpec(SUPPORT_INPUTS, tf.float32, example),
                    InputSpec(SUPPORT_TARGETS, tf.float32, (None, 1)),
                    InputSpec(QUERY_INPUTS, tf.float32, example),
                    *scalars,
                ),
                (PREDICTIONS,),
            ),
        }
    return {
        SERVING_DEFAULT: SignatureSpec(
            SERVING_DEFAULT,
            (InputSpec(IMAGES, tf.float32, example),),
            (LOGITS, PROBABILITIES, CLASSES),
        ),
        ADAPT_AND_PREDICT: SignatureSpec(
            ADAPT_AND_PREDICT,
            (
                InputSpec(SUPPORT_IMAGES, tf.float32, example),
                InputSpec(SUPPORT_LABELS, tf.int32, (None,)),
                InputSpec(QUERY_IMAGES, tf.float32, example),
                *scalars,
                InputSpec(TRANSDUCTIVE, tf.bool, (), optional=True),
            ),
            (LOGITS, PROBABILITIES, CLASSES),
        ),
    }
