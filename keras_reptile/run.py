"""One library call per run: meta-train, evaluate with a protocol, export, over the training
API (`keras_reptile.Reptile` and `FOMAML`).

A run folder (`model_dir`, `training.run_folder.RunFolder`) holds one training recipe's
checkpoints and everything needed to go on without flags.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
from tqdm import tqdm

from keras_reptile.algorithms import StackedModel
from keras_reptile.config import Protocol, Recipe
from keras_reptile.data.sources import check_tasks, load_tasks
from keras_reptile.data.streams import Stream, initialization_seed, stream_key
from keras_reptile.export.model_card import Measurement, ModelCard
from keras_reptile.export.saved_model import (
    ServingModule,
    export_saved_model,
    read_exported_state,
)
from keras_reptile.meta_learner import FOMAML, Reptile
from keras_reptile.models import MODELS, build_model
from keras_reptile.training.evaluator import Evaluator
from keras_reptile.training.results import (
    measurements,
)
from keras_reptile.training.run_folder import RunFolder, RunInfo
from keras_reptile.training.strategy import is_chief
from keras_reptile.training.summaries import ScalarWriter
from keras_reptile.training.trainer import (
    MetaTrainer,
    inner_optimizer,
    read_recipe,
)

MODES = ("train", "evaluate", "export", "all")


def read_run(model_dir: str) -> tuple[Recipe, RunInfo] | None:
    """The recipe and `RunInfo` of the run in `model_dir`, or None if it holds no run."""
    info = RunFolder(model_dir).info()
    return None if info is None else (read_recipe(model_dir), info)


def build_keras_model(recipe: Recipe, input_shape, keras_config: dict | None = None) -> keras.Model:
    """The registered model (or, outside the registry, the model of `keras_config`) with its
    deterministic initialization for `recipe.seed` and `recipe.replicate`."""
    keras.utils.set_random_seed(initialization_seed(recipe.seed, recipe.replicate))
    if recipe.model in MODELS or keras_config is None:
        return build_model(recipe.model, recipe.classes, tuple(input_shape))
    return keras.models.model_from_json(json.dumps(keras_config))


def build_stacked_model(
    recipe: Recipe, input_shape, keras_config: dict | None = None
) -> StackedModel:
    """`build_keras_model`'s model, stacked for `recipe`'s task kind."""
    return StackedModel(build_keras_model(recipe, input_shape, keras_config), recipe.task_kind)


def run(
    recipe: Recipe,
    protocol: Protocol,
    *,
    name: str,
    model_dir: str,
    mode: str = "all",
    export_dir: str | None = None,
    data_dir: str | None = None,
    data_source: str = "local",
    tfds_manual_dir: str | None = None,
    warm_start_from: str | None = None,
    tasks: tuple | None = None,
) -> list[Measurement]:
    """Runs `mode` (train | evaluate | export | all); returns what this call measured.

    Args:
        recipe: Recipe. The training recipe (checked against the run folder's, if any).
        protocol: Protocol. The evaluation protocol to measure and the signatures' defaults.
        name: str. The model's name in its card.
        model_dir: str. The run folder.
        mode: str. What to do; `all` trains, evaluates and exports.
        export_dir: str. SavedModel base folder (`<export_dir>/<version>/`); default
            `saved_models/<name>`.
        data_dir, data_source, tfds_manual_dir: the dataset (unused for sine and for export).
        warm_start_from: str. A SavedModel of this package (a version or its base folder) whose
            initialization, Adam statistics and step an empty model_dir starts from.
        tasks: (train, test) task sources used instead of reading `recipe.dataset`, for example
            `ClassificationTasks` of the splits of `keras_reptile.data.arrays(images, labels)`
            (with `dataset="arrays"`); checked to be large enough as read data is.

    Example:
    >>> from keras_reptile.data import arrays
    >>> from keras_reptile.data.tasks import ClassificationTasks
    >>> splits = arrays(np.zeros([40, 8, 8], np.uint8), np.arange(40) % 8)
    >>> train, test = ClassificationTasks(splits.train), ClassificationTasks(splits.test)
    >>> run(recipe.replace(dataset="arrays"), protocol, name="digits",  # doctest: +SKIP
    ...     model_dir="runs/digits", tasks=(train, test))
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode. Expected one of {MODES}. Received: mode={mode!r}")
    recipe.validate()
    protocol.validate(recipe)
    stored = read_run(model_dir)
    needs_data = mode != "export" or stored is None
    train_tasks = test_tasks = None
    if tasks is not None:
        train_tasks, test_tasks = tasks
        check_tasks(recipe, protocol, train_tasks, test_tasks)
        input_shape = train_tasks.input_shape
        needs_data = True
    elif needs_data:
        if stored and data_dir is None and data_source == stored[1].data_source:
            data_dir, tfds_manual_dir = stored[1].data_dir, stored[1].tfds_manual_dir
        train_tasks, test_tasks = load_tasks(
            recipe, protocol, data_dir, data_source, tfds_manual_dir
        )
        input_shape = train_tasks.input_shape
    else:
        input_shape = stored[1].input_shape
    source = read_exported_state(warm_start_from) if warm_start_from else None
    keras_config = RunFolder(model_dir).keras_config()
    if keras_config is None and source and source.card.keras_config:
        keras_config = source.card.keras_config  # the learner records it in the run folder
    learner_class = FOMAML if recipe.foml else Reptile
    learner = learner_class(
        build_keras_model(recipe, input_shape, keras_config),
        model_dir=model_dir,
        recipe=recipe,
        protocol=protocol,
        name=name,
    )
    strategy = learner.strategy
    splits = {"train": train_tasks, "test": test_tasks}
    if not recipe.task_kind.class_splits:
        splits = {"test": test_tasks}
    periodic_splits = {
        k: v for k, v in splits.items() if k != "train" or protocol.eval_train_classes
    }
    # Refuses a run folder of another recipe, or a source it cannot start from, before
    # anything is written.
    learner.trainer(train_tasks, warm_start=source)
    step = learner.step
    if is_chief(strategy):
        _write_run_info(model_dir, stored, name, protocol, input_shape, needs_data, data_dir,
                        data_source, tfds_manual_dir)  # fmt: skip
    if mode in ("train", "all"):
        learner.fit(train_tasks, validation_tasks=periodic_splits if needs_data else None)
    elif step == 0:
        raise ValueError(
            f"No checkpoint to {mode} in the model directory; train first (--mode=train or all). "
            f"Received: model_dir={model_dir!r}"
        )
    if not is_chief(strategy):
        return []
    measured = []
    if mode in ("evaluate", "all"):
        measured = evaluate(recipe, protocol, learner.trainer(), splits, model_dir)
    if mode in ("export", "all"):
        path = learner.export(export_dir or os.path.join("saved_models", name))
        print(f"Exported SavedModel: {path}", flush=True)
    return measured


def _write_run_info(
    model_dir, stored, name, protocol, input_shape, has_data, data_dir, data_source, manual_dir
) -> None:
    """Writes `run.json` for a new run; an existing one keeps its name and default protocol and
    only learns where the data now is."""
    if stored is None:
        info = RunInfo(name, protocol, tuple(input_shape), data_dir, data_source, manual_dir)
    elif has_data:
        info = dataclasses.replace(
            stored[1], data_dir=data_dir, data_source=data_source, tfds_manual_dir=manual_dir
        )
    else:
        return
    RunFolder(model_dir).write_info(info)


def _evaluator(recipe: Recipe, protocol: Protocol, model: StackedModel) -> Evaluator:
    return Evaluator(model, inner_optimizer(recipe), protocol, ways=recipe.classes)


def evaluate(
    recipe: Recipe, protocol: Protocol, trainer: MetaTrainer, splits: dict, model_dir: str
) -> list[Measurement]:
    """Measures `protocol` on `eval_samples` tasks per split and records it in the run folder.

    Regression also scores the same test tasks adapted from the untrained initialization.
    """
    evaluator = _evaluator(recipe, protocol, trainer.model)
    weights, state = trainer.state.read_weights(), trainer.state.optimizer_state()
    step = int(trainer.state.step.numpy())
    runs = [
        (split, tasks, weights, state, split)
        for split, tasks in splits.items()
        if split != "train" or protocol.eval_train_classes
    ]
    initial = trainer.model.initial_weights()
    if recipe.task_kind.random_init_baseline:
        runs.append(
            (
                "test_from_random_init",
                splits["test"],
                initial,
                trainer.optimizer.init_state(initial),
                "test",
            )
        )
    measured = []
    folder = RunFolder(model_dir)
    writer = ScalarWriter(folder.summaries("eval"))
    for split, tasks, w, s, stream_part in runs:
        key = stream_key(recipe.seed, Stream.EVALUATION, stream_part)
        with tqdm(total=protocol.eval_samples, desc=f"evaluate {split}", unit="task") as bar:
            scores = evaluator.evaluate(tasks, w, s, protocol.eval_samples, key, bar.update)
        for answer, r in scores.items():
            print(f"{split:>22} {answer:>16}: {r}", flush=True)
        # One tag per protocol's shots: the 1-shot and 5-shot results of a run sit side by side.
        writer.write(
            step, {f"{split}/{a}/{protocol.shots}_shot": r.mean for a, r in scores.items()}
        )
        measured += measurements(split, protocol, scores, step)
    if recipe.dataset == "sine":
        _plot_sine(recipe, protocol, trainer, splits["test"], model_dir)
    folder.record(measured)
    return measured


def _plot_sine(recipe, protocol, trainer, tasks, model_dir) -> None:
    from keras_reptile.training.sine_plot import plot_sine_adaptation

    plot = os.path.join(model_dir, "sine_adaptation.png")
    initial = trainer.model.initial_weights()
    plot_sine_adaptation(
        trainer.model,
        trainer.optimizer,
        {
            "meta-learned initialization (Reptile)": (
                trainer.state.read_weights(),
                trainer.state.optimizer_state(),
            ),
            "random initialization": (initial, trainer.optimizer.init_state(initial)),
        },
        tasks,
        protocol,
        key=stream_key(recipe.seed, Stream.PLOT),
        path=plot,
    )
    print(f"Plot: {plot}", flush=True)


def recorded_results(model_dir: str) -> list[Measurement]:
    """Every evaluation recorded in the run folder."""
    return RunFolder(model_dir).results()


def export(name: str, protocol: Protocol, trainer: MetaTrainer, export_dir: str) -> str:
    """Exports the run's state (initialization, carried Adam statistics, step) with a model card
    listing every protocol measured at this step."""
    step = int(trainer.state.step.numpy())
    results = [m for m in trainer.folder.results() if m.meta_iterations == step]
    warm_start = trainer.folder.warm_start()
    card = ModelCard(
        name=name,
        recipe=trainer.recipe,
        default_protocol=protocol,
        input_shape=trainer.model.input_shape,
        meta_iterations=step,
        results=tuple(results),
        warm_started_from=warm_start,
        keras_config=trainer.folder.keras_config(),
    )
    module = ServingModule(
        trainer.model,
        trainer.state.numpy_weights(),
        trainer.optimizer,
        trainer.state.adam_step.numpy(),
        [v.numpy() for v in trainer.state.adam_v],
        protocol=protocol,
        ways=trainer.recipe.classes,
    )
    return export_saved_model(module, export_dir, card)


__all__ = [
    "MODES",
    "RunInfo",
    "build_keras_model",
    "build_stacked_model",
    "evaluate",
    "export",
    "read_run",
    "run",
]
