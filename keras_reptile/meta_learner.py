"""The training API: meta-train a Keras model's initialization, evaluate it, export it.

    learner = keras_reptile.Reptile(model, recipe="omniglot_5w1s", model_dir="runs/mine")
    history = learner.fit(train_tasks, meta_iterations=1000, validation_tasks={"test": test})
    learner.evaluate(test_tasks)
    learner.export("saved_models/mine")

It drives the same `MetaTrainer`, `Evaluator` and exporter as `absl_main.py`, so a run folder made
here resumes, evaluates and exports from the command line too, and the other way round.
"""

from __future__ import annotations

import json

import keras

from keras_reptile.algorithms import StackedModel
from keras_reptile.config import Protocol, Recipe
from keras_reptile.data.streams import Stream, stream_key
from keras_reptile.export.saved_model import ExportedState, read_exported_state
from keras_reptile.presets import get_preset
from keras_reptile.training.evaluator import EvalResult, Evaluator
from keras_reptile.training.run_folder import RunFolder, RunInfo
from keras_reptile.training.strategy import is_chief, make_strategy
from keras_reptile.training.trainer import MetaTrainer, inner_optimizer

# Keras callbacks that would save or restore a Keras model's weights as the run's state; the run
# folder already checkpoints the whole state (weights, carried Adam statistics, step) and resumes
# bit-exactly.
_REFUSED_CALLBACKS = ("BackupAndRestore",)


def _recipe(recipe: Recipe | str | None, changes: dict) -> tuple[Recipe, Protocol | None]:
    """The recipe (a `Recipe`, a preset's name or the defaults) with `changes` applied, and the
    preset's protocol if a preset was named."""
    protocol = None
    if isinstance(recipe, str):
        preset = get_preset(recipe)
        recipe, protocol = preset.recipe, preset.protocol
    elif recipe is None:
        recipe = Recipe()
    elif not isinstance(recipe, Recipe):
        raise ValueError(
            "`recipe` must be a Recipe, a preset's name or None. "
            f"Received: recipe={type(recipe).__name__}"
        )
    return recipe.replace(**changes).validate(), protocol


def _architecture(config):
    """A Keras config without its layer names, which Keras numbers per process."""
    if isinstance(config, dict):
        return {k: _architecture(v) for k, v in config.items() if k != "name"}
    if isinstance(config, list):
        return [_architecture(v) for v in config]
    return config


