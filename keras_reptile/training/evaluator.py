"""The paper's evaluation protocol: adapt on each new task's shots, score its held-out queries."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from keras_reptile.algorithms import (
    InnerOptimizer,
    StackedModel,
    adapt_from,
    group_sizes,
    predict_tasks,
)
from keras_reptile.config import Protocol
from keras_reptile.data.streams import task_seeds

NON_TRANSDUCTIVE, TRANSDUCTIVE, MSE = "non_transductive", "transductive", "mse"


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
    """Driver-side: scores an initialization on freshly sampled tasks with one protocol.

    Each task starts from the same weights and the same carried inner-optimizer state (the
    official code backs them up and restores them around every test task). Classification
    scores both answers from one adaptation: non-transductive (each query predicted in a batch
    with the support set) and transductive (all queries in one batch). Tasks are adapted `chunk`
    at a time, as `groups` stacked networks side by side.

    Args:
        model: StackedModel.
        optimizer: InnerOptimizer.
        protocol: Protocol. Shots, inner steps, batch and learning rate.
        ways: int. Classes per task; one query per class is held out.
        chunk: int. Tasks per compiled call.
        groups: int. Each chunk runs as this many stacked networks side by side (4 groups of 5
            tasks adapt 1.8x faster than one group of 20 on two cores with one intra-op thread).
    """

    def __init__(
        self,
        model: StackedModel,
        optimizer: InnerOptimizer,
        protocol: Protocol,
        *,
        ways: int,
        chunk: int = 20,
        groups: int = 4,
    ):
        self.model, self.optimizer, self.protocol = model, optimizer, protocol
        self.ways = ways
        self.queries = protocol.eval_queries if model.regression else 1
        self.chunk, self.groups = chunk, groups
        self._compiled = {}

    def sample(self, tasks, seeds):
        """Samples the tasks of `seeds` `[T, 2]`; returns the stacked task and mini-batch seeds."""
        ways, shots, queries = self.ways, self.protocol.shots, self.queries

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
        if self.model.regression:
            shapes[1], shapes[3] = (shots, 1), (queries, 1)
            dtypes[1] = dtypes[3] = tf.float32
        signature = tuple(tf.TensorSpec(s, d) for s, d in zip(shapes, dtypes))
        return tf.map_fn(one, seeds, fn_output_signature=signature)

    def adapt_and_predict(
        self, weights, state, support_x, support_y, query_x, batch_seeds, transductive=(False,)
    ) -> list[tf.Tensor]:
        """Outputs `[T, Q, outputs]` of `T` stacked tasks, one per flag in `transductive`, after
        adapting `weights` on each task's support set with this protocol."""
        p = self.protocol
        tensors = (support_x, support_y, query_x, batch_seeds)
        num_tasks = support_x.shape[0]
        groups = (
            zip(*(tf.split(t, group_sizes(num_tasks, self.groups)) for t in tensors))
            if num_tasks
            else [tensors]  # a task count unknown when tracing: one group
        )
        outputs = []
        for sx, sy, qx, seeds in groups:
            sx, sy, qx = (_as_served(t) for t in (sx, sy, qx))
            adapted = adapt_from(
                self.model,
                self.optimizer,
                weights,
                state,
                sx,
                sy,
                _as_served(tf.constant(p.learning_rate, tf.float32)),
                _as_served(tf.constant(p.eval_iters, tf.int32)),
                _as_served(tf.constant(p.eval_batch, tf.int32)),
                seeds,
            )
            outputs.append([predict_tasks(self.model, adapted, sx, qx, t) for t in transductive])
        return [tf.concat(list(outs), axis=0) for outs in zip(*outputs)]

    def score(self, tasks, seeds, weights, state) -> tf.Tensor:
        """`[T, 2]` scores of the tasks of `seeds`: accuracy non-transductive and transductive
        (or the query MSE twice, for regression)."""
        support_x, support_y, query_x, query_y, batch_seeds = self.sample(tasks, seeds)
        if self.model.regression:
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

    def task_scores(
        self, tasks, weights, state, num_tasks: int, stream_key: int, progress=None
    ) -> np.ndarray:
        """`[num_tasks, 2]` scores of tasks `0 .. num_tasks - 1` of the seed stream `stream_key`
        (as `score`): two evaluations on one stream are paired task by task."""
        if id(tasks) not in self._compiled:
            self._compiled[id(tasks)] = tf.function(lambda s, w, st: self.score(tasks, s, w, st))
        run = self._compiled[id(tasks)]
        weights = [tf.convert_to_tensor(w) for w in weights]
        scores = []
        for start in range(0, num_tasks, self.chunk):
            # Always a full chunk (one trace); the tasks past num_tasks are dropped.
            seeds = task_seeds(stream_key, tf.range(start, start + self.chunk))
            scores.append(run(seeds, weights, state).numpy())
            if progress is not None:
                progress(min(self.chunk, num_tasks - start))
        return np.concatenate(scores)[:num_tasks]

    def evaluate(
        self, tasks, weights, state, num_tasks: int, stream_key: int, progress=None
    ) -> dict[str, EvalResult]:
        """Scores tasks `0 .. num_tasks - 1` of the seed stream `stream_key`.

        Returns `{"non_transductive": EvalResult, "transductive": EvalResult}` for
        classification, `{"mse": EvalResult}` for regression.
        """
        scores = self.task_scores(tasks, weights, state, num_tasks, stream_key, progress)
        return self.results(scores)

    def results(self, scores: np.ndarray) -> dict[str, EvalResult]:
        """`task_scores` summarised per answer."""
        if self.model.regression:
            return {MSE: EvalResult.from_scores("mse", scores[:, 0])}
        return {
            NON_TRANSDUCTIVE: EvalResult.from_scores("accuracy", scores[:, 0]),
            TRANSDUCTIVE: EvalResult.from_scores("accuracy", scores[:, 1]),
        }


def _as_served(value) -> tf.Tensor:
    """`value` as a served graph sees it: a settings value known only at run time, an example
    count (axis 1) unknown.

    TensorFlow's graph optimizer rewrites arithmetic differently when it knows shapes or values,
    and the inner loop's Adam turns such rounding differences into visible ones. Hiding from the
    evaluator's graph what a served graph cannot know makes its answers bit-identical to
    `adapt_and_predict`'s (tests/export; on the trained zoo, tests/test_zoo.py).
    """
    value = tf.convert_to_tensor(value)
    shape = value.shape if value.shape.rank < 2 else [value.shape[0], None, *value.shape[2:]]
    return tf.compat.v1.placeholder_with_default(value, shape)
