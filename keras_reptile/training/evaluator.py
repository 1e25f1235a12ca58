"""The paper's evaluation protocol: adapt on each new task's shots, score its held-out queries."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from keras_reptile import task_kind
from keras_reptile.algorithms import (
    InnerOptimizer,
    Settings,
    StackedModel,
    adapt_and_predict,
    group_sizes,
)
from keras_reptile.config import Protocol
from keras_reptile.data.streams import task_seeds
from keras_reptile.export import signatures as sig


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
        score = task_kind.by_metric(self.metric).format(self.mean, self.ci95)
        return f"{score} ({self.num_tasks} tasks)"


class Evaluator:
    """Driver-side: scores an initialization on freshly sampled tasks with one protocol.

    Each task starts from the same weights and the same carried inner-optimizer state (the
    official code backs them up and restores them around every test task). Every answer of the
    model's task kind is scored from one adaptation (a classifier's non-transductive answer
    predicts each query in a batch with the support set, its transductive one all queries in
    one batch). Tasks are adapted `chunk` at a time, as `groups` stacked networks side by side,
    by `adapt_and_predict`, the function every serving signature runs, compiled for the inputs
    a served graph has: example counts and settings known only at run time.

    Args:
        model: StackedModel.
        optimizer: InnerOptimizer.
        protocol: Protocol. Shots, inner steps, batch and learning rate.
        ways: int. Classes per task.
        chunk: int. Tasks per compiled call.
        groups: int. Each chunk runs as this many stacked networks side by side.
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
        self.ways, self.kind = ways, model.task_kind
        self.queries = self.kind.queries_per_class(protocol.eval_queries)
        self.chunk, self.groups = chunk, groups
        self._sample, self._adapt_and_predict = {}, {}

    def sample(self, tasks, seeds):
        """Samples the tasks of `seeds` `[T, 2]`; returns the stacked task and mini-batch seeds."""
        ways, shots, queries = self.ways, self.protocol.shots, self.queries

        def one(seed):
            sample_seed, batch_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            return (*tasks.sample(sample_seed, ways, shots, queries), batch_seed)

        examples, targets = tuple(tasks.input_shape), self.kind.target_shape
        dtype = self.kind.target_dtype
        signature = (
            tf.TensorSpec((ways * shots, *examples), tf.float32),
            tf.TensorSpec((ways * shots, *targets), dtype),
            tf.TensorSpec((ways * queries, *examples), tf.float32),
            tf.TensorSpec((ways * queries, *targets), dtype),
            tf.TensorSpec((2,), tf.int64),
        )
        return tf.map_fn(one, seeds, fn_output_signature=signature)

    def adapt_and_predict(
        self, weights, state, support_x, support_y, query_x, batch_seeds
    ) -> list[tf.Tensor]:
        """Outputs `[T, Q, outputs]` of `T` stacked tasks, one per answer of the task kind,
        after adapting `weights` on each task's support set with this protocol.

        Runs a function compiled as a served signature is: its inputs' example counts unknown
        (`signature_specs`' shapes with the task count fixed), the settings fed as tensors.
        TensorFlow's graph optimizer rewrites arithmetic differently when it knows shapes or
        values, so the evaluator's answers are the served ones only if it knows no more than a
        served graph does. Call it eagerly: traced inside another function, it would see the
        caller's shapes.
        """
        num_tasks = int(support_x.shape[0])
        if num_tasks not in self._adapt_and_predict:
            self._adapt_and_predict[num_tasks] = self._compile(weights, state, num_tasks)
        p = self.protocol
        settings = Settings.of(p.eval_iters, p.eval_batch, p.learning_rate)
        return self._adapt_and_predict[num_tasks](
            list(weights), state, support_x, support_y, query_x, settings, batch_seeds
        )

    def _compile(self, weights, state, num_tasks: int):
        """`_groups` compiled for `num_tasks` tasks with a served signature's input shapes."""
        spec = sig.signature_specs(self.model.input_shape, self.kind)[sig.ADAPT_AND_PREDICT_TASKS]
        keys = self.kind.keys

        def tasks_of(key):
            i = spec.input(key)
            return tf.TensorSpec((num_tasks, *i.shape[1:]), i.dtype)

        def like(t):
            return tf.TensorSpec(t.shape, t.dtype)

        signature = (
            [like(w) for w in weights],
            tf.nest.map_structure(like, state),
            tasks_of(keys.support),
            tasks_of(keys.targets),
            tasks_of(keys.query),
            Settings(*(tf.TensorSpec((), spec.input(k).dtype) for k in _SETTINGS_KEYS)),
            tf.TensorSpec((num_tasks, 2), tf.int64),
        )
        return tf.function(self._groups, input_signature=signature)

    def _groups(self, weights, state, support_x, support_y, query_x, settings, batch_seeds):
        """`adapt_and_predict` of the tasks in `groups` stacked networks side by side."""
        tensors = (support_x, support_y, query_x, batch_seeds)
        sizes = group_sizes(int(support_x.shape[0]), self.groups)
        answers = tuple(a.transductive for a in self.kind.answers)
        outputs = [
            adapt_and_predict(
                self.model, self.optimizer, weights, state, sx, sy, qx, settings, seeds, answers
            )
            for sx, sy, qx, seeds in zip(*(tf.split(t, sizes) for t in tensors))
        ]
        return [tf.concat(list(outs), axis=0) for outs in zip(*outputs)]

    def score(self, tasks, seeds, weights, state) -> tf.Tensor:
        """`[T, answers]` scores of the tasks of `seeds`, one column per answer of the task
        kind (accuracy non-transductive and transductive, or the query MSE)."""
        if id(tasks) not in self._sample:
            self._sample[id(tasks)] = tf.function(lambda s: self.sample(tasks, s))
        support_x, support_y, query_x, query_y, batch_seeds = self._sample[id(tasks)](seeds)
        outputs = self.adapt_and_predict(weights, state, support_x, support_y, query_x, batch_seeds)
        return tf.stack([self.kind.score(out, query_y) for out in outputs], axis=1)

    def task_scores(
        self, tasks, weights, state, num_tasks: int, stream_key: int, progress=None
    ) -> np.ndarray:
        """`[num_tasks, answers]` scores of tasks `0 .. num_tasks - 1` of the seed stream
        `stream_key` (as `score`): two evaluations on one stream are paired task by task."""
        weights = [tf.convert_to_tensor(w) for w in weights]
        scores = []
        for start in range(0, num_tasks, self.chunk):
            # Always a full chunk (one trace); the tasks past num_tasks are dropped.
            seeds = task_seeds(stream_key, tf.range(start, start + self.chunk))
            scores.append(self.score(tasks, seeds, weights, state).numpy())
            if progress is not None:
                progress(min(self.chunk, num_tasks - start))
        return np.concatenate(scores)[:num_tasks]

    def evaluate(
        self, tasks, weights, state, num_tasks: int, stream_key: int, progress=None
    ) -> dict[str, EvalResult]:
        """Scores tasks `0 .. num_tasks - 1` of the seed stream `stream_key`.

        Returns an `EvalResult` per answer of the task kind: `{"non_transductive": ...,
        "transductive": ...}` for classification, `{"mse": ...}` for regression.
        """
        scores = self.task_scores(tasks, weights, state, num_tasks, stream_key, progress)
        return self.results(scores)

    def results(self, scores: np.ndarray) -> dict[str, EvalResult]:
        """`task_scores` summarised per answer."""
        return {
            answer.name: EvalResult.from_scores(self.kind.metric, scores[:, column])
            for column, answer in enumerate(self.kind.answers)
        }


_SETTINGS_KEYS = (sig.INNER_STEPS, sig.INNER_BATCH_SIZE, sig.LEARNING_RATE)  # `Settings`' order