class MetaLearner:
    """Meta-trains the initialization of a Keras `model` (see `Reptile` and `FOMAML`).

    Args:
        model: keras.Model. A functional or Sequential model with a `keras.Input`, of layers the
            stacked implementation computes (`keras_reptile.algorithms.SUPPORTED`); its outputs
            are logits (or a softmax, read as logits), one per class.
        model_dir: str. The run folder: checkpoints, recipe, summaries, results. An existing run
            folder of the same recipe resumes bit-exactly.
        recipe: Recipe, a preset's name (e.g. "omniglot_5w1s": its recipe and protocol), or None
            for the defaults; `**changes` override its fields (e.g. `meta_iters=5000`).
        protocol: Protocol. How `evaluate` measures and what an export's signatures default to;
            default: the preset's, else `Protocol()` with the recipe's learning rate.
        name: str. The model's name in an exported card.
    """

    foml = False

    def __init__(
        self,
        model: keras.Model,
        *,
        model_dir: str,
        recipe: Recipe | str | None = None,
        protocol: Protocol | None = None,
        name: str = "custom",
        **changes,
    ):
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"`model` must be a keras.Model. Received: model={type(model).__name__}"
            )
        changes.setdefault("model", model.name)
        changes["foml"] = self.foml
        self.recipe, preset_protocol = _recipe(recipe, changes)
        self.protocol = (
            protocol or preset_protocol or Protocol(learning_rate=self.recipe.learning_rate)
        ).validate(self.recipe)
        self.name, self.model_dir = name, model_dir
        self.model = StackedModel(model, self.recipe.task_kind)
        self.folder = RunFolder(model_dir)
        self.strategy = make_strategy(self.recipe.strategy)
        self._check_model_config(model)
        self._trainer: MetaTrainer | None = None
        self._evaluator = Evaluator(
            self.model, inner_optimizer(self.recipe), self.protocol, ways=self.recipe.classes
        )

    def _check_model_config(self, model: keras.Model) -> None:
        """Records the model's Keras config in a new run folder; refuses another model's."""
        config = json.loads(model.to_json())
        saved = self.folder.keras_config()
        if saved is None:
            if is_chief(self.strategy):
                self.folder.write_keras_config(config)
        elif _architecture(saved) != _architecture(config):
            raise ValueError(
                f"{self.model_dir} holds a run of another Keras model (its config differs). "
                f"Use another model_dir. Received: model={model.name!r}"
            )

    def trainer(self, tasks=None, *, warm_start: ExportedState | None = None) -> MetaTrainer:
        """The run's `MetaTrainer`, restored from the run folder's latest checkpoint.

        `warm_start`: an export an empty run folder starts from (`MetaTrainer.warm_start`),
        checked against the recipe before the run folder is written.
        """
        if self._trainer is None or (tasks is not None and self._trainer.tasks is not tasks):
            trainer = MetaTrainer(
                self.recipe, self.model, self.strategy, self.model_dir, train_tasks=tasks
            )
            if warm_start is not None:
                trainer.warm_start(warm_start)
            trainer.restore()
            self._trainer = trainer
            if self.folder.info() is None and is_chief(self.strategy):
                self.folder.write_info(
                    RunInfo(
                        self.name, self.protocol, tuple(self.model.input_shape), None, "api", None
                    )  # fmt: skip
                )
        elif warm_start is not None:
            self._trainer.warm_start(warm_start)
        return self._trainer

    @property
    def step(self) -> int:
        """Meta-iterations trained so far."""
        return int(self.trainer().state.step.numpy())

    def warm_start(self, source: str) -> int:
        """Starts an empty run folder from an export of this package (a version or its base
        folder): its initialization, carried Adam statistics and step. Returns the step."""
        self.trainer(warm_start=read_exported_state(source))
        return self.step

    def fit(
        self,
        tasks,
        meta_iterations: int | None = None,
        *,
        callbacks: list[keras.callbacks.Callback] | None = None,
        validation_tasks=None,
        verbose: int = 1,
    ) -> keras.callbacks.History:
        """Meta-trains on `tasks` (a task source of the meta-training classes).

        Args:
            tasks: task source (`keras_reptile.data`), e.g. `ClassificationTasks`.
            meta_iterations: int. How many more meta-iterations (default: up to
                `recipe.meta_iters`, never past it).
            callbacks: Keras callbacks. An epoch is `recipe.eval_interval` meta-iterations (or
                `checkpoint_interval` without periodic evaluation); a batch is one compiled
                call of `summary_interval` meta-iterations. Epoch logs hold `loss`,
                `meta_step_size` and, with `validation_tasks`, `val_<split>_<answer>_accuracy`
                (or `val_<split>_mse`) on `eval_interval_samples` tasks.
            validation_tasks: a task source, or `{split name: task source}`, scored every
                `recipe.eval_interval` meta-iterations (a source alone is named "test").
            verbose: int. 0 hides the progress bar's lines of periodic evaluation.

        Returns:
            keras.callbacks.History with one entry per epoch run by this call.
        """
        callbacks = list(callbacks or [])
        for callback in callbacks:
            if type(callback).__name__ in _REFUSED_CALLBACKS:
                raise ValueError(
                    f"{type(callback).__name__} saves a Keras model's weights, not the run's "
                    "state; the run folder already checkpoints everything every "
                    "`checkpoint_interval` meta-iterations and `fit` resumes from it bit-exactly. "
                    f"Received: callbacks=[{type(callback).__name__}(...)]"
                )
        if validation_tasks is not None and not isinstance(validation_tasks, dict):
            validation_tasks = {"test": validation_tasks}
        trainer = self.trainer(tasks)
        trainer.periodic_eval = (self._evaluator, validation_tasks) if validation_tasks else None
        history = keras.callbacks.History()
        callback_list = keras.callbacks.CallbackList(
            callbacks + [history],
            model=self.model.model,
            verbose=verbose,
            epochs=-(-self.recipe.meta_iters // trainer.epoch_length()),
            steps=trainer.epoch_length() // min(self.recipe.summary_interval,
                                                trainer.epoch_length()),
        )  # fmt: skip
        keras_model = self.model.model
        keras_model.stop_training = False
        if not hasattr(keras_model, "optimizer"):
            # Keras callbacks read `model.optimizer` (None: no Keras optimizer, as here).
            keras_model.optimizer = None
        trainer.train(meta_iterations, callbacks=callback_list)
        return history

    def evaluate(
        self, tasks, protocol: Protocol | None = None, num_tasks: int | None = None
    ) -> dict[str, EvalResult]:
        """Scores the current initialization on `num_tasks` tasks of `tasks` (default: the
        protocol's `eval_samples`), the same tasks for the same seed every time.

        Returns an `EvalResult` per answer of the task kind: `{"non_transductive": ...,
        "transductive": ...}` for classification, `{"mse": ...}` for regression.
        """
        protocol = (protocol or self.protocol).validate(self.recipe)
        evaluator = (
            self._evaluator
            if protocol == self.protocol
            else Evaluator(
                self.model, inner_optimizer(self.recipe), protocol, ways=self.recipe.classes
            )  # fmt: skip
        )
        state = self.trainer().state
        key = stream_key(self.recipe.seed, Stream.EVALUATION, "test")
        return evaluator.evaluate(
            tasks,
            state.read_weights(),
            state.optimizer_state(),
            num_tasks or protocol.eval_samples,
            key,
        )

    def export(self, export_dir: str) -> str:
        """Exports the run's state as the next version under `export_dir` with a model card
        (the recipe, the protocol, the model's Keras config, results recorded at this step);
        returns the version folder."""
        from keras_reptile.run import export

        return export(self.name, self.protocol, self.trainer(), export_dir)


class Reptile(MetaLearner):
    """Reptile (Nichol, Achiam & Schulman, 2018): the initialization moves toward each task's
    adapted weights. See `MetaLearner` for the arguments."""

    foml = False


class FOMAML(MetaLearner):
    """First-order MAML: the initialization moves along the last inner step's gradient. See
    `MetaLearner` for the arguments."""

    foml = True


__all__ = ["FOMAML", "MetaLearner", "Reptile"]
