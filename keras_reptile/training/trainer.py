"""The meta-training loop: per-replica task maths, the cross-replica meta-step, and the driver."""

from __future__ import annotations

import json
import logging
import os
import sys

import tensorflow as tf
from tqdm import tqdm

from keras_reptile.algorithms import (
    InnerOptimizer,
    StackedModel,
    group_sizes,
    meta_step_size,
    stack,
    stack_batches,
    stack_state,
    supports,
    task_batches,
    task_update,
)
from keras_reptile.config import Config
from keras_reptile.training.evaluator import STREAM_INTERVAL, STREAM_TRAIN, Evaluator, stream_seed
from keras_reptile.training.state import MetaState
from keras_reptile.training.strategy import tasks_per_replica

log = logging.getLogger(__name__)

# Hyperparameters that a resumed run must share with the checkpoint it resumes.
_RESUME_KEYS = ("dataset", "model", "classes", "seed", "sgd")
# Written into model_dir when a run starts from an export rather than from scratch.
WARM_START_FILE = "warm_start.json"


def inner_optimizer(config: Config) -> InnerOptimizer:
    return InnerOptimizer(
        "sgd" if config.sgd else "adam", beta2=config.adam_beta2, epsilon=config.adam_epsilon
    )


class MetaTrainer:
    """Meta-trains an initialization with Reptile or FOMAML under a `tf.distribute` strategy.

    Args:
        config: Config. The run's hyperparameters.
        fmodel: FunctionalModel. The network; its Keras variables are only read for the start.
        train_tasks: task source of the meta-training classes.
        strategy: tf.distribute.Strategy. Splits the meta-batch's tasks across replicas.
        model_dir: str. Checkpoints, `config.json` and TensorBoard summaries go here.
        eval_tasks: dict name -> task source, scored every `config.eval_interval` steps.
        stacked: bool. Train the meta-batch's tasks as one set of kernels (the fast path) when
            the model allows; False runs them one after another through `FunctionalModel`.
    """

    def __init__(
        self, config, fmodel, train_tasks, strategy, model_dir, eval_tasks=None, stacked=True
    ):
        self.config, self.fmodel, self.tasks = config, fmodel, train_tasks
        self.strategy, self.model_dir = strategy, model_dir
        self.eval_tasks = eval_tasks or {}
        self.optimizer = inner_optimizer(config)
        self.stacked = StackedModel(fmodel) if stacked and supports(fmodel) else None
        self.tasks_per_replica = tasks_per_replica(strategy, config.meta_batch)
        train_tasks.check(config.classes, config.task_shots)
        with strategy.scope():
            self.state = MetaState(fmodel.initial_weights(), self.optimizer, config.seed)
        self.checkpoint = tf.train.Checkpoint(state=self.state)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._checkpoint_dir(), max_to_keep=3
        )
        self.evaluator = Evaluator(
            fmodel,
            self.optimizer,
            ways=config.classes,
            shots=config.shots,
            num_steps=config.eval_iters,
            batch_size=config.eval_batch,
            lr=config.learning_rate,
            queries=config.eval_queries,
        )

    # ----- per-replica (replica context) -----
    def _replica_step(self, step):
        """Trains this replica's share of the meta-batch; returns sums over all tasks."""
        c = self.config
        ctx = tf.distribute.get_replica_context()
        replica = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
        theta = self.state.read_weights()
        start_state = self.state.optimizer_state()
        batches = []
        for j in range(self.tasks_per_replica):
            index = step * c.meta_batch + replica * self.tasks_per_replica + j
            seed = tf.stack([tf.constant(stream_seed(c.seed, STREAM_TRAIN), tf.int64), index])
            sample_seed, batch_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            task = self.tasks.sample(sample_seed, c.classes, c.task_shots)
            batches.append(
                task_batches(
                    task.support_x,
                    task.support_y,
                    batch_seed,
                    inner_batch=c.inner_batch,
                    inner_iters=c.inner_iters,
                    foml_tail=c.foml_tail if c.foml else 0,
                    ways=c.classes,
                )
            )
        if self.stacked is not None:
            # Fast path: each group of the replica's tasks runs as one set of kernels (see
            # algorithms/stacked.py); the groups are independent, so the inter-op thread pool
            # runs them side by side.
            group_deltas, group_vs, group_losses = [], [], []
            start = 0
            for n in group_sizes(len(batches), c.task_groups):
                group, start = batches[start : start + n], start + n
                update = task_update(
                    self.stacked,
                    self.optimizer,
                    stack(theta, n),
                    stack_state(start_state, n),
                    stack_batches(group),
                    lr=c.learning_rate,
                    foml=c.foml,
                )
                group_deltas.append([tf.reduce_sum(d, axis=0) for d in update.delta])
                group_vs.append(
                    [tf.reduce_sum(v, axis=0) for v in update.state.v] if update.state else []
                )
                group_losses.append(update.mean_loss)
            delta_sum = [tf.add_n(list(ds)) for ds in zip(*group_deltas)]
            v_sum = [tf.add_n(list(vs)) for vs in zip(*group_vs)]
            loss_sum = tf.add_n(group_losses)
        else:
            updates = [
                task_update(
                    self.fmodel,
                    self.optimizer,
                    theta,
                    start_state,
                    b,
                    lr=c.learning_rate,
                    foml=c.foml,
                )
                for b in batches
            ]
            delta_sum = [tf.add_n(list(ds)) for ds in zip(*(u.delta for u in updates))]
            v_sum = (
                [tf.add_n(list(vs)) for vs in zip(*(u.state.v for u in updates))]
                if start_state
                else []
            )
            loss_sum = tf.add_n([u.mean_loss for u in updates])
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, (delta_sum, v_sum, loss_sum))

    # ----- cross-replica -----
    def _meta_step(self):
        """One meta-iteration: `strategy.run` the tasks, then update the variables once."""
        c = self.config
        step = self.state.step.read_value()
        sums = self.strategy.run(self._replica_step, args=(step,))
        delta_sum, v_sum, loss_sum = self.strategy.experimental_local_results(sums)[0]
        eps = meta_step_size(step, c.meta_iters, c.meta_step, c.meta_step_final)
        for w, d in zip(self.state.weights, delta_sum):
            w.assign_add(eps * d / c.meta_batch)
        if self.optimizer.kind == "adam":
            # Tasks run in parallel from the same statistics; carry their average, and count steps
            # as the official code's sequential tasks do.
            for v, s in zip(self.state.adam_v, v_sum):
                v.assign(s / c.meta_batch)
            self.state.adam_step.assign_add(float(c.meta_batch * c.inner_iters))
        self.state.step.assign_add(1)
        return loss_sum / c.meta_batch, eps

    def _train_loop(self, num_steps):
        """Runs `num_steps` meta-iterations; returns the mean task loss and the last step size."""
        loss_total, eps = tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(num_steps):
            loss, eps = self._meta_step()
            loss_total += loss
        return loss_total / tf.cast(num_steps, tf.float32), eps

    # ----- driver -----
    def _checkpoint_dir(self) -> str:
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if (
            resolver is not None
            and resolver.task_type not in (None, "chief")
            and not (resolver.task_type == "worker" and resolver.task_id == 0)
        ):
            # Non-chief workers of multi_worker_mirrored must save too, but to a scratch directory.
            return os.path.join(self.model_dir, f"scratch_{resolver.task_type}_{resolver.task_id}")
        return os.path.join(self.model_dir, "checkpoints")

    def _latest_checkpoint(self) -> str | None:
        # Every worker restores the chief's checkpoint, whichever folder it saves to.
        return tf.train.latest_checkpoint(os.path.join(self.model_dir, "checkpoints"))

    def restore(self) -> int:
        """Restores the latest checkpoint if any; returns the step to continue from."""
        self._check_config()
        latest = self._latest_checkpoint()
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            log.info("Restored %s (step %d).", latest, int(self.state.step.numpy()))
        return int(self.state.step.numpy())

    def warm_start(self, source) -> int:
        """Starts an empty model_dir from an export (`ExportedState`); returns the step reached.

        The export holds the whole run state (initialization, carried Adam statistics, step), so
        evaluating, re-exporting or training on from it is the same as from the run's checkpoint.
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
        saved = source.card["config"]
        for key in _RESUME_KEYS:
            if saved.get(key) != getattr(self.config, key):
                raise ValueError(
                    f"{source.path} was trained with {key}={saved.get(key)!r}; this run cannot "
                    f"start from it. Received: {key}={getattr(self.config, key)!r}"
                )
        shapes = [tuple(w.shape) for w in self.state.weights]
        received = [tuple(w.shape) for w in source.weights]
        if received != shapes:
            raise ValueError(
                f"{source.path} holds weights of other shapes than this run's model {shapes}. "
                f"Received: shapes={received}"
            )
        self.restore()  # nothing to restore; writes config.json only now that the source fits
        for var, value in zip(self.state.weights, source.weights):
            var.assign(value)
        for var, value in zip(self.state.adam_v, source.adam_v):
            var.assign(value)
        self.state.adam_step.assign(source.adam_step)
        self.state.step.assign(source.meta_iterations)
        version = os.path.basename(os.path.normpath(source.path))
        with open(os.path.join(self.model_dir, WARM_START_FILE), "w") as f:
            # Name and version, not the path: the card must say the same wherever it was made.
            json.dump(
                {
                    "model": source.card.get("name"),
                    "version": int(version) if version.isdigit() else version,
                    "meta_iterations": source.meta_iterations,
                },
                f,
            )
        self.manager.save(checkpoint_number=source.meta_iterations)
        print(
            f"Started {self.model_dir} from {source.path} (step {source.meta_iterations}).",
            flush=True,
        )
        return source.meta_iterations

    def _check_config(self) -> None:
        path = os.path.join(self.model_dir, "config.json")
        current = {k: getattr(self.config, k) for k in _RESUME_KEYS}
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            for key in _RESUME_KEYS:
                if key in saved and saved[key] != current[key]:
                    raise ValueError(
                        f"{self.model_dir} holds a run with {key}={saved[key]!r}; resuming it "
                        "with a "
                        f"different value is not possible. Use another --model_dir. "
                        f"Received: {key}={current[key]!r}"
                    )
        else:
            os.makedirs(self.model_dir, exist_ok=True)
            with open(path, "w") as f:
                json.dump({**self.config.__dict__}, f, indent=2)

    def train(self) -> int:
        """Meta-trains up to `config.meta_iters`, resuming from the latest checkpoint.

        Returns the final step. A finished run is not retrained.
        """
        c = self.config
        start = self.restore()
        if start >= c.meta_iters:
            print(f"Already trained to step {start} of {c.meta_iters}: not retraining.", flush=True)
            return start
        if start:
            print(f"Resuming from checkpoint at step {start}.", flush=True)
        train_loop = tf.function(self._train_loop)
        writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "train"))
        boundaries = [c.checkpoint_interval, c.eval_interval or c.meta_iters, 100]
        bar = tqdm(
            total=c.meta_iters,
            initial=start,
            unit="it",
            desc="meta-train",
            file=sys.stdout,
            mininterval=2.0,
            dynamic_ncols=True,
        )
        step = start
        while step < c.meta_iters:
            stop = min(c.meta_iters, *[(step // b + 1) * b for b in boundaries])
            loss, eps = train_loop(tf.constant(stop - step))
            step = stop
            bar.update(stop - bar.n)
            bar.set_postfix(loss=f"{float(loss):.4f}", eps=f"{float(eps):.3f}", refresh=False)
            with writer.as_default(step=step):
                tf.summary.scalar("meta_training_loss", loss)
                tf.summary.scalar("meta_step_size", eps)
            if c.eval_interval and step % c.eval_interval == 0 and self.eval_tasks:
                self._periodic_eval(step, writer, bar)
            if step % c.checkpoint_interval == 0 or step == c.meta_iters:
                self.manager.save(checkpoint_number=step)
        bar.close()
        writer.flush()
        return step

    def _periodic_eval(self, step: int, writer, bar) -> None:
        c = self.config
        weights, state = self.state.read_weights(), self.state.optimizer_state()
        parts = []
        for name, tasks in self.eval_tasks.items():
            stream = stream_seed(c.seed, STREAM_INTERVAL) * 4 + len(parts)
            results = self.evaluator.evaluate(
                tasks, weights, state, c.eval_interval_samples, stream
            )
            with writer.as_default(step=step):
                for protocol, result in results.items():
                    tf.summary.scalar(f"eval/{name}/{protocol}", result.mean)
            parts.append(f"{name}: " + ", ".join(f"{p} {r}" for p, r in results.items()))
        bar.write(f"step {step}: " + "; ".join(parts))
