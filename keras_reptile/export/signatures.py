"""The SavedModel signature contract: names, keys, dtypes and shapes.

The exporter, the server and the client all import this module; nothing else spells a key.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

SERVING_DEFAULT = "serving_default"
ADAPT_AND_PREDICT = "adapt_and_predict"
ADAPT_AND_PREDICT_TASKS = "adapt_and_predict_tasks"  # the same with a leading task axis
SIGNATURES = (SERVING_DEFAULT, ADAPT_AND_PREDICT, ADAPT_AND_PREDICT_TASKS)

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
# Optional scalar inputs of the adapt signatures (defaults: the card's default protocol).
INNER_STEPS = "inner_steps"
INNER_BATCH_SIZE = "inner_batch_size"
LEARNING_RATE = "learning_rate"
TRANSDUCTIVE = "transductive"
OPTIONAL_SCALARS = (INNER_STEPS, INNER_BATCH_SIZE, LEARNING_RATE, TRANSDUCTIVE)

# Fixed mini-batch seed of served adaptation: the same request always gets the same answer.
SERVING_BATCH_SEED = (0, 0)

# Every output's dtype; which outputs a signature has is in its `SignatureSpec`.
OUTPUT_DTYPES = {
    LOGITS: tf.float32,
    PROBABILITIES: tf.float32,
    CLASSES: tf.int64,
    PREDICTIONS: tf.float32,
}

CARD_FILE = "model_card.json"
WARMUP_FILE = "tf_serving_warmup_requests"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    key: str
    dtype: tf.DType
    shape: tuple  # None for a free dimension
    optional: bool = False
    tasks: bool = False  # the first dimension counts tasks, the second examples

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
    """The signatures of a model whose single example has shape `input_shape`."""
    example = (None, *input_shape)
    if regression:
        keys, targets = (SUPPORT_INPUTS, SUPPORT_TARGETS, QUERY_INPUTS), (tf.float32, (None, 1))
        default = SignatureSpec(
            SERVING_DEFAULT, (InputSpec(INPUTS, tf.float32, example),), (PREDICTIONS,)
        )
        outputs = (PREDICTIONS,)
    else:
        keys, targets = (SUPPORT_IMAGES, SUPPORT_LABELS, QUERY_IMAGES), (tf.int32, (None,))
        default = SignatureSpec(
            SERVING_DEFAULT,
            (InputSpec(IMAGES, tf.float32, example),),
            (LOGITS, PROBABILITIES, CLASSES),
        )
        outputs = (LOGITS, PROBABILITIES, CLASSES)
    scalars = (
        InputSpec(INNER_STEPS, tf.int32, (), optional=True),
        InputSpec(INNER_BATCH_SIZE, tf.int32, (), optional=True),
        InputSpec(LEARNING_RATE, tf.float32, (), optional=True),
    )
    if not regression:
        scalars += (InputSpec(TRANSDUCTIVE, tf.bool, (), optional=True),)

    def adapt(name: str, tasks: bool) -> SignatureSpec:
        lead = (None,) if tasks else ()
        return SignatureSpec(
            name,
            (
                InputSpec(keys[0], tf.float32, lead + example, tasks=tasks),
                InputSpec(keys[1], targets[0], lead + targets[1], tasks=tasks),
                InputSpec(keys[2], tf.float32, lead + example, tasks=tasks),
                *scalars,
            ),
            outputs,
        )

    return {
        SERVING_DEFAULT: default,
        ADAPT_AND_PREDICT: adapt(ADAPT_AND_PREDICT, tasks=False),
        ADAPT_AND_PREDICT_TASKS: adapt(ADAPT_AND_PREDICT_TASKS, tasks=True),
    }
