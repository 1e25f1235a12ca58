"""The model card: what a SavedModel holds and every result measured on it, as one typed value.

Written by the exporter as `assets.extra/model_card.json`; read by the trainer (to continue a run
from an export), the server (ways and input shape, and the card it shows), the client and the tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from keras_reptile.config import Protocol, Recipe
from keras_reptile.export.signatures import CARD_FILE
from keras_reptile.task_kind import REGRESSION, TaskKind, by_metric

SPLITS = ("test", "train", "test_from_random_init")
FORMAT = 2  # version of this file's layout


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One number measured on the artifact.

    Args:
        split: str. Which classes the tasks came from (`SPLITS`); `test_from_random_init` is the
            same test tasks adapted from the untrained initialization (regression's baseline).
        protocol: Protocol. How it was measured; `protocol.transductive` says which answer.
        metric: str. "accuracy" (a fraction) or "mse".
        mean: float. Mean over tasks.
        ci95: float. Half-width of the 95% confidence interval.
        num_tasks: int. Tasks scored.
        meta_iterations: int. The meta-iteration the initialization had reached.
    """

    split: str
    protocol: Protocol
    metric: str
    mean: float
    ci95: float
    num_tasks: int
    meta_iterations: int

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "protocol": self.protocol.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        data = dict(data)
        data["protocol"] = Protocol.from_dict(data["protocol"])
        return cls(**data)

    def __str__(self) -> str:
        kind = by_metric(self.metric)
        answer = ""
        if kind.transductive_option:
            answer = " transductive" if self.protocol.transductive else " non-transductive"
        value = kind.format(self.mean, self.ci95)
        return f"{self.split} {self.protocol.shots}-shot{answer}: {value}"


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """The export a run was started from."""

    model: str
    version: int
    meta_iterations: int


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """A SavedModel's description.

    Args:
        name: str. The model's name (its base folder under `saved_models/`).
        recipe: Recipe. How the initialization was trained.
        default_protocol: Protocol. What the signatures' optional inputs default to (inner steps,
            batch size, learning rate, transductive or not).
        input_shape: tuple. One example's shape.
        meta_iterations: int. Meta-iterations the initialization had when exported.
        results: tuple of Measurement. Every protocol measured on these very weights.
        package_version: str. The keras-reptile version that wrote it.
        warm_started_from: WarmStart or None. The export the run was started from, if any.
        keras_config: dict or None. The network's Keras config (`model.to_json()`) when it is
            not a registry model, so the export can be warm-started or re-exported from alone.
    """

    name: str
    recipe: Recipe
    default_protocol: Protocol
    input_shape: tuple[int, ...]
    meta_iterations: int
    results: tuple[Measurement, ...] = ()
    package_version: str = ""
    warm_started_from: WarmStart | None = None
    keras_config: dict | None = None

    def __post_init__(self):
        for m in self.results:
            if m.meta_iterations != self.meta_iterations:
                raise ValueError(
                    f"A model card only carries results measured on its own weights (meta-"
                    f"iteration {self.meta_iterations}). Received: meta_iterations="
                    f"{m.meta_iterations} for {m}"
                )

    @property
    def ways(self) -> int:
        return self.recipe.classes

    @property
    def task_kind(self) -> TaskKind:
        return self.recipe.task_kind

    def find(
        self, *, split: str = "test", shots: int | None = None, transductive: bool = False
    ) -> Measurement | None:
        """The result of `split` with `shots` (any, if None) and that answer, if measured."""
        for m in self.results:
            if (m.split, m.protocol.transductive) == (split, transductive) and shots in (
                None,
                m.protocol.shots,
            ):
                return m
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            # Derived, written for readers of the file: recomputed, never read back.
            "ways": self.ways,
            "regression": self.task_kind == REGRESSION,
            "algorithm": self.recipe.algorithm,
            "inner_optimizer": self.recipe.inner_optimizer,
            "input_shape": list(self.input_shape),
            "meta_iterations": self.meta_iterations,
            "default_protocol": self.default_protocol.to_dict(),
            "results": [m.to_dict() for m in self.results],
            "recipe": self.recipe.to_dict(),
            "package_version": self.package_version,
            "warm_started_from": (
                dataclasses.asdict(self.warm_started_from) if self.warm_started_from else None
            ),
            "keras_config": self.keras_config,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parses a card; `ValueError` naming what is missing or wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"A model card must be JSON. Received: error={e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"Not a keras-reptile model card of format {FORMAT}. Received: format={found!r}"
            )
        try:
            warm = data.get("warm_started_from")
            return cls(
                name=data["name"],
                recipe=Recipe.from_dict(data["recipe"]),
                default_protocol=Protocol.from_dict(data["default_protocol"]),
                input_shape=tuple(int(d) for d in data["input_shape"]),
                meta_iterations=int(data["meta_iterations"]),
                results=tuple(Measurement.from_dict(m) for m in data["results"]),
                package_version=data.get("package_version", ""),
                warm_started_from=WarmStart(**warm) if warm else None,
                keras_config=data.get("keras_config"),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"The model card lacks or mistypes a field. Received: error={e!r}"
            ) from None

    @classmethod
    def read(cls, version_dir: str) -> ModelCard:
        """The card of a SavedModel version folder."""
        path = os.path.join(version_dir, "assets.extra", CARD_FILE)
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise ValueError(
                f"No model card at assets.extra/{CARD_FILE}. Received: path={version_dir!r} "
                f"({e.strerror})"
            ) from None
        try:
            return cls.from_json(text)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
