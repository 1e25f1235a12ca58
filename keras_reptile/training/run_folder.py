"""A run folder (`model_dir`) as one typed value: where each of its files is, and how each is read
and written.

| file | holds |
|---|---|
| `recipe.json` | the training recipe (a resumed run must share its identity fields) |
| `run.json` | `RunInfo`: the model's name, default protocol, input shape and where its data is |
| `warm_start.json` | the export the run started from, if any |
| `model.json` | the Keras config of a model given as a `keras.Model` (not a registry name) |
| `eval_results.json`, `periodic_results.json` | the measurements (final, and while training) |
| `checkpoints/` | the chief's checkpoints; other workers save to `scratch_<type>_<id>/` |
| `train/`, `eval/` | TensorBoard scalars |
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from keras_reptile.config import Protocol, Recipe, identity_difference
from keras_reptile.export.model_card import Measurement, WarmStart
from keras_reptile.training.results import (
    PERIODIC_RESULTS_FILE,
    RESULTS_FILE,
    read_measurements,
    record_measurements,
    write_json,
)

RECIPE_FILE = "recipe.json"
RUN_FILE = "run.json"
WARM_START_FILE = "warm_start.json"
MODEL_FILE = "model.json"


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a run folder records besides its recipe (`run.json`).

    Args:
        name: str. The model's name (its SavedModel base folder).
        protocol: Protocol. The default protocol: the signatures' defaults and `--mode=evaluate`'s.
        input_shape: tuple. One example's shape, so exporting needs no data.
        data_dir, data_source, tfds_manual_dir: where the data was read, so evaluating needs no
            flags.
    """

    name: str
    protocol: Protocol
    input_shape: tuple[int, ...]
    data_dir: str | None = None
    data_source: str = "local"
    tfds_manual_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "input_shape": list(self.input_shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunInfo:
        data = dict(data)
        data["protocol"] = Protocol.from_dict(data["protocol"])
        data["input_shape"] = tuple(data["input_shape"])
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """The files of one run folder.

    Args:
        path: str. The folder.
    """

    path: str

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def checkpoints(self) -> str:
        return self.file("checkpoints")

    def scratch(self, task_type: str, task_id: int) -> str:
        """Where a non-chief worker of `multi_worker_mirrored` saves its (unused) checkpoints."""
        return self.file(f"scratch_{task_type}_{task_id}")

    def summaries(self, name: str) -> str:
        return self.file(name)

    def _read(self, name: str, parse):
        path = self.file(name)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                return parse(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"Cannot read the run's {name}: {e}. Received: path={path!r}"
            ) from None

    def recipe(self) -> Recipe | None:
        """The recorded recipe, or None for a new run."""
        return self._read(RECIPE_FILE, Recipe.from_dict)

    def check_recipe(self, recipe: Recipe) -> bool:
        """Refuses `recipe` if the folder holds a run of another identity; returns whether the
        folder holds a recipe already."""
        saved = self.recipe()
        if saved is None:
            return False
        key = identity_difference(saved, recipe)
        if key is not None:
            raise ValueError(
                f"{self.path} holds a run with {key}={getattr(saved, key)!r}; resuming it with a "
                f"different value is not possible. Use another --model_dir. "
                f"Received: {key}={getattr(recipe, key)!r}"
            )
        return True

    def write_recipe(self, recipe: Recipe) -> None:
        os.makedirs(self.path, exist_ok=True)
        write_json(self.file(RECIPE_FILE), recipe.to_dict())

    def info(self) -> RunInfo | None:
        """The recorded `RunInfo`, or None if the folder holds no run."""
        return self._read(RUN_FILE, RunInfo.from_dict)

    def write_info(self, info: RunInfo) -> None:
        os.makedirs(self.path, exist_ok=True)
        write_json(self.file(RUN_FILE), info.to_dict())

    def warm_start(self) -> WarmStart | None:
        """The export the run started from, if it did."""
        return self._read(WARM_START_FILE, lambda d: WarmStart(**d))

    def write_warm_start(self, warm_start: WarmStart) -> None:
        write_json(self.file(WARM_START_FILE), dataclasses.asdict(warm_start))

    def keras_config(self) -> dict | None:
        """The Keras config (`model.to_json()`) of the run's own model, if it was given one."""
        return self._read(MODEL_FILE, dict)

    def write_keras_config(self, config: dict) -> None:
        os.makedirs(self.path, exist_ok=True)
        write_json(self.file(MODEL_FILE), config)

    def results(self, periodic: bool = False) -> list[Measurement]:
        """Every measurement recorded: the final evaluations, or the periodic ones."""
        return read_measurements(self.path, PERIODIC_RESULTS_FILE if periodic else RESULTS_FILE)

    def record(self, measured: list[Measurement], periodic: bool = False) -> None:
        """Adds `measured`, replacing entries of the same split, protocol and meta-iteration."""
        record_measurements(
            self.path, measured, PERIODIC_RESULTS_FILE if periodic else RESULTS_FILE
        )
