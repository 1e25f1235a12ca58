"""One meta-iteration: the per-replica task maths and the cross-replica update of the variables.

The driver (`trainer.MetaTrainer`) compiles `MetaStep.loop` once and calls it between
checkpoints, summaries and evaluations; nothing here does I/O.
"""

from __future__ import annotations

import tensorflow as tf

from keras_reptile.algorithms import (
    InnerOptimizer,
    group_sizes,
    meta_step_size,
    meta_update,
    stack,
    stack_batches,
    stack_state,
    task_batches,
    task_update,
)
from keras_reptile.config import Recipe
from keras_reptile.data.streams import meta_train_key
from keras_reptile.training.state import MetaState
from keras_reptile.training.strategy import tasks_per_replica


def carried_statistics(v_sum: list[tf.Tensor], recipe: Recipe) -> list[tf.Tensor]:
    """The inner Adam's second moments carried to the next meta-iteration.

    `v_sum` is the all-reduced replica contribution: the sum over every task's final statistics
    (parallel tasks: their average is carried) or the last task's (sequential: carried as is).
    """
    count = recipe.meta_batch if recipe.inner_adam == "parallel" else 1
    return [s / count for s in v_sum]


class MetaStep:
    """Reptile or FOMAML meta-iterations on a `MetaState` under a `tf.distribute` strategy.

    Args:
        recipe: Recipe. The run's training hyperparameters.
        model: StackedModel. The network as a function of stacked weights.
        optimizer: InnerOptimizer. The inner loop's optimizer.
        strategy: tf.distribute.Strategy. Splits the meta-batch's tasks across replicas.
        state: MetaState. The variables the step reads and updates.
        tasks: task source of the meta-training classes (None: the step cannot run).
    """

    def __init__(self, recipe, model, optimizer: InnerOptimizer, strategy, state: MetaState, tasks):
        self.recipe, self.model, self.optimizer = recipe, model, optimizer
        self.strategy, self.state, self.tasks = strategy, state, tasks
        self.tasks_per_replica = tasks_per_replica(strategy, recipe.meta_batch)
        if recipe.inner_adam == "sequential" and strategy.num_replicas_in_sync > 1:
            raise ValueError(
                "`inner_adam=sequential` runs a meta-batch's tasks one after another through one "
                "Adam, so they cannot be split across replicas; use one device or "
                "inner_adam=parallel. "
                f"Received: inner_adam='sequential', replicas={strategy.num_replicas_in_sync}"
            )
        self._train_key = meta_train_key(recipe.seed, recipe.replicate)

    def _task_batches(self, step, replica):
        """The mini-batches of this replica's tasks of meta-iteration `step`."""
        r = self.recipe
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
        return batches

    def replica_sums(self, step):
        """Replica context: trains this replica's share of the meta-batch; returns the
        all-reduced `(delta_sum, v_sum, loss_sum)` over the tasks.

        Parallel: the replica's tasks run as `task_groups` independent stacked networks, side by
        side on the inter-op thread pool, all from the same statistics. Sequential: each task a
        stack of one, in order, starting from the statistics the task before it ended with.
        """
        r = self.recipe
        ctx = tf.distribute.get_replica_context()
        replica = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
        theta = self.state.read_weights()
        start_state = self.state.optimizer_state()
        batches = self._task_batches(step, replica)
        sequential = r.inner_adam == "sequential"
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
        v_sum = vs[-1] if sequential else [tf.add_n(list(v)) for v in zip(*vs)]
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, (delta_sum, v_sum, tf.add_n(losses)))

    def __call__(self):
        """Cross-replica context: one meta-iteration. `strategy.run` the tasks, then update the
        variables once. Returns the mean task loss and the outer step size used."""
        r = self.recipe
        step = self.state.step.read_value()
        sums = self.strategy.run(self.replica_sums, args=(step,))
        delta_sum, v_sum, loss_sum = self.strategy.experimental_local_results(sums)[0]
        eps = meta_step_size(step, r.meta_iters, r.meta_step, r.meta_step_final)
        new_theta = meta_update(self.state.read_weights(), delta_sum, r.meta_batch, eps)
        for w, value in zip(self.state.weights, new_theta):
            w.assign(value)
        if self.optimizer.kind == "adam":
            for v, value in zip(self.state.adam_v, carried_statistics(v_sum, r)):
                v.assign(value)
            # Either order counts steps as the official code's sequential tasks do.
            self.state.adam_step.assign_add(float(r.meta_batch * r.inner_iters))
        self.state.step.assign_add(1)
        return loss_sum / r.meta_batch, eps

    def loop(self, num_steps):
        """Runs `num_steps` meta-iterations (the function the driver compiles once); returns the
        mean task loss and the last step size."""
        loss_total, eps = tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(num_steps):
            loss, eps = self()
            loss_total += loss
        return loss_total / tf.cast(num_steps, tf.float32), eps
