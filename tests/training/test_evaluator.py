"""The evaluator on models whose answers are known."""

import keras
import numpy as np
import pytest

from keras_reptile.algorithms import InnerOptimizer, StackedModel
from keras_reptile.config import Protocol
from keras_reptile.data.base import ClassImages
from keras_reptile.data.tasks import ClassificationTasks, SineTasks
from keras_reptile.task_kind import CLASSIFICATION, REGRESSION
from keras_reptile.training.evaluator import EvalResult, Evaluator


def one_hot_classes(num_classes=10, per_class=3):
    """Class k's images light pixel k only: a linear model separates them once adapted."""
    images = np.zeros([num_classes, per_class, 4, 4, 1], np.uint8)
    for k in range(num_classes):
        images[k, :, k // 4, k % 4, 0] = 1
    return ClassificationTasks(ClassImages(images, 1.0, [str(k) for k in range(num_classes)]))


def zero_linear_model(ways, input_shape):
    model = keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(ways, kernel_initializer="zeros", bias_initializer="zeros"),
        ]
    )
    return StackedModel(model, REGRESSION if len(input_shape) == 1 else CLASSIFICATION)


def evaluator(model, steps, ways=5, shots=1, lr=1.0, queries=1, **kwargs):
    protocol = Protocol(
        shots=shots, eval_iters=steps, eval_batch=5, learning_rate=lr, eval_queries=queries
    )
    return Evaluator(model, InnerOptimizer("sgd"), protocol, ways=ways, **{"chunk": 8, **kwargs})


def test_adapted_linear_model_is_always_right():
    model = zero_linear_model(5, (4, 4, 1))
    results = evaluator(model, steps=20).evaluate(
        one_hot_classes(), model.initial_weights(), (), 30, stream_key=1
    )
    for protocol in ("non_transductive", "transductive"):
        assert results[protocol].mean == 1.0 and results[protocol].num_tasks == 30


def test_unadapted_zero_model_scores_exactly_chance():
    # Equal logits: argmax says class 0 for every query, and exactly one query per task is class 0.
    model = zero_linear_model(5, (4, 4, 1))
    results = evaluator(model, steps=0).evaluate(
        one_hot_classes(), model.initial_weights(), (), 17, stream_key=1
    )
    assert results["non_transductive"].mean == pytest.approx(0.2)
    assert results["transductive"].ci95 == pytest.approx(0.0)


def test_zero_regression_model_scores_the_sine_variance():
    # Predicting 0: E[(A sin(x + p))^2] = E[A^2] / 2 = (5^3 - 0.1^3) / (3 * 4.9) / 2 = 4.2517
    # (x uniform over 10 / 2pi periods is close enough to a whole number of periods).
    model = zero_linear_model(1, (1,))
    ev = evaluator(model, steps=0, ways=1, shots=5, queries=200)
    result = ev.evaluate(SineTasks(), model.initial_weights(), (), 2000, stream_key=3)["mse"]
    assert abs(result.mean - 4.2517) < max(2 * result.ci95, 0.1)


def test_same_tasks_whatever_the_chunking_and_grouping_and_repeatable():
    model = zero_linear_model(5, (4, 4, 1))
    weights = model.initial_weights()
    runs = [
        evaluator(model, steps=1, lr=0.1, chunk=chunk, groups=groups).evaluate(
            one_hot_classes(), weights, (), 10, 5
        )
        for chunk, groups in [(3, 1), (7, 1), (7, 3), (3, 2)]
    ]
    assert all(run == runs[0] for run in runs)


def test_confidence_interval():
    result = EvalResult.from_scores("accuracy", np.array([1.0, 0.0, 1.0, 0.0]))
    assert result.mean == 0.5
    assert result.ci95 == pytest.approx(1.96 * np.std([1, 0, 1, 0], ddof=1) / 2)
    assert "50.00 +- 56.58 %" in str(result)
