"""The SavedModel signature contract: names, keys, dtypes and shapes.

The exporter, the server and the client all import this module; nothing else spells a key.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import tensorflow as tf

if TYPE_CHECKING:
    from keras_reptile.task_kind import TaskKind

SERVING_DEFAULT = "serving_default"
ADAPT_AND_PREDICT = "adapt_and_predict"
ADAPT_AND_PREDICT_TASKS = "adapt_and_predict_tasks"  # the same with a leading task axis
# The same work in two calls: the support set to adapted weights, then those weights to answers.
ADAPT = "adapt"
PREDICT_ADAPTED = "predict_adapted"
ADAPT_TASKS = "adapt_tasks"
PREDICT_ADAPTED_TASKS = "predict_adapted_tasks"
SPLIT_SIGNATURES = (ADAPT, PREDICT_ADAPTED, ADAPT_TASKS, PREDICT_ADAPTED_TASKS)
SIGNATURES = (SERVING_DEFAULT, ADAPT_AND_PREDICT, ADAPT_AND_PREDICT_TASKS, *SPLIT_SIGNATURES)
# Each single-task signature's form with a leading task axis.
MULTI_TASK = {
    ADAPT_AND_PREDICT: ADAPT_AND_PREDICT_TASKS,
    ADAPT: ADAPT_TASKS,
    PREDICT_ADAPTED: PREDICT_ADAPTED_TASKS,
}
TASK_SIGNATURES = tuple(MULTI_TASK.values())  # inputs `[T, ...]`, outputs `[T, ...]`

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
# Output of `adapt`, input of `predict_adapted`: a task's adapted weights, every trainable weight
# of the model flattened in order and concatenated (`StackedModel.num_weights` values).
ADAPTED_WEIGHTS = "adapted_weights"
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
    ADAPTED_WEIGHTS: tf.float32,
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


@dataclasses.dataclass(frozen=True)
class TaskKeys:
    """The keys of a task's support examples, their labels or targets, and its queries."""

    support: str
    targets: str
    query: str


def signature_specs(
    input_shape: tuple[int, ...], kind: TaskKind, num_weights: int | None = None
) -> dict[str, SignatureSpec]:
    """The signatures of a model whose single example has shape `input_shape`.

    Args:
        input_shape: tuple of int. One example's shape.
        kind: TaskKind. Its keys, targets and outputs (`keras_reptile.task_kind`).
        num_weights: int or None. The length of `adapted_weights` (None: any length).
    """
    from keras_reptile.task_kind import TaskKind  # noqa: F811 - task_kind imports this module

    if not isinstance(kind, TaskKind):
        raise ValueError(
            "`kind` must be a TaskKind (keras_reptile.task_kind.CLASSIFICATION or REGRESSION). "
            f"Received: kind={kind!r}"
        )
    example = (None, *input_shape)
    keys, outputs = kind.keys, kind.outputs
    default = SignatureSpec(
        SERVING_DEFAULT, (InputSpec(kind.example_key, tf.float32, example),), outputs
    )
    adaptation = (
        InputSpec(INNER_STEPS, tf.int32, (), optional=True),
        InputSpec(INNER_BATCH_SIZE, tf.int32, (), optional=True),
        InputSpec(LEARNING_RATE, tf.float32, (), optional=True),
    )
    answer = (
        (InputSpec(TRANSDUCTIVE, tf.bool, (), optional=True),) if kind.transductive_option else ()
    )

    def spec(name: str) -> SignatureSpec:
        tasks = name in TASK_SIGNATURES
        lead = (None,) if tasks else ()
        support = (
            InputSpec(keys.support, tf.float32, lead + example, tasks=tasks),
            InputSpec(
                keys.targets, kind.target_dtype, lead + (None, *kind.target_shape), tasks=tasks
            ),
        )
        query = InputSpec(keys.query, tf.float32, lead + example, tasks=tasks)
        weights = InputSpec(ADAPTED_WEIGHTS, tf.float32, lead + (num_weights,), tasks=tasks)
        if name in (ADAPT_AND_PREDICT, ADAPT_AND_PREDICT_TASKS):
            return SignatureSpec(name, (*support, query, *adaptation, *answer), outputs)
        if name in (ADAPT, ADAPT_TASKS):
            return SignatureSpec(name, (*support, *adaptation), (ADAPTED_WEIGHTS,))
        # The non-transductive answer normalises each query with the support set (BatchNorm).
        support_examples = support[:1] if kind.transductive_option else ()
        return SignatureSpec(name, (weights, *support_examples, query, *answer), outputs)

    return {SERVING_DEFAULT: default, **{name: spec(name) for name in SIGNATURES[1:]}}
