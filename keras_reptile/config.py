"""A run's two values: the training recipe (what is learned) and the evaluation protocol (how it is
measured). One recipe trains one initialization; several protocols may measure it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from keras_reptile import protocol_rules
from keras_reptile.task_kind import TaskKind, task_kind_of

# `arrays`: images handed to `run(..., tasks=...)` in Python (`keras_reptile.data.arrays`).
DATASETS = ("omniglot", "miniimagenet", "sine", "folder", "arrays")
# `tfds:<name>` names a tensorflow-datasets image classification dataset (your own data).
TFDS_PREFIX = "tfds:"
# Recipe fields that only apply to your own data (`folder`, `arrays`, `tfds:<name>`).
OWN_DATA_FIELDS = ("image_size", "channels", "test_fraction", "test_classes", "rotations")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored")
INNER_ADAM_MODES = ("parallel", "sequential")


def _check_at_least(obj, names, low: int) -> None:
    for name in names:
        if getattr(obj, name) < low:
            raise ValueError(f"`{name}` must be >= {low}. Received: {name}={getattr(obj, name)!r}")


class _Value:
    """What the two frozen dataclasses share: copies with changes, and plain-dict round trips."""

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON has them (tuples as lists), so a dict read back compares equal."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """`cls(**data)` that names unknown keys instead of raising a TypeError."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"Unknown {cls.__name__} fields {unknown}. Received: keys={sorted(data)}"
            )
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class Recipe(_Value):
    """Everything that decides the meta-learned initialization; names follow the official code.

    Args:
        dataset: str. One of `DATASETS`, or `"tfds:<name>"` for a tensorflow-datasets image
            classification dataset.
        model: str. A name in the model registry (`keras_reptile.models.MODELS`).
        classes: int. Ways per task (1 for regression).
        train_shots: int. Examples per class in a meta-training task.
        inner_batch: int. Mini-batch size of the inner loop.
        inner_iters: int. Inner-loop steps per meta-training task.
        learning_rate: float. Inner-loop step size.
        meta_step: float. Initial outer step size (epsilon).
        meta_step_final: float. Outer step size at the last meta-iteration (linear anneal).
        meta_batch: int. Tasks per meta-iteration.
        meta_iters: int. Number of meta-iterations.
        foml: bool. First-order MAML instead of Reptile.
        foml_tail: int. FOMAML's last step uses a separate set of this many shots per class
            (0 = off).
        sgd: bool. Plain SGD in the inner loop instead of Adam with beta1=0.
        adam_beta2: float. Inner Adam's second-moment decay.
        adam_epsilon: float. Inner Adam's epsilon (TF1 placement: outside the square root).
        inner_adam: str. How a meta-batch's tasks share the carried Adam statistics: "parallel"
            (every task starts from the same statistics; their average is carried on) or
            "sequential" (the official code's order: task k starts from the statistics task k-1
            ended with, and the last task's are carried on). One of `INNER_ADAM_MODES`.
        seed: int. Seeds the class split, the initial weights and every sampled task.
        replicate: int. Another training of the same run: replicate N > 0 draws its own initial
            weights and meta-training tasks, with the seed's class split and evaluation tasks,
            so replicates measure run-to-run spread on paired test tasks. 0 is the seed's run.
        checkpoint_interval: int. Meta-iterations between checkpoints.
        eval_interval: int. Meta-iterations between periodic evaluations (0 = never).
        eval_interval_samples: int. Tasks per periodic evaluation.
        summary_interval: int. Meta-iterations between TensorBoard training summaries (and
            progress updates).
        strategy: str. One of `STRATEGIES`.
        task_groups: int. Each replica's tasks train as this many stacked networks, run
            concurrently on the inter-op thread pool.
        image_size: int. Own data: height and width the images are resized to.
        channels: int. Own data: 1 (gray) or 3 (RGB).
        test_fraction: float. Own data: share of the classes held out for meta-testing, drawn
            with `seed` (unless `test_classes` lists them or the folder has train/ and test/).
        test_classes: tuple of str. Own data: the meta-test classes by name (empty: by
            `test_fraction`).
        rotations: bool. Own data: add the 90/180/270 degree rotations of each meta-training
            class as separate classes (Omniglot's augmentation).

    `checkpoint_interval` to `task_groups` say how the run is carried out, not what it learns;
    the last five apply to your own data only (`OWN_DATA_FIELDS`).
    """

    dataset: str = "sine"
    model: str = "sine_mlp"
    classes: int = 1
    train_shots: int = 50
    inner_batch: int = 10
    inner_iters: int = 5
    learning_rate: float = 0.02
    meta_step: float = 1.0
    meta_step_final: float = 0.0
    meta_batch: int = 5
    meta_iters: int = 30000
    foml: bool = False
    foml_tail: int = 0
    sgd: bool = True
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    inner_adam: str = "parallel"
    seed: int = 0
    replicate: int = 0
    checkpoint_interval: int = 1000
    eval_interval: int = 1000
    eval_interval_samples: int = 100
    summary_interval: int = 100
    strategy: str = "default"
    task_groups: int = 2
    image_size: int = 84
    channels: int = 3
    test_fraction: float = 0.2
    test_classes: tuple[str, ...] = ()
    rotations: bool = False

    def __post_init__(self):
        # JSON and flags give lists; the recipe holds a tuple so it compares and hashes.
        if isinstance(self.test_classes, str):
            object.__setattr__(self, "test_classes", (self.test_classes,))
        object.__setattr__(self, "test_classes", tuple(self.test_classes))

    @property
    def task_kind(self) -> TaskKind:
        """Classification or regression, from the dataset."""
        return task_kind_of(self.dataset)

    @property
    def is_own_data(self) -> bool:
        """Whether the dataset is the user's own (`folder`, `arrays` or `tfds:<name>`)."""
        return self.dataset in ("folder", "arrays") or self.dataset.startswith(TFDS_PREFIX)

    @property
    def inner_optimizer(self) -> str:
        return "sgd" if self.sgd else "adam"

    @property
    def algorithm(self) -> str:
        return "fomaml" if self.foml else "reptile"

    def validate(self) -> Recipe:
        """Raises `ValueError` naming the first invalid value or impossible combination."""
        _check_at_least(
            self,
            (
                "classes",
                "train_shots",
                "inner_batch",
                "inner_iters",
                "meta_batch",
                "meta_iters",
                "checkpoint_interval",
                "summary_interval",
                "task_groups",
            ),
            1,
        )
        _check_at_least(
            self, ("eval_interval", "eval_interval_samples", "foml_tail", "replicate"), 0
        )
        if self.learning_rate <= 0:
            raise ValueError(
                f"`learning_rate` must be > 0. Received: learning_rate={self.learning_rate}"
            )
        tfds_name = self.dataset.startswith(TFDS_PREFIX) and self.dataset[len(TFDS_PREFIX) :]
        if self.dataset not in DATASETS and not tfds_name:
            raise ValueError(
                f"`dataset` must be one of {DATASETS} or {TFDS_PREFIX}<name> (a "
                f"tensorflow-datasets dataset). Received: dataset={self.dataset!r}"
            )
        self._validate_own_data()
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"`strategy` must be one of {STRATEGIES}. Received: strategy={self.strategy!r}"
            )
        if self.inner_adam not in INNER_ADAM_MODES:
            raise ValueError(
                f"`inner_adam` must be one of {INNER_ADAM_MODES}. "
                f"Received: inner_adam={self.inner_adam!r}"
            )
        if self.sgd and self.inner_adam != "parallel":
            raise ValueError(
                "`inner_adam` orders the inner Adam's carried statistics; SGD carries none. "
                f"Received: inner_adam={self.inner_adam!r}, sgd=True"
            )
        if self.foml_tail and not self.foml:
            raise ValueError(
                "`foml_tail` only applies to FOMAML; pass --foml too. "
                f"Received: foml_tail={self.foml_tail}, foml={self.foml}"
            )
        if self.foml_tail and self.foml_tail >= self.train_shots:
            raise ValueError(
                "`foml_tail` must leave shots for the earlier inner steps "
                "(foml_tail < train_shots). "
                f"Received: foml_tail={self.foml_tail}, train_shots={self.train_shots}"
            )
        self.task_kind.check_ways(self.classes)
        return self

    def _validate_own_data(self) -> None:
        if not self.is_own_data:
            defaults = Recipe()
            for name in OWN_DATA_FIELDS:
                if getattr(self, name) != getattr(defaults, name):
                    raise ValueError(
                        f"`{name}` applies to your own data only (dataset folder, arrays or "
                        f"{TFDS_PREFIX}<name>). Received: {name}={getattr(self, name)!r}, "
                        f"dataset={self.dataset!r}"
                    )
            return
        _check_at_least(self, ("image_size",), 1)
        if self.channels not in (1, 3):
            raise ValueError(
                f"`channels` must be 1 (gray) or 3 (RGB). Received: channels={self.channels!r}"
            )
        if not 0 < self.test_fraction < 1:
            raise ValueError(
                "`test_fraction` must be between 0 and 1 (the share of classes held out). "
                f"Received: test_fraction={self.test_fraction!r}"
            )
        if any(not isinstance(c, str) or not c for c in self.test_classes):
            raise ValueError(
                "`test_classes` must be class names (non-empty strings). "
                f"Received: test_classes={self.test_classes!r}"
            )
        if len(set(self.test_classes)) != len(self.test_classes):
            raise ValueError(
                f"`test_classes` lists a class twice. Received: test_classes={self.test_classes!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """As `_Value.to_dict`, without the own-data fields for the paper's datasets (they keep
        their defaults there, and `from_dict` restores them)."""
        data = super().to_dict()
        if not self.is_own_data:
            for name in OWN_DATA_FIELDS:
                del data[name]
        return data


# Fields of a Recipe that a resumed or warm-started run must share with the run it continues:
# they decide the network, its classes, the tasks drawn and the carried optimizer state.
# Own data's fields decide its images and class split.
IDENTITY_FIELDS = (
    "dataset",
    "model",
    "classes",
    "seed",
    "replicate",
    "sgd",
    "inner_adam",
) + OWN_DATA_FIELDS


def identity_difference(saved: Recipe, received: Recipe) -> str | None:
    """The first of `IDENTITY_FIELDS` in which `received` differs from `saved`, if any."""
    for key in IDENTITY_FIELDS:
        if getattr(saved, key) != getattr(received, key):
            return key
    return None


@dataclasses.dataclass(frozen=True)
class Protocol(_Value):
    """How an initialization is measured: the paper's evaluation settings.

    Per task: `shots` examples per class to adapt on, `eval_iters` inner steps on mini-batches of
    `eval_batch` at `learning_rate`, then one held-out query per class (classification) or
    `eval_queries` query points (regression).

    Args:
        shots: int. Support examples per class.
        eval_iters: int. Inner steps.
        eval_batch: int. Inner mini-batch size.
        learning_rate: float. Inner step size.
        transductive: bool. The headline answer predicts all queries in one batch (BatchNorm
            sees them together); both answers are always measured.
        eval_samples: int. Tasks scored (the paper: 10,000).
        eval_queries: int. Query points per regression task.
        eval_train_classes: bool. Also score tasks of the meta-training classes.
    """

    shots: int = 10
    eval_iters: int = 32
    eval_batch: int = 10
    learning_rate: float = 0.02
    transductive: bool = False
    eval_samples: int = 1000
    eval_queries: int = 100
    eval_train_classes: bool = True

    @property
    def adaptation(self) -> tuple:
        """What decides an adapted network for a given support set."""
        return (self.eval_iters, self.eval_batch, self.learning_rate)

    def validate(self, recipe: Recipe | None = None) -> Protocol:
        _check_at_least(self, ("shots", "eval_samples", "eval_queries"), 1)
        for rule in protocol_rules.RULES:  # the adaptation settings' rules, as served
            value = getattr(self, rule.field)
            if not rule.holds(value):
                raise ValueError(
                    f"`{rule.field}` (the signatures' `{rule.key}`) must be {rule.expected}. "
                    f"Received: {rule.field}={value!r}"
                )
        if recipe is not None and not recipe.task_kind.transductive_option and self.transductive:
            raise ValueError(
                "`transductive` applies to classification only. Received: transductive=True"
            )
        return self


PROTOCOL_FIELDS = tuple(f.name for f in dataclasses.fields(Protocol))
RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))
