"""The kind of problem a model solves: classification or regression, as one typed object.

A `TaskKind` owns what differs between the two: the inner loop's loss, the served inputs and
outputs, the evaluator's scores and answers, and the checks of a support set's labels or targets.
Everything else asks the kind instead of testing which one it is.

    >>> kind = task_kind_of("omniglot")
    >>> kind.name, kind.keys.targets, kind.metric
    ('classification', 'support_labels', 'accuracy')
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from keras_reptile.export import signatures as sig

ACCURACY, MSE = "accuracy", "mse"
NON_TRANSDUCTIVE, TRANSDUCTIVE = "non_transductive", "transductive"


@dataclasses.dataclass(frozen=True)
class Answer:
    """One answer the evaluator scores: its name in results, and whether all of a task's queries
    are predicted in one batch (`transductive`) or each with the support set alone."""

    name: str
    transductive: bool


@dataclasses.dataclass(frozen=True)
class TaskKind:
    """What a kind of task decides. Use the two instances, `CLASSIFICATION` and `REGRESSION`.

    Args:
        name: str. "classification" or "regression".
        keys: TaskKeys. The signatures' keys of the support examples, targets and queries.
        example_key: str. The input of `serving_default`.
        outputs: tuple of str. What the answering signatures return.
        target_dtype: tf.DType. Of a support label or target.
        target_shape: tuple. One support example's label or target (`()` or `(1,)`).
        metric: str. The evaluator's score: "accuracy" (a fraction) or "mse".
        answers: tuple of Answer. The answers the evaluator scores.
        ways: int or None. The only number of ways this kind allows (None: any).
        class_splits: bool. Tasks come from meta-training and meta-test classes, both scored
            (else from one distribution, scored as the test split).
        random_init_baseline: bool. The evaluation also scores the test tasks adapted from the
            untrained initialization (a baseline where chance gives none).
    """

    name: str
    keys: sig.TaskKeys
    example_key: str
    outputs: tuple[str, ...]
    target_dtype: tf.DType
    target_shape: tuple[int, ...]
    metric: str
    answers: tuple[Answer, ...]
    ways: int | None
    class_splits: bool
    random_init_baseline: bool

    @property
    def transductive_option(self) -> bool:
        """Whether an answer may be transductive or not (the signatures' `transductive` input)."""
        return len(self.answers) > 1

    def check_ways(self, ways: int) -> None:
        """Raises `ValueError` unless a task of this kind may have `ways` classes."""
        if self.ways is not None and ways != self.ways:
            raise ValueError(
                f"{self.name.capitalize()} tasks have {self.ways} output. Received: classes={ways}"
            )

    def queries_per_class(self, eval_queries: int) -> int:
        """Query examples per class of an evaluation task (a `Protocol`'s `eval_queries` are
        a regression task's)."""
        raise NotImplementedError

    def loss(self, outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        """One task's inner-loop loss of its `outputs` [batch, outputs]."""
        raise NotImplementedError

    def served(self, outputs: tf.Tensor) -> dict[str, tf.Tensor]:
        """The signatures' outputs (`outputs`) of the network's outputs [..., outputs]."""
        raise NotImplementedError

    def score(self, outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        """Each task's score `[T]` of its query outputs `[T, Q, outputs]` against `targets`."""
        raise NotImplementedError

    def outside(self, targets: np.ndarray, ways: int) -> np.ndarray:
        """Where `targets` (of the right dtype and shape) break this kind's rule."""
        raise NotImplementedError

    def graph_checks(self, targets: tf.Tensor, ways: int) -> list:
        """`outside` as `tf.debugging` assertions, for the exported graph."""
        raise NotImplementedError

    def targets(self, values, ways: int) -> np.ndarray:
        """A support set's labels or targets as the signatures take them, one per example;
        `ValueError` if they break this kind's rule."""
        raise NotImplementedError

    def format(self, mean: float, ci95: float) -> str:
        """A score and its 95% interval as the reports print them."""
        raise NotImplementedError

    def generated_targets(self, rng: np.random.Generator, ways: int, shots: int) -> np.ndarray:
        """Valid labels or targets of `ways * shots` support examples, for generated tasks."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Classification(TaskKind):
    """Integer labels in [0, ways); logits, softmax probabilities and classes; accuracy."""

    def queries_per_class(self, eval_queries: int) -> int:
        return 1  # one held-out query per class, as the paper

    def loss(self, outputs, targets):
        # Summed over the batch: the official code's `minimize` of a per-example loss vector.
        return tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=outputs)
        )

    def served(self, outputs):
        return {
            sig.LOGITS: outputs,
            sig.PROBABILITIES: tf.nn.softmax(outputs),
            sig.CLASSES: tf.argmax(outputs, axis=-1, output_type=sig.OUTPUT_DTYPES[sig.CLASSES]),
        }

    def score(self, outputs, targets):
        correct = tf.equal(tf.argmax(outputs, -1, output_type=targets.dtype), targets)
        return tf.reduce_mean(tf.cast(correct, tf.float32), axis=1)

    def outside(self, targets, ways):
        return (targets < 0) | (targets >= ways)

    def graph_checks(self, targets, ways):
        return [
            tf.debugging.assert_non_negative(targets, message="labels must be >= 0"),
            tf.debugging.assert_less(targets, ways, message=f"labels must be < {ways}"),
        ]

    def targets(self, values, ways):
        labels = np.asarray(values)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                "support_y must be integer class ids, one per support example. "
                f"Received: support_y.dtype={labels.dtype}, shape={labels.shape}"
            )
        if self.outside(labels, ways).any():
            raise ValueError(
                f"Class ids must be in [0, {ways}). "
                f"Received: support_y in [{labels.min()}, {labels.max()}]"
            )
        return labels.astype(self.target_dtype.as_numpy_dtype)

    def format(self, mean, ci95):
        return f"{100 * mean:.2f} +- {100 * ci95:.2f} %"

    def generated_targets(self, rng, ways, shots):
        return self.targets(np.repeat(np.arange(ways), shots), ways)  # every class `shots` times


@dataclasses.dataclass(frozen=True)
class Regression(TaskKind):
    """Float targets `[1]` per example; predictions; mean squared error."""

    def queries_per_class(self, eval_queries: int) -> int:
        return eval_queries

    def loss(self, outputs, targets):
        return tf.reduce_mean(tf.square(outputs - targets))

    def served(self, outputs):
        return {sig.PREDICTIONS: outputs}

    def score(self, outputs, targets):
        return tf.reduce_mean(tf.square(outputs - targets), axis=[1, 2])

    def outside(self, targets, ways):
        return np.zeros(np.shape(targets), bool)  # any finite value is a target

    def graph_checks(self, targets, ways):
        return []

    def targets(self, values, ways):
        return np.asarray(values, np.float32).reshape(-1, *self.target_shape)

    def format(self, mean, ci95):
        return f"MSE {mean:.4f} +- {ci95:.4f}"

    def generated_targets(self, rng, ways, shots):
        return self.targets(rng.normal(size=ways * shots), ways)


CLASSIFICATION = Classification(
    name="classification",
    keys=sig.TaskKeys(sig.SUPPORT_IMAGES, sig.SUPPORT_LABELS, sig.QUERY_IMAGES),
    example_key=sig.IMAGES,
    outputs=(sig.LOGITS, sig.PROBABILITIES, sig.CLASSES),
    target_dtype=tf.int32,
    target_shape=(),
    metric=ACCURACY,
    answers=(Answer(NON_TRANSDUCTIVE, False), Answer(TRANSDUCTIVE, True)),
    ways=None,
    class_splits=True,
    random_init_baseline=False,
)
# A regression network has no BatchNorm to tell the two answers apart: its one answer is
# predicted as the transductive one.
REGRESSION = Regression(
    name="regression",
    keys=sig.TaskKeys(sig.SUPPORT_INPUTS, sig.SUPPORT_TARGETS, sig.QUERY_INPUTS),
    example_key=sig.INPUTS,
    outputs=(sig.PREDICTIONS,),
    target_dtype=tf.float32,
    target_shape=(1,),
    metric=MSE,
    answers=(Answer(MSE, True),),
    ways=1,
    class_splits=False,
    random_init_baseline=True,
)
KINDS = (CLASSIFICATION, REGRESSION)

# The datasets of regression tasks; every other dataset is classification.
REGRESSION_DATASETS = ("sine",)


def task_kind_of(dataset: str) -> TaskKind:
    """The kind of the tasks of `dataset` (a `Recipe.dataset`)."""
    return REGRESSION if dataset in REGRESSION_DATASETS else CLASSIFICATION


def by_name(name: str) -> TaskKind:
    """The kind called `name`."""
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise ValueError(f"Expected one of {[k.name for k in KINDS]}. Received: name={name!r}")


def by_metric(metric: str) -> TaskKind:
    """The kind whose evaluator scores `metric`."""
    for kind in KINDS:
        if kind.metric == metric:
            return kind
    raise ValueError(f"Expected one of {[k.metric for k in KINDS]}. Received: metric={metric!r}")


def by_inputs(keys) -> TaskKind | None:
    """The kind of a signature with inputs `keys`: whose examples or support set are among
    them, if any kind's are."""
    keys = set(keys)
    return next((k for k in KINDS if {k.example_key, k.keys.support} & keys), None)
