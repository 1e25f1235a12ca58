"""Reptile / FOMAML updates against values computed by hand on y = w * x with squared error."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.algorithms import (
    InnerOptimizer,
    StackedModel,
    meta_step_size,
    meta_update,
    minibatch_indices,
    stack,
    stack_batches,
    task_batches,
    task_update,
)
from keras_reptile.models import build_model
from keras_reptile.task_kind import CLASSIFICATION, REGRESSION

SEED = tf.constant([1, 2], tf.int64)


def linear_model(w0=0.5):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    model.set_weights([np.array([[w0]], np.float32)])
    return StackedModel(model, REGRESSION)


def run_task(model, x, y, foml=False, **kwargs):
    """One task as a stack of one; returns its update without the task axis."""
    options = dict(inner_batch=2, inner_iters=2)
    options.update(kwargs)
    batches = stack_batches([task_batches(tf.constant(x), tf.constant(y), SEED, **options)])
    theta = stack(model.initial_weights(), 1)
    update = task_update(model, InnerOptimizer("sgd"), theta, (), batches, lr=0.1, foml=foml)
    return update._replace(delta=[d[0] for d in update.delta])


# Loss = mean((w x - y)^2), so dL/dw = mean(2 (w x - y) x).
# Task x = [1, 2], y = [1, 1], w0 = 0.5, SGD lr 0.1, each batch holds both examples:
#   step 1: residuals (-0.5, 0)    -> grad = (-1 + 0) / 2    = -0.5  -> w1 = 0.55
#   step 2: residuals (-0.45, 0.1) -> grad = (-0.9 + 0.4) / 2 = -0.25 -> w2 = 0.575
X = [[1.0], [2.0]]
Y = [[1.0], [1.0]]


def test_reptile_delta_by_hand():
    update = run_task(linear_model(), X, Y)
    assert float(update.delta[0][0, 0]) == pytest.approx(0.075, abs=1e-6)  # w2 - w0


def test_fomaml_delta_by_hand():
    update = run_task(linear_model(), X, Y, foml=True)
    assert float(update.delta[0][0, 0]) == pytest.approx(0.025, abs=1e-6)  # w2 - w1


def test_fomaml_tail_by_hand():
    # Two "classes" of two examples: x = [1, 2 | 3, 4]; the tail is the last shot of each: (2, 4).
    #   step 1 on (1, 3): residuals (-0.5, 0.5) -> grad = (-1 + 3) / 2 = 1   -> w1 = 0.4
    #   step 2 on (2, 4): residuals (-0.2, 0.6) -> grad = (-0.8 + 4.8) / 2 = 2 -> w2 = 0.2
    x = [[1.0], [2.0], [3.0], [4.0]]
    y = [[1.0]] * 4
    update = run_task(linear_model(), x, y, foml=True, foml_tail=1, ways=2)
    assert float(update.delta[0][0, 0]) == pytest.approx(-0.2, abs=1e-6)


def test_meta_update_and_annealing_by_hand():
    theta = [tf.constant([[0.5]])]
    new = meta_update(theta, [tf.constant([[0.15]])], 2, 0.5)
    assert float(new[0][0, 0]) == pytest.approx(0.5375)
    assert float(meta_step_size(0, 100, 1.0, 0.0)) == pytest.approx(1.0)
    assert float(meta_step_size(25, 100, 1.0, 0.0)) == pytest.approx(0.75)
    assert float(meta_step_size(100, 100, 0.1, 0.05)) == pytest.approx(0.05)


def test_inner_loop_never_writes_model_variables():
    model = StackedModel(build_model("omniglot_cnn", 3, (28, 28, 1)), CLASSIFICATION)
    before = [v.numpy().copy() for v in model.model.variables]
    x = tf.random.uniform([6, 28, 28, 1])
    y = tf.constant([0, 0, 1, 1, 2, 2])
    opt = InnerOptimizer("adam")
    theta = stack(model.initial_weights(), 1)
    batches = stack_batches([task_batches(x, y, SEED, inner_batch=3, inner_iters=3)])
    update = task_update(model, opt, theta, opt.init_state(theta), batches, lr=0.01)
    assert any(np.abs(d.numpy()).max() > 0 for d in update.delta)
    for v, b in zip(model.model.variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_minibatches_walk_through_shuffles_like_the_official_code():
    idx = minibatch_indices(SEED, 5, 3, 5).numpy()  # 15 draws = exactly 3 shuffles of 5 examples
    assert idx.shape == (5, 3)
    flat = idx.reshape(-1)
    for epoch in range(3):
        assert sorted(flat[5 * epoch : 5 * epoch + 5]) == [0, 1, 2, 3, 4]
    # A batch larger than the task straddles two shuffles.
    big = minibatch_indices(SEED, 2, 3, 2).numpy().reshape(-1)
    assert sorted(big[:2]) == [0, 1] and sorted(big[2:4]) == [0, 1]
