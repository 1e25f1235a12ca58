"""The measurements a run folder keeps: its evaluations (`eval_results.json`) and the periodic
ones taken while it trained (`periodic_results.json`)."""

from __future__ import annotations

import json
import os
import tempfile

import filelock

from keras_reptile.config import Protocol
from keras_reptile.export.model_card import Measurement
from keras_reptile.task_kind import TRANSDUCTIVE
from keras_reptile.training.evaluator import EvalResult

RESULTS_FILE = "eval_results.json"
PERIODIC_RESULTS_FILE = "periodic_results.json"


def measurements(
    split: str, protocol: Protocol, scores: dict[str, EvalResult], meta_iterations: int
) -> list[Measurement]:
    """One `Measurement` per answer of an `Evaluator.evaluate` result."""
    return [
        Measurement(
            split,
            protocol.replace(transductive=answer == TRANSDUCTIVE),
            r.metric,
            r.mean,
            r.ci95,
            r.num_tasks,
            meta_iterations,
        )
        for answer, r in scores.items()
    ]


def read_measurements(model_dir: str, filename: str = RESULTS_FILE) -> list[Measurement]:
    """Every measurement recorded in `model_dir/filename` (none if there is no such file)."""
    path = os.path.join(model_dir, filename)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            return [Measurement.from_dict(m) for m in json.load(f)]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"Cannot read the run's {filename}: {e}. Received: path={path!r}"
        ) from None


def write_json(path: str, value) -> None:
    """Writes `value` as JSON to `path` so that a reader never sees a partial file: processes side
    by side (the workers of one run) read what another writes."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def record_measurements(
    model_dir: str, measured: list[Measurement], filename: str = RESULTS_FILE
) -> None:
    """Adds `measured` to `model_dir/filename`, replacing an entry of the same split, protocol and
    meta-iteration (a run resumed from an earlier checkpoint measures those again). Processes
    side by side update the file in turn."""

    def key(m):
        return (m.split, m.protocol, m.meta_iterations)

    path = os.path.join(model_dir, filename)
    new = {key(m) for m in measured}
    with filelock.FileLock(path + ".lock"):
        kept = [m for m in read_measurements(model_dir, filename) if key(m) not in new]
        entries = sorted(kept + measured, key=lambda m: m.meta_iterations)
        write_json(path, [m.to_dict() for m in entries])
