"""One library call per run: meta-train, evaluate with the paper's protocol, export."""

from __future__ import annotations

import json
import os

import keras
from tqdm import tqdm

from keras_reptile.algorithms import FunctionalModel
from keras_reptile.config import Config
from keras_reptile.data.sources import load_tasks
from keras_reptile.export.saved_model import (
    ServingModule,
    export_saved_model,
    read_exported_state,
)
from keras_reptile.models import build_model
from keras_reptile.training.evaluator import (
    STREAM_EVAL_TEST,
    STREAM_EVAL_TRAIN,
    STREAM_PLOT,
    stream_seed,
)
from keras_reptile.training.strategy import make_strategy
from keras_reptile.training.trainer import WARM_START_FILE, MetaTrainer

MODES = ("train", "evaluate", "export", "all")
RESULTS_FILE = "eval_results.json"


def build_functional_model(config: Config, input_shape) -> FunctionalModel:
    """The registered model with its deterministic initialization for `config.seed`."""
    keras.utils.set_random_seed(config.seed)
    return FunctionalModel(
        build_model(config.model, config.classes, input_shape), config.is_regression
    )


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )


def run(
    config: Config,
    *,
    mode: str = "all",
    model_dir: str,
    export_dir: str | None = None,
    data_dir: str | None = None,
    data_source: str = "local",
    tfds_manual_dir: str | None = None,
    name: str = "model",
    warm_start_from: str | None = None,
) -> dict:
    """Runs `mode` (train | evaluate | export | all) and returns the evaluation results, if any.

    Args:
        config: Config. Validated hyperparameters.
        mode: str. What to do; `all` trains, evaluates and exports.
        model_dir: str. Checkpoints, summaries, `eval_results.json`, plots.
        export_dir: str. SavedModel base folder (`<export_dir>/<version>/`).
        data_dir: str. Dataset folder (unused for sine).
        data_source: str. "local" or "tfds".
        tfds_manual_dir: str. tensorflow-datasets' manual_dir (the official zips), if any.
        name: str. Model name (the preset) written into the model card.
        warm_start_from: str. A SavedModel of this package (a version or its base folder) whose
            initialization, Adam statistics and step an empty model_dir starts from.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode. Expected one of {MODES}. Received: mode={mode!r}")
    config.validate()
    strategy = make_strategy(config.strategy)
    train_tasks, test_tasks = load_tasks(config, data_dir, data_source, tfds_manual_dir)
    fmodel = build_functional_model(config, train_tasks.input_shape)
    eval_tasks = (
        {"test": test_tasks} if config.is_regression else {"train": train_tasks, "test": test_tasks}
    )
    trainer = MetaTrainer(config, fmodel, train_tasks, strategy, model_dir, eval_tasks=eval_tasks)
    if warm_start_from:
        trainer.warm_start(read_exported_state(warm_start_from))
    if mode in ("train", "all"):
        trainer.train()
    else:
        step = trainer.restore()
        if step == 0:
            raise ValueError(
                f"No checkpoint to {mode} in the model directory; train first "
                "(--mode=train or all). "
                f"Received: model_dir={model_dir!r}"
            )
    if not _is_chief(strategy):
        return {}
    results = {}
    if mode in ("evaluate", "all"):
        results = evaluate(config, trainer, fmodel, eval_tasks, model_dir)
    if mode in ("export", "all"):
        path = export(
            config,
            trainer,
            fmodel,
            export_dir or os.path.join("saved_models", name),
            name,
            model_dir,
        )
        print(f"Exported SavedModel: {path}", flush=True)
    return results


def evaluate(
    config: Config, trainer: MetaTrainer, fmodel, eval_tasks: dict, model_dir: str
) -> dict:
    """The final evaluation: `eval_samples` tasks per split; sine also scores the random init."""
    ev = trainer.evaluator
    weights, state = trainer.state.read_weights(), trainer.state.optimizer_state()
    runs = [
        (split, tasks, weights, state)
        for split, tasks in eval_tasks.items()
        if split != "train" or config.eval_train_classes
    ]
    if config.is_regression:
        runs.append(
            (
                "test_from_random_init",
                eval_tasks["test"],
                fmodel.initial_weights(),
                trainer.optimizer.init_state(weights),
            )
        )
    results = {
        "meta_iterations": int(trainer.state.step.numpy()),
        "num_tasks": config.eval_samples,
        "protocol": _protocol(config),
    }
    for split, tasks, w, s in runs:
        stream = stream_seed(
            config.seed, STREAM_EVAL_TRAIN if split == "train" else STREAM_EVAL_TEST
        )
        with tqdm(total=config.eval_samples, desc=f"evaluate {split}", unit="task") as bar:
            scores = ev.evaluate(tasks, w, s, config.eval_samples, stream, progress=bar.update)
        results[split] = {p: r.__dict__ for p, r in scores.items()}
        for protocol, r in scores.items():
            print(f"{split:>22} {protocol:>16}: {r}", flush=True)
    if config.is_regression:
        plot = os.path.join(model_dir, "sine_adaptation.png")
        from keras_reptile.training.sine_plot import plot_sine_adaptation

        plot_sine_adaptation(
            fmodel,
            trainer.optimizer,
            {
                "meta-learned initialization (Reptile)": (weights, state),
                "random initialization": (
                    fmodel.initial_weights(),
                    trainer.optimizer.init_state(weights),
                ),
            },
            eval_tasks["test"],
            shots=config.shots,
            steps=config.eval_iters,
            lr=config.learning_rate,
            batch_size=config.eval_batch,
            seed=stream_seed(config.seed, STREAM_PLOT),
            path=plot,
        )
        print(f"Plot: {plot}", flush=True)
    with open(os.path.join(model_dir, RESULTS_FILE), "w") as f:
        json.dump(results, f, indent=2)
    return results


def _protocol(config: Config) -> dict:
    """The evaluation settings a measured result belongs to."""
    keys = ("classes", "shots", "eval_iters", "eval_batch", "learning_rate", "sgd", "seed")
    return {k: getattr(config, k) for k in keys}


def export(
    config: Config, trainer: MetaTrainer, fmodel, export_dir: str, name: str, model_dir: str
) -> str:
    """Exports the current initialization with its carried Adam statistics and a model card."""
    results_path = os.path.join(model_dir, RESULTS_FILE)
    measured = None
    if os.path.exists(results_path):
        with open(results_path) as f:
            measured = json.load(f)
        # Runs that train identically (omniglot_5w1s and 5w5s) may share a model_dir; a card
        # only carries numbers measured with its own protocol on these very weights.
        step = int(trainer.state.step.numpy())
        if measured.get("protocol") != _protocol(config) or measured.get("meta_iterations") != step:
            print(
                f"Not putting {results_path} in the model card: it was measured with another "
                "evaluation protocol or at another step. Evaluate first (--mode=evaluate).",
                flush=True,
            )
            measured = None
    module = ServingModule(
        fmodel,
        trainer.state.numpy_weights(),
        trainer.optimizer,
        trainer.state.adam_step.numpy(),
        [v.numpy() for v in trainer.state.adam_v],
        ways=config.classes,
        inner_steps=config.eval_iters,
        learning_rate=config.learning_rate,
        batch_size=config.eval_batch,
    )
    card = {
        "name": name,
        "preset": name,
        "algorithm": "fomaml" if config.foml else "reptile",
        "ways": config.classes,
        "shots": config.shots,
        "input_shape": list(fmodel.input_shape),
        "meta_iterations": int(trainer.state.step.numpy()),
        "evaluation": {
            "inner_steps": config.eval_iters,
            "learning_rate": config.learning_rate,
            "batch_size": config.eval_batch,
            "optimizer": trainer.optimizer.kind,
            "default_protocol": "non_transductive",
        },
        "measured": measured,
        "config": config.__dict__,
    }
    warm_start = os.path.join(model_dir, WARM_START_FILE)
    if os.path.exists(warm_start):
        with open(warm_start) as f:
            card["warm_started_from"] = json.load(f)
    return export_saved_model(module, export_dir, card, name)


__all__ = ["MODES", "run", "evaluate", "export"]
