"""The meta-training loop: per-replica task maths, the cross-replica meta-step, and the driver."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import tensorflow as tf
from tqdm import tqdm

from keras_reptile.algorithms import (
    InnerOptimizer,
    group_sizes,
    meta_step_size,
    stack,
    stack_batches,
    stack_state,
    task_batches,
    task_update,
)
from keras_reptile.config import IDENTITY_FIELDS, Recipe
from keras_reptile.data.streams import Stream, meta_train_key, stream_key
from keras_reptile.training.results import (
    PERIODIC_RESULTS_FILE,
    measurements,
    record_measurements,
    write_json,
)
from keras_reptile.training.state import MetaState
from keras_reptile.training.strategy import is_chief, tasks_per_replica
from keras_reptile.training.summaries import scalar_writer

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.json"
# Written into model_dir when a run starts from an export rather than from scratch.
WARM_START_FILE = "warm_start.json"


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
        self.periodic_eval = periodic_eval
        self.optimizer = inner_optimizer(recipe)
        self.tasks_per_replica = tasks_per_replica(strategy, recipe.meta_batch)
        if recipe.inner_adam == "sequential" and strategy.num_replicas_in_sync > 1:
            raise ValueError(
                "`inner_adam=sequential` runs a meta-batch's tasks one after another through one "
                "Adam, so they cannot be split across replicas; use one device or "
                "inner_adam=parallel. "
                f"Received: inner_adam='sequential', replicas={strategy.num_replicas_in_sync}"
            )
        if train_tasks is not None:
            train_tasks.check(recipe.classes, recipe.train_shots)
        with strategy.scope():
            self.state = MetaState(model.initial_weights(), self.optimizer, recipe.seed)
        self.checkpoint = tf.train.Checkpoint(state=self.state)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._checkpoint_dir(), max_to_keep=3
        )
        self._train_key = meta_train_key(recipe.seed, recipe.replicate)

    # ----- per-replica (replica context) -----
    def _replica_step(self, step):
        """Trains this replica's share of the meta-batch; returns sums over all its tasks.

        Each group of the replica's tasks runs as one stacked network; the groups are
        independent, so the inter-op thread pool runs them side by side.
        """
        r = self.recipe
        ctx = tf.distribute.get_replica_context()
        replica = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
        theta = self.state.read_weights()
        start_state = self.state.optimizer_state()
        batches = []
        for j in range(self.tasks_per_replica):
            index = step * r.meta_batch + replica * self.tasks_per_replica + j
            seed = tf.stack([tf.constant(self._train_key, tf.int64), index])
            sample_seed, batch_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            task = self.tasks.sample(sample_seed, r.classes, r.train_shots)
            batches.append(
                task_batches(
                    task.support_x,
                    task.support_y,
                    batch_seed,
                    inner_batch=r.inner_batch,
                    inner_iters=r.inner_iters,
                    foml_tail=r.foml_tail if r.foml else 0,
                    ways=r.classes,
                )
            )
        sequential = r.inner_adam == "sequential"
        # Sequential: each task a stack of one, in order, starting from the statistics the task
        # before it ended with. Parallel: independent groups, all from the same statistics.
        sizes = [1] * len(batches) if sequential else group_sizes(len(batches), r.task_groups)
        deltas, vs, losses = [], [], []
        task_state = stack_state(start_state, 1)
        start = 0
        for n in sizes:
            group, start = batches[start : start + n], start + n
            update = task_update(
                self.model,
                self.optimizer,
                stack(theta, n),
                task_state if sequential else stack_state(start_state, n),
                stack_batches(group),
                lr=r.learning_rate,
                foml=r.foml,
            )
            task_state = update.state
            deltas.append([tf.reduce_sum(d, axis=0) for d in update.delta])
            vs.append([tf.reduce_sum(v, axis=0) for v in update.state.v] if update.state else [])
            losses.append(update.mean_loss)
        delta_sum = [tf.add_n(list(ds)) for ds in zip(*deltas)]
        # What the replica contributes to the carried statistics: the last task's (sequential,
        # one replica) or the sum over its tasks (parallel, averaged across replicas).
        v_sum = vs[-1] if sequential else [tf.add_n(list(v)) for v in zip(*vs)]
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, (delta_sum, v_sum, tf.add_n(losses)))

    # ----- cross-replica -----
    def _meta_step(self):
        """One meta-iteration: `strategy.run` the tasks, then update the variables once."""
        r = self.recipe
        step = self.state.step.read_value()
        sums = self.strategy.run(self._replica_step, args=(step,))
        delta_sum, v_sum, loss_sum = self.strategy.experimental_local_results(sums)[0]
        eps = meta_step_size(step, r.meta_iters, r.meta_step, r.meta_step_final)
        for w, d in zip(self.state.weights, delta_sum):
            w.assign_add(eps * d / r.meta_batch)
        if self.optimizer.kind == "adam":
            # Parallel tasks carry their average; sequential ones the last task's. Either way the
            # step count advances as the official code's sequential tasks count it.
            carried = r.meta_batch if r.inner_adam == "parallel" else 1
            for v, s in zip(self.state.adam_v, v_sum):
                v.assign(s / carried)
            self.state.adam_step.assign_add(float(r.meta_batch * r.inner_iters))
        self.state.step.assign_add(1)
        return loss_sum / r.meta_batch, eps

    def _train_loop(self, num_steps):
        """Runs `num_steps` meta-iterations; returns the mean task loss and the last step size."""
        loss_total, eps = tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(num_steps):
            loss, eps = self._meta_step()
            loss_total += loss
        return loss_total / tf.cast(num_steps, tf.float32), eps

    # ----- driver -----
    def _checkpoint_dir(self) -> str:
        if is_chief(self.strategy):
            return os.path.join(self.model_dir, "checkpoints")
        # Non-chief workers of multi_worker_mirrored must save too, but to a scratch directory.
        resolver = self.strategy.cluster_resolver
        return os.path.join(self.model_dir, f"scratch_{resolver.task_type}_{resolver.task_id}")

    def _latest_checkpoint(self) -> str | None:
        # Every worker restores the chief's checkpoint, whichever folder it saves to.
        return tf.train.latest_checkpoint(os.path.join(self.model_dir, "checkpoints"))

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
        for key in IDENTITY_FIELDS:
            saved, mine = getattr(source.card.recipe, key), getattr(self.recipe, key)
            if saved != mine:
                raise ValueError(
                    f"{source.path} was trained with {key}={saved!r}; this run cannot start "
                    f"from it. Received: {key}={mine!r}"
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
            write_json(
                os.path.join(self.model_dir, WARM_START_FILE),
                {
                    "model": source.card.name,
                    "version": source.version,
                    "meta_iterations": source.meta_iterations,
                },
            )
            # Measured on this very state: re-exporting it, or measuring another protocol of it,
            # keeps them on the card.
            record_measurements(
                self.model_dir,
                [m for m in source.card.results if m.meta_iterations == source.meta_iterations],
            )
        self.manager.save(checkpoint_number=source.meta_iterations)
        print(
            f"Started {self.model_dir} from {source.path} (step {source.meta_iterations}).",
            flush=True,
        )
        return source.meta_iterations

    def _check_recipe(self) -> None:
        """Refuses to resume a run whose identity fields differ; records the recipe of a new one."""
        path = os.path.join(self.model_dir, RECIPE_FILE)
        if os.path.exists(path):
            saved = read_recipe(self.model_dir)
            for key in IDENTITY_FIELDS:
                if getattr(saved, key) != getattr(self.recipe, key):
                    raise ValueError(
                        f"{self.model_dir} holds a run with {key}={getattr(saved, key)!r}; "
                        "resuming it with a different value is not possible. Use another "
                        f"--model_dir. Received: {key}={getattr(self.recipe, key)!r}"
                    )
        elif is_chief(self.strategy):
            os.makedirs(self.model_dir, exist_ok=True)
            write_json(path, self.recipe.to_dict())

    def train(self, num_iterations: int | None = None) -> int:
        """Meta-trains up to `recipe.meta_iters`, or `num_iterations` more meta-iterations if
        given (never past `meta_iters`), resuming from the latest checkpoint.

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
        train_loop = tf.function(self._train_loop)
        writer = scalar_writer(self.model_dir, "train")
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
        rate = _SteadyRate()
        while step < target:
            stop = min(target, *[(step // b + 1) * b for b in boundaries])
            began = time.perf_counter()
            loss, eps = (float(t) for t in train_loop(tf.constant(stop - step)))
            rate.add(stop - step, time.perf_counter() - began)
            step = stop
            bar.update(stop - bar.n)
            bar.set_postfix_str(
                f"loss={loss:.4f}, eps={eps:.3f}, {rate.describe(target - step)}", refresh=False
            )
            writer.write(step, {"meta_training_loss": loss, "meta_step_size": eps})
            if r.eval_interval and step % r.eval_interval == 0 and self.periodic_eval:
                self._periodic_eval(step, writer, bar)
            if step % r.checkpoint_interval == 0 or step == target:
                self.manager.save(checkpoint_number=step)
        bar.close()
        return step

    def _periodic_eval(self, step: int, writer, bar) -> None:
        """Scores `eval_interval_samples` tasks per split (the same tasks every time) and records
        them in TensorBoard and the run folder's `periodic_results.json`."""
        r = self.recipe
        evaluator, splits = self.periodic_eval
        weights, state = self.state.read_weights(), self.state.optimizer_state()
        protocol = evaluator.protocol.replace(eval_samples=r.eval_interval_samples)
        parts, measured = [], []
        for split, tasks in splits.items():
            key = stream_key(r.seed, Stream.PERIODIC_EVALUATION, split)
            results = evaluator.evaluate(tasks, weights, state, r.eval_interval_samples, key)
            writer.write(step, {f"eval/{split}/{a}": res.mean for a, res in results.items()})
            parts.append(f"{split}: " + ", ".join(f"{a} {res}" for a, res in results.items()))
            measured += measurements(split, protocol, results, step)
        if is_chief(self.strategy):
            record_measurements(self.model_dir, measured, PERIODIC_RESULTS_FILE)
        bar.write(f"step {step}: " + "; ".join(parts))


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
    path = os.path.join(model_dir, RECIPE_FILE)
    try:
        with open(path) as f:
            return Recipe.from_dict(json.load(f))
    except (OSError, ValueError) as e:
        raise ValueError(
            f"Cannot read the run's {RECIPE_FILE}: {e}. Received: model_dir={model_dir!r}"
        ) from None
