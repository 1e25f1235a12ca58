"""The stacked fast path gives the plain path's numbers, task by task."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.algorithms import (
    FunctionalModel,
    InnerOptimizer,
    StackedModel,
    adapt,
    adapt_tasks,
    group_sizes,
    predict_queries,
    predict_tasks,
    stack,
    stack_batches,
    stack_state,
    task_batches,
    task_update,
)
from keras_reptile.models import build_model

T = 3


@pytest.fixture(autouse=True)
def fixed_initialization():
    # Deterministic initial weights: a random draw can leave a nearly constant channel whose
    # BatchNorm magnifies float rounding between the two (equally valid) paths.
    keras.utils.set_random_seed(1)


def perturbed(fmodel, num_tasks=T, seed=0):
    """Stacked weights: the initialization plus a different small perturbation per task."""
    gen = tf.random.Generator.from_seed(seed)
    return [
        tf.stack([w + 0.01 * gen.normal(w.shape) for _ in range(num_tasks)])
        for w in fmodel.initial_weights()
    ]


def unstack(weights, t):
    return [w[t] for w in weights]


@pytest.mark.parametrize(
    "name, shape, outputs, regression",
    [
        ("omniglot_cnn", (28, 28, 1), 5, False),
        ("miniimagenet_cnn", (84, 84, 3), 5, False),
        ("sine_mlp", (1,), 1, True),
    ],
)
def test_forward_matches_each_task(name, shape, outputs, regression):
    fmodel = FunctionalModel(build_model(name, outputs, shape), regression)
    weights = perturbed(fmodel)
    x = tf.random.uniform([T, 6, *shape])
    stacked = StackedModel(fmodel)(weights, x)
    for t in range(T):
        np.testing.assert_allclose(stacked[t], fmodel(unstack(weights, t), x[t]), atol=2e-5)


def classification_tasks(ways=3, per_class=4, seed=1):
    x = tf.random.stateless_uniform([T, ways * per_class, 28, 28, 1], [seed, 0])
    y = tf.tile(tf.repeat(tf.range(ways), per_class)[None], [T, 1])
    return x, y


@pytest.mark.parametrize("foml, foml_tail", [(False, 0), (True, 0), (True, 1)])
def test_task_update_matches_each_task(foml, foml_tail):
    fmodel = FunctionalModel(build_model("omniglot_cnn", 3, (28, 28, 1)), regression=False)
    opt = InnerOptimizer("sgd")
    theta = fmodel.initial_weights()
    x, y = classification_tasks()
    seeds = [tf.constant([7, t], tf.int64) for t in range(T)]
    options = dict(inner_batch=4, inner_iters=3, foml_tail=foml_tail, ways=3)
    batches = [task_batches(x[t], y[t], seeds[t], **options) for t in range(T)]
    fast = task_update(
        StackedModel(fmodel), opt, stack(theta, T), (), stack_batches(batches), lr=0.05, foml=foml
    )
    loss = 0.0
    for t in range(T):
        plain = task_update(fmodel, opt, theta, (), batches[t], lr=0.05, foml=foml)
        loss += float(plain.mean_loss)
        for a, b in zip(fast.delta, plain.delta):
            np.testing.assert_allclose(a[t], b, atol=1e-5)
    assert float(fast.mean_loss) == pytest.approx(loss, rel=1e-5)


def test_adam_task_update_carries_per_task_statistics():
    fmodel = FunctionalModel(build_model("sine_mlp", 1, (1,)), regression=True)
    opt = InnerOptimizer("adam")
    theta = fmodel.initial_weights()
    state = opt.init_state(theta)._replace(step=tf.constant(40.0))
    state = state._replace(v=tuple(tf.fill(v.shape, 1e-3) for v in state.v))
    x = tf.random.stateless_uniform([T, 20, 1], [3, 0], -5, 5)
    y = tf.sin(x)
    batches = [
        task_batches(x[t], y[t], tf.constant([1, t], tf.int64), inner_batch=5, inner_iters=4)
        for t in range(T)
    ]
    fast = task_update(
        StackedModel(fmodel),
        opt,
        stack(theta, T),
        stack_state(state, T),
        stack_batches(batches),
        lr=0.01,
    )
    for t in range(T):
        plain = task_update(fmodel, opt, theta, state, batches[t], lr=0.01)
        for a, b in zip(fast.delta, plain.delta):
            np.testing.assert_allclose(a[t], b, atol=1e-6)
        for a, b in zip(fast.state.v, plain.state.v):
            np.testing.assert_allclose(a[t], b, rtol=1e-5)
    assert float(fast.state.step) == 44.0


def test_adapt_and_predict_match_each_task():
    fmodel = FunctionalModel(build_model("omniglot_cnn", 3, (28, 28, 1)), regression=False)
    model = StackedModel(fmodel)
    opt = InnerOptimizer("sgd")
    x, y = classification_tasks(per_class=3)
    support_x, support_y = x[:, :6], y[:, :6]
    query_x = x[:, 6:]
    seeds = tf.constant([[5, t] for t in range(T)], tf.int64)
    adapted = adapt_tasks(
        model, opt, perturbed(fmodel), (), support_x, support_y, 0.01, 2, 4, seeds
    )
    for transductive in (False, True):
        fast = predict_tasks(model, adapted, support_x, query_x, transductive)
        for t in range(T):
            start = unstack(perturbed(fmodel), t)
            plain_w = adapt(
                fmodel, opt, start, (), support_x[t], support_y[t], 0.01, 2, 4, seeds[t]
            )
            for a, b in zip(adapted, plain_w):
                np.testing.assert_allclose(a[t], b, atol=1e-5)
            plain = predict_queries(fmodel, plain_w, support_x[t], query_x[t], transductive)
            np.testing.assert_allclose(fast[t], plain, atol=1e-4)


@pytest.mark.parametrize(
    "tasks, groups, sizes", [(5, 2, [2, 3]), (4, 2, [2, 2]), (2, 5, [1, 1]), (3, 1, [3])]
)
def test_group_sizes(tasks, groups, sizes):
    assert sorted(group_sizes(tasks, groups)) == sizes
    assert sum(group_sizes(tasks, groups)) == tasks
