"""The hyperparameters of one run, as a frozen dataclass that presets fill and flags override."""

from __future__ import annotations

import dataclasses

DATASETS = ("omniglot", "miniimagenet", "sine")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a meta-training run; names follow the official Reptile code's flags.

    Args:
        dataset: str. One of `DATASETS`.
        model: str. A name in the model registry (`keras_reptile.models.MODELS`).
        classes: int. Ways per task (1 for regression).
        shots: int. Support examples per class at evaluation.
        train_shots: int. Examples per class in a meta-training task (0 means `shots`).
        inner_batch: int. Mini-batch size of the inner loop during meta-training.
        inner_iters: int. Inner-loop steps per meta-training task.
        learning_rate: float. Inner-loop step size.
        meta_step: float. Initial outer step size (epsilon).
        meta_step_final: float. Outer step size at the last meta-iteration (linear anneal).
        meta_batch: int. Tasks per meta-iteration.
        meta_iters: int. Number of meta-iterations.
        eval_batch: int. Inner mini-batch size at evaluation.
        eval_iters: int. Inner-loop steps at evaluation.
        eval_samples: int. Tasks in the final evaluation (the paper uses 10,000).
        eval_interval: int. Meta-iterations between periodic evaluations (0 = never).
        eval_interval_samples: int. Tasks per periodic evaluation.
        eval_queries: int. Query points per regression task (classification holds out 1 per class).
        eval_train_classes: bool. The final evaluation also scores meta-training classes.
        transductive: bool. Predict all queries in one batch (BatchNorm sees them together).
        foml: bool. First-order MAML instead of Reptile.
        foml_tail: int. FOMAML's last step uses a separate set of this many shots per class
            (0 = off).
        sgd: bool. Plain SGD in the inner loop instead of Adam with beta1=0.
        adam_beta2: float. Inner Adam's second-moment decay.
        adam_epsilon: float. Inner Adam's epsilon (TF1 placement: outside the square root).
        seed: int. Seeds the class split and every sampled task.
        checkpoint_interval: int. Meta-iterations between checkpoints.
        strategy: str. One of `STRATEGIES`.
        task_groups: int. The fast path trains each replica's tasks as this many stacked
            networks, which run concurrently on the inter-op thread pool.
    """

    dataset: str = "sine"
    model: str = "sine_mlp"
    classes: int = 1
    shots: int = 10
    train_shots: int = 50
    inner_batch: int = 10
    inner_iters: int = 5
    learning_rate: float = 0.02
    meta_step: float = 1.0
    meta_step_final: float = 0.0
    meta_batch: int = 5
    meta_iters: int = 30000
    eval_batch: int = 10
    eval_iters: int = 32
    eval_samples: int = 1000
    eval_interval: int = 1000
    eval_interval_samples: int = 100
    eval_queries: int = 100
    eval_train_classes: bool = True
    transductive: bool = False
    foml: bool = False
    foml_tail: int = 0
    sgd: bool = True
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    seed: int = 0
    checkpoint_interval: int = 1000
    strategy: str = "default"
    task_groups: int = 2

    @property
    def is_regression(self) -> bool:
        return self.dataset == "sine"

    @property
    def task_shots(self) -> int:
        """Examples per class sampled for one meta-training task."""
        return self.train_shots or self.shots

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def validate(self) -> Config:
        """Raises `ValueError` naming the first invalid value or impossible combination."""
        positive = (
            "classes",
            "shots",
            "inner_batch",
            "inner_iters",
            "meta_batch",
            "meta_iters",
            "eval_batch",
            "eval_samples",
            "eval_queries",
            "checkpoint_interval",
            "task_groups",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(
                    f"`{name}` must be at least 1. Received: {name}={getattr(self, name)}"
                )
        for name in (
            "train_shots",
            "eval_iters",
            "eval_interval",
            "eval_interval_samples",
            "foml_tail",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0. Received: {name}={getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(
                f"`learning_rate` must be > 0. Received: learning_rate={self.learning_rate}"
            )
        if self.dataset not in DATASETS:
            raise ValueError(
                f"`dataset` must be one of {DATASETS}. Received: dataset={self.dataset!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"`strategy` must be one of {STRATEGIES}. Received: strategy={self.strategy!r}"
            )
        if self.foml_tail and not self.foml:
            raise ValueError(
                "`foml_tail` only applies to FOMAML; pass --foml too. "
                f"Received: foml_tail={self.foml_tail}, foml={self.foml}"
            )
        if self.foml_tail and self.foml_tail >= self.task_shots:
            raise ValueError(
                "`foml_tail` must leave shots for the earlier inner steps "
                "(foml_tail < train_shots). "
                f"Received: foml_tail={self.foml_tail}, train_shots={self.task_shots}"
            )
        if self.is_regression and self.classes != 1:
            raise ValueError(f"Regression tasks have one output. Received: classes={self.classes}")
        if self.is_regression and self.transductive:
            raise ValueError(
                "`transductive` applies to classification only. Received: transductive=True"
            )
        return self
