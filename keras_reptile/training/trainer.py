"""The meta-training driver: the compiled loop between checkpoints, summaries and periodic
evaluations; resume and warm start. The maths of a meta-iteration is `meta_step.MetaStep`."""

from __future__ import annotations

import logging
import sys
import time

import keras
import tensorflow as tf
from tqdm import tqdm

from keras_reptile.algorithms import InnerOptimizer
from keras_reptile.config import Recipe, identity_difference
from keras_reptile.data.streams import Stream, stream_key
from keras_reptile.export.model_card import WarmStart
from keras_reptile.training.meta_step import MetaStep
from keras_reptile.training.results import measurements
from keras_reptile.training.run_folder import RunFolder
from keras_reptile.training.state import MetaState
from keras_reptile.training.strategy import is_chief
from keras_reptile.training.summaries import ScalarWriter

log = logging.getLogger(__name__)


def inner_optimizer(recipe: Recipe) -> InnerOptimizer:
    return InnerOptimizer(
        recipe.inner_optimizer, beta2=recipe.adam_beta2, epsilon=recipe.adam_epsilon
    )


class MetaTrainer:
    """Meta-trains an initialization with Reptile or FOMAML under a `tf.distribute` strategy.

    Args:
        recipe: Recipe. The run's training hyperparameters.
        model: StackedModel. The network; its Keras variables are only read for the start.
        strategy: tf.distribute.Strategy. Splits the meta-batch's tasks across replicas.
        model_dir: str. Checkpoints, `recipe.json` and TensorBoard summaries go here.
        train_tasks: task source of the meta-training classes (only `train` needs it).
        periodic_eval: optional `(Evaluator, {split name: task source})` scored every
            `recipe.eval_interval` meta-iterations.
    """

    def __init__(self, recipe, model, strategy, model_dir, train_tasks=None, periodic_eval=None):
        self.recipe, self.model, self.tasks = recipe, model, train_tasks
        self.strategy, self.model_dir = strategy, model_dir
        self.folder = RunFolder(model_dir)
        self.periodic_eval = periodic_eval
        self.optimizer = inner_optimizer(recipe)
        if train_tasks is not None:
            train_tasks.check(recipe.classes, recipe.train_shots)
        with strategy.scope():
            self.state = MetaState(model.initial_weights(), self.optimizer, recipe.seed)
        self.checkpoint = tf.train.Checkpoint(state=self.state)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._checkpoint_dir(), max_to_keep=3
        )
        self.meta_step = MetaStep(recipe, model, self.optimizer, strategy, self.state, train_tasks)

    # ----- driver -----
    def _checkpoint_dir(self) -> str:
        if is_chief(self.strategy):
            return self.folder.checkpoints
        # Non-chief workers of multi_worker_mirrored must save too, but to a scratch directory.
        resolver = self.strategy.cluster_resolver
        return self.folder.scratch(resolver.task_type, resolver.task_id)

    def _latest_checkpoint(self) -> str | None:
        # Every worker restores the chief's checkpoint, whichever folder it saves to.
        return tf.train.latest_checkpoint(self.folder.checkpoints)

    def restore(self) -> int:
        """Restores the latest checkpoint if any; returns the step to continue from."""
        self._check_recipe()
        latest = self._latest_checkpoint()
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            log.info("Restored %s (step %d).", latest, int(self.state.step.numpy()))
        return int(self.state.step.numpy())

    def warm_start(self, source) -> int:
        """Starts an empty model_dir from an export (`ExportedState`); returns the step reached.

        The export holds the whole run state (initialization, carried Adam statistics, step), so
        evaluating, re-exporting or training on from it is the same as from the run's checkpoint;
        the results its card lists are recorded as this run's at that step.
        A model_dir that already has a checkpoint keeps it and the export is not read into it.
        """
        if self._latest_checkpoint():
            step = self.restore()
            print(
                f"{self.model_dir} already holds a checkpoint at step {step}: continuing from "
                f"it, not from {source.path}.",
                flush=True,
            )
            return step
        key = identity_difference(source.card.recipe, self.recipe)
        if key is not None:
            raise ValueError(
                f"{source.path} was trained with {key}={getattr(source.card.recipe, key)!r}; "
                f"this run cannot start from it. Received: {key}={getattr(self.recipe, key)!r}"
            )
        shapes = [tuple(w.shape) for w in self.state.weights]
        received = [tuple(w.shape) for w in source.weights]
        if received != shapes:
            raise ValueError(
                f"{source.path} holds weights of other shapes than this run's model {shapes}. "
                f"Received: shapes={received}"
            )
        self.restore()  # nothing to restore; writes recipe.json only now that the source fits
        for var, value in zip(self.state.weights, source.weights):
            var.assign(value)
        for var, value in zip(self.state.adam_v, source.adam_v):
            var.assign(value)
        self.state.adam_step.assign(source.adam_step)
        self.state.step.assign(source.meta_iterations)
        if is_chief(self.strategy):
            # Name and version, not the path: the card must say the same wherever it was made.
            self.folder.write_warm_start(
                WarmStart(source.card.name, source.version, source.meta_iterations)
            )
            # Measured on this very state: re-exporting it, or measuring another protocol of it,
            # keeps them on the card.
            self.folder.record(
                [m for m in source.card.results if m.meta_iterations == source.meta_iterations]
            )
        self.manager.save(checkpoint_number=source.meta_iterations)
        print(
            f"Started {self.model_dir} from {source.path} (step {source.meta_iterations}).",
            flush=True,
        )
        return source.meta_iterations

    def _check_recipe(self) -> None:
        """Refuses to resume a run whose identity fields differ; records the recipe of a new one."""
        if not self.folder.check_recipe(self.recipe) and is_chief(self.strategy):
            self.folder.write_recipe(self.recipe)

    def epoch_length(self) -> int:
        """Meta-iterations per Keras epoch: one periodic evaluation's interval (or, without
        periodic evaluation, one checkpoint's), so epoch logs carry its results."""
        return self.recipe.eval_interval or self.recipe.checkpoint_interval

    def train(self, num_iterations: int | None = None, callbacks=None) -> int:
        """Meta-trains up to `recipe.meta_iters`, or `num_iterations` more meta-iterations if
        given (never past `meta_iters`), resuming from the latest checkpoint.

        `callbacks` (a `keras.callbacks.CallbackList` set to the Keras model) hears each
        compiled call as a batch (logs: `loss`, `meta_step_size`) and each `epoch_length()`
        meta-iterations as an epoch (logs add `val_<split>_<answer>[_accuracy]` when periodic
        evaluation runs); before an epoch's end the Keras model holds the current initialization,
        and a callback setting `model.stop_training` ends the run there, checkpointed.

        Returns the final step. A finished run is not retrained.
        """
        r = self.recipe
        if self.tasks is None:
            raise ValueError("Training needs the meta-training tasks. Received: train_tasks=None")
        if num_iterations is not None and num_iterations < 1:
            raise ValueError(
                f"`num_iterations` must be >= 1. Received: num_iterations={num_iterations}"
            )
        start = self.restore()
        target = (
            r.meta_iters if num_iterations is None else min(r.meta_iters, start + num_iterations)
        )
        if start >= r.meta_iters:
            print(f"Already trained to step {start} of {r.meta_iters}: not retraining.", flush=True)
            return start
        if start:
            print(f"Resuming from checkpoint at step {start}.", flush=True)
        train_loop = tf.function(self.meta_step.loop)
        writer = ScalarWriter(self.folder.summaries("train"))
        boundaries = [r.checkpoint_interval, r.eval_interval or r.meta_iters, r.summary_interval]
        bar = tqdm(
            total=target,
            initial=start,
            unit="it",
            desc="meta-train",
            file=sys.stdout,
            mininterval=2.0,
            dynamic_ncols=True,
            # tqdm's own estimate would count the first call's tracing; the postfix has ours.
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )
        step = start
        if step == 0 and r.eval_interval and self.periodic_eval:
            self._periodic_eval(step, writer, bar)  # the curves start at the initialization
        epoch_length = self.epoch_length()
        boundaries.append(epoch_length)
        callbacks = callbacks if callbacks is not None else keras.callbacks.CallbackList()
        callbacks.on_train_begin()
        rate, batch, epoch_logs = _SteadyRate(), 0, {}
        while step < target:
            if step % epoch_length == 0 or not batch:
                callbacks.on_epoch_begin(step // epoch_length)
            stop = min(target, *[(step // b + 1) * b for b in boundaries])
            callbacks.on_train_batch_begin(batch)
            began = time.perf_counter()
            loss, eps = (float(t) for t in train_loop(tf.constant(stop - step)))
            rate.add(stop - step, time.perf_counter() - began)
            step = stop
            epoch_logs = {"loss": loss, "meta_step_size": eps}
            callbacks.on_train_batch_end(batch, dict(epoch_logs))
            batch += 1
            bar.update(stop - bar.n)
            bar.set_postfix_str(
                f"loss={loss:.4f}, eps={eps:.3f}, {rate.describe(target - step)}", refresh=False
            )
            writer.write(step, {"meta_training_loss": loss, "meta_step_size": eps})
            if r.eval_interval and step % r.eval_interval == 0 and self.periodic_eval:
                epoch_logs.update(self._periodic_eval(step, writer, bar))
            stopping = False
            if step % epoch_length == 0 or step == target:
                self._show_keras_model()
                callbacks.on_epoch_end((step - 1) // epoch_length, dict(epoch_logs))
                stopping = bool(getattr(getattr(callbacks, "model", None), "stop_training", False))
            if step % r.checkpoint_interval == 0 or step == target or stopping:
                self.manager.save(checkpoint_number=step)
            if stopping:
                bar.write(f"A callback stopped training at step {step}.")
                break
        bar.close()
        callbacks.on_train_end(dict(epoch_logs))
        return step

    def _show_keras_model(self) -> None:
        """Copies the current initialization into the Keras model's variables, where Keras
        callbacks (checkpoints, EarlyStopping's best weights) read it."""
        for variable, value in zip(self.model.model.trainable_variables, self.state.weights):
            variable.assign(value)

    def _periodic_eval(self, step: int, writer, bar) -> dict[str, float]:
        """Scores `eval_interval_samples` tasks per split (the same tasks every time), records
        them in TensorBoard and the run folder's `periodic_results.json`; returns them as Keras
        validation logs."""
        r = self.recipe
        evaluator, splits = self.periodic_eval
        weights, state = self.state.read_weights(), self.state.optimizer_state()
        protocol = evaluator.protocol.replace(eval_samples=r.eval_interval_samples)
        parts, measured, logs = [], [], {}
        for split, tasks in splits.items():
            key = stream_key(r.seed, Stream.PERIODIC_EVALUATION, split)
            results = evaluator.evaluate(tasks, weights, state, r.eval_interval_samples, key)
            writer.write(step, {f"eval/{split}/{a}": res.mean for a, res in results.items()})
            logs.update({validation_log_key(split, a, res): res.mean for a, res in results.items()})
            parts.append(f"{split}: " + ", ".join(f"{a} {res}" for a, res in results.items()))
            measured += measurements(split, protocol, results, step)
        if is_chief(self.strategy):
            self.folder.record(measured, periodic=True)
        bar.write(f"step {step}: " + "; ".join(parts))
        return logs


def validation_log_key(split: str, answer: str, result) -> str:
    """The Keras log name of a periodic result: `val_test_transductive_accuracy`, `val_test_mse`
    (the metric last, so EarlyStopping's `mode="auto"` knows which way is better)."""
    if answer == result.metric:
        return f"val_{split}_{answer}"
    return f"val_{split}_{answer}_{result.metric}"


class _SteadyRate:
    """Seconds per meta-iteration over the compiled loop's calls after the first, which also
    traces the loop."""

    def __init__(self):
        self.calls, self.steps, self.seconds = 0, 0, 0.0

    def add(self, steps: int, seconds: float) -> None:
        self.calls += 1
        if self.calls > 1:
            self.steps, self.seconds = self.steps + steps, self.seconds + seconds

    def describe(self, remaining: int) -> str:
        if not self.steps:
            return "eta=?"
        per_step = self.seconds / self.steps
        eta = int(remaining * per_step)
        return f"{1000 * per_step:.1f} ms/it, eta={eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"


def read_recipe(model_dir: str) -> Recipe:
    """The recipe of the run in `model_dir`."""
    recipe = RunFolder(model_dir).recipe()
    if recipe is None:
        raise ValueError(
            f"The folder holds no run's recipe.json. Received: model_dir={model_dir!r}"
        )
    return recipe
