"""The paper's evaluation protocol: adapt on each new task's shots, score its held-out queries."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from keras_reptile.algorithms import (
    StackedModel,
    adapt_tasks,
    group_sizes,
    predict_tasks,
    stack,
    stack_state,
)

# Task streams: each purpose draws its tasks from its own seed stream.
STREAM_TRAIN, STREAM_EVAL_TRAIN, STREAM_EVAL_TEST, STREAM_INTERVAL, STREAM_PLOT = range(5)


def stream_seed(seed: int, stream: int) -> int:
    return seed * 16 + stream


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Mean score over tasks with a 95% normal-approximation confidence interval."""

    metric: str  # "accuracy" (fraction) or "mse"
    mean: float
    ci95: float
    num_tasks: int

    @classmethod
    def from_scores(cls, metric: str, scores: np.ndarray) -> EvalResult:
        scores = np.asarray(scores, np.float64)
        ci = 1.96 * scores.std(ddof=1) / math.sqrt(len(scores)) if len(scores) > 1 else float("nan")
        return cls(metric, float(scores.mean()), float(ci), len(scores))

    def __str__(self) -> str:
        if self.metric == "accuracy":
            return f"{100 * self.mean:.2f} +- {100 * self.ci95:.2f} % ({self.num_tasks} tasks)"
        return f"MSE {self.mean:.4f} +- {self.ci95:.4f} ({self.num_tasks} tasks)"


class Evaluator:
    """Driver-side: scores an initialization on freshly sampled tasks.

    Each task starts from the same weights and the same carried inner-optimizer state (the
    official code backs them up and restores them around every test task). Classification
    scores both protocols from one adaptation: non-transductive (each query predicted in a batch
    with the support set) and transductive (all queries in one batch). Tasks are adapted `chunk`
    at a time as one stacked network (`algorithms/stacked.py`).

    Args:
        fmodel: FunctionalModel.
        optimizer: InnerOptimizer.
        ways, shots: int. Task size; one query per class is held out.
        num_steps, batch_size, lr: the inner loop's evaluation settings.
        queries: int. Query points per regression task.
        chunk: int. Tasks per compiled call.
        groups: int. Each chunk runs as this many stacked networks side by side (4 groups of 5
            tasks adapt 1.8x faster than one group of 20 on two cores with one intra-op thread).
    """

    def __init__(
        self,
        fmodel,
        optimizer,
        *,
        ways,
        shots,
        num_steps,
        batch_size,
        lr,
        queries=1,
        chunk=20,
        groups=4,
    ):
        self.fmodel, self.optimizer = fmodel, optimizer
        self.stacked = StackedModel(fmodel)
        self.ways, self.shots = ways, shots
        self.queries = queries if fmodel.regression else 1
        self.num_steps, self.batch_size, self.lr = num_steps, batch_size, lr
        self.chunk, self.groups = chunk, groups
        self._compiled = {}

    def sample(self, tasks, seeds):
        """Samples the tasks of `seeds` `[T, 2]`; returns the stacked task and mini-batch seeds."""
        ways, shots, queries = self.ways, self.shots, self.queries

        def one(seed):
            sample_seed, batch_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            return (*tasks.sample(sample_seed, ways, shots, queries), batch_seed)

        shapes = [
            (ways * shots, *tasks.input_shape),
            (ways * shots,),
            (ways * queries, *tasks.input_shape),
            (ways * queries,),
            (2,),
        ]
        dtypes = [tf.float32, tf.int32, tf.float32, tf.int32, tf.int64]
        if self.fmodel.regression:
            shapes[1], shapes[3], dtypes[1], dtypes[3] = (
                (shots, 1),
                (queries, 1),
                tf.float32,
                tf.float32,
            )
        signature = tuple(tf.TensorSpec(s, d) for s, d in zip(shapes, dtypes))
        return tf.map_fn(one, seeds, fn_output_signature=signature)

    def adapt_and_predict(
        self, weights, state, support_x, support_y, query_x, batch_seeds, protocols=(False,)
    ) -> list[tf.Tensor]:
        """Outputs `[T, Q, outputs]` for `T` stacked tasks, one per protocol in `protocols`
        (`transductive` flags), after adapting `weights` on each task's support set."""
        tensors = (support_x, support_y, query_x, batch_seeds)
        num_tasks = support_x.shape[0]
        groups = (
            zip(*(tf.split(t, group_sizes(num_tasks, self.groups)) for t in tensors))
            if num_tasks
            else [tensors]  # a task count unknown when tracing: one group
        )
        outputs = []
        for sx, sy, qx, seeds in groups:
            size = sx.shape[0] or tf.shape(sx)[0]
            adapted = adapt_tasks(
                self.stacked,
                self.optimizer,
                stack(weights, size),
                stack_state(state, size),
                sx,
                sy,
                self.lr,
                self.num_steps,
                self.batch_size,
                seeds,
            )
            outputs.append([predict_tasks(self.stacked, adapted, sx, qx, t) for t in protocols])
        return [tf.concat(list(outs), axis=0) for outs in zip(*outputs)]

    def score(self, tasks, seeds, weights, state) -> tf.Tensor:
        """`[T, 2]` scores of the tasks of `seeds`: accuracy non-transductive and transductive
        (or the query MSE twice, for regression)."""
        support_x, support_y, query_x, query_y, batch_seeds = self.sample(tasks, seeds)
        if self.fmodel.regression:
            (out,) = self.adapt_and_predict(
                weights, state, support_x, support_y, query_x, batch_seeds, (True,)
            )
            mse = tf.reduce_mean(tf.square(out - query_y), axis=[1, 2])
            return tf.stack([mse, mse], axis=1)
        outputs = self.adapt_and_predict(
            weights, state, support_x, support_y, query_x, batch_seeds, (False, True)
        )
        scores = []
        for logits in outputs:
            correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), query_y)
            scores.append(tf.reduce_mean(tf.cast(correct, tf.float32), axis=1))
        return tf.stack(scores, axis=1)

    def evaluate(
        self, tasks, weights, state, num_tasks: int, stream: int, progress=None
    ) -> dict[str, EvalResult]:
        """Scores `num_tasks` tasks of `tasks` from seed stream `stream`.

        Returns `{"non_transductive": EvalResult, "transductive": EvalResult}` for
        classification, `{"mse": EvalResult}` for regression.
        """
        if id(tasks) not in self._compiled:
            self._compiled[id(tasks)] = tf.function(lambda s, w, st: self.score(tasks, s, w, st))
        run = self._compiled[id(tasks)]
        weights = [tf.convert_to_tensor(w) for w in weights]
        scores = []
        for start in range(0, num_tasks, self.chunk):
            # Always a full chunk (one trace); the tasks past num_tasks are dropped.
            index = tf.range(start, start + self.chunk, dtype=tf.int64)
            seeds = tf.stack([tf.fill([self.chunk], tf.constant(stream, tf.int64)), index], axis=1)
            scores.append(run(seeds, weights, state).numpy())
            if progress is not None:
                progress(min(self.chunk, num_tasks - start))
        scores = np.concatenate(scores)[:num_tasks]
        if self.fmodel.regression:
            return {"mse": EvalResult.from_scores("mse", scores[:, 0])}
        return {
            "non_transductive": EvalResult.from_scores("accuracy", scores[:, 0]),
            "transductive": EvalResult.from_scores("accuracy", scores[:, 1]),
        }
