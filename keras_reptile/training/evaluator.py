"""The paper's evaluation protocol: adapt on each new task's shots, score its held-out queries."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from keras_reptile.algorithms import adapt, predict_queries

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
    with the support set) and transductive (all queries in one batch).

    Args:
        fmodel: FunctionalModel.
        optimizer: InnerOptimizer.
        ways, shots: int. Task size; one query per class is held out.
        num_steps, batch_size, lr: the inner loop's evaluation settings.
        queries: int. Query points per regression task.
        chunk: int. Tasks per compiled call (run concurrently by `tf.map_fn`).
    """

    def __init__(
        self, fmodel, optimizer, *, ways, shots, num_steps, batch_size, lr, queries=1, chunk=100
    ):
        self.fmodel, self.optimizer = fmodel, optimizer
        self.ways, self.shots, self.queries = ways, shots, queries
        self.num_steps, self.batch_size, self.lr = num_steps, batch_size, lr
        self.chunk = chunk
        self._compiled = {}

    def _score_task(self, tasks, seed, weights, state):
        sample_seed, batch_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        queries = self.queries if self.fmodel.regression else 1
        task = tasks.sample(sample_seed, self.ways, self.shots, queries)
        adapted = adapt(
            self.fmodel,
            self.optimizer,
            weights,
            state,
            task.support_x,
            task.support_y,
            self.lr,
            self.num_steps,
            self.batch_size,
            batch_seed,
        )
        if self.fmodel.regression:
            out = predict_queries(self.fmodel, adapted, task.support_x, task.query_x, True)
            mse = tf.reduce_mean(tf.square(out - task.query_y))
            return tf.stack([mse, mse])
        scores = []
        for transductive in (False, True):
            logits = predict_queries(
                self.fmodel, adapted, task.support_x, task.query_x, transductive
            )
            correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), task.query_y)
            scores.append(tf.reduce_mean(tf.cast(correct, tf.float32)))
        return tf.stack(scores)

    def _chunk_fn(self, tasks):
        if id(tasks) not in self._compiled:

            @tf.function(reduce_retracing=True)
            def run(seeds, weights, state):
                return tf.map_fn(
                    lambda s: self._score_task(tasks, s, weights, state),
                    seeds,
                    fn_output_signature=tf.TensorSpec([2], tf.float32),
                    parallel_iterations=4,
                )

            self._compiled[id(tasks)] = run
        return self._compiled[id(tasks)]

    def evaluate(
        self, tasks, weights, state, num_tasks: int, stream: int, progress=None
    ) -> dict[str, EvalResult]:
        """Scores `num_tasks` tasks of `tasks` from seed stream `stream`.

        Returns `{"transductive": EvalResult, "non_transductive": EvalResult}` for classification,
        `{"mse": EvalResult}` for regression.
        """
        run = self._chunk_fn(tasks)
        weights = [tf.convert_to_tensor(w) for w in weights]
        scores = []
        for start in range(0, num_tasks, self.chunk):
            stop = min(start + self.chunk, num_tasks)
            index = tf.range(start, stop, dtype=tf.int64)
            seeds = tf.stack(
                [tf.fill([stop - start], tf.constant(stream, tf.int64)), index], axis=1
            )
            scores.append(run(seeds, weights, state).numpy())
            if progress is not None:
                progress(stop - start)
        scores = np.concatenate(scores)
        if self.fmodel.regression:
            return {"mse": EvalResult.from_scores("mse", scores[:, 0])}
        return {
            "non_transductive": EvalResult.from_scores("accuracy", scores[:, 0]),
            "transductive": EvalResult.from_scores("accuracy", scores[:, 1]),
        }
