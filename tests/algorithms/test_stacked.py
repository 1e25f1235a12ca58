"""The stacked implementation gives the plain per-task oracle's numbers, task by task."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.algorithms import (
    InnerOptimizer,
    StackedModel,
    adapt_tasks,
    batch_norm,
    flatten_weights,
    group_sizes,
    predict_tasks,
    stack,
    stack_batches,
    stack_state,
    task_batches,
    task_update,
    unflatten_weights,
)
from keras_reptile.models import build_model
from keras_reptile.task_kind import CLASSIFICATION, REGRESSION
from tests import oracle

T = 3


@pytest.fixture(autouse=True)
def fixed_initialization():
    # Deterministic initial weights: a random draw can leave a nearly constant channel whose
    # BatchNorm magnifies float rounding between the two (equally valid) paths.
    keras.utils.set_random_seed(1)


def both(name, outputs, shape, regression):
    """The stacked model and the oracle of one Keras model."""
    model = build_model(name, outputs, shape)
    return StackedModel(
        model, REGRESSION if regression else CLASSIFICATION
    ), oracle.FunctionalModel(model, regression)


def perturbed(model, num_tasks=T, seed=0):
    """Stacked weights: the initialization plus a different small perturbation per task."""
    gen = tf.random.Generator.from_seed(seed)
    return [
        tf.stack([w + 0.01 * gen.normal(w.shape) for _ in range(num_tasks)])
        for w in model.initial_weights()
    ]


def unstack(weights, t):
    return [w[t] for w in weights]


@pytest.mark.parametrize("num_tasks", [T, 1])
@pytest.mark.parametrize(
    "name, shape, outputs, regression",
    [
        ("omniglot_cnn", (28, 28, 1), 5, False),
        ("miniimagenet_cnn", (84, 84, 3), 5, False),
        ("sine_mlp", (1,), 1, True),
    ],
)
def test_forward_matches_each_task(name, shape, outputs, regression, num_tasks):
    model, plain = both(name, outputs, shape, regression)
    weights = perturbed(model, num_tasks)
    x = tf.random.uniform([num_tasks, 6, *shape])
    stacked = model(weights, x)
    for t in range(num_tasks):
        np.testing.assert_allclose(stacked[t], plain(unstack(weights, t), x[t]), atol=2e-5)


def test_a_stack_of_one_has_no_transpose():
    model, _ = both("omniglot_cnn", 5, (28, 28, 1), False)
    fn = tf.function(lambda w, x: model(w, x))
    weights = [tf.TensorSpec([1, *s]) for s in model.weight_shapes]
    graph = fn.get_concrete_function(weights, tf.TensorSpec([1, None, 28, 28, 1])).graph
    ops = {op.type for op in graph.get_operations()}
    assert "Transpose" not in ops and "Conv2D" in ops


def test_a_task_count_known_only_at_run_time_gives_the_same_outputs():
    model, _ = both("omniglot_cnn", 5, (28, 28, 1), False)
    weights = perturbed(model)
    x = tf.random.uniform([T, 6, 28, 28, 1])
    fn = tf.function(
        lambda w, x: model(w, x),
        input_signature=[
            [tf.TensorSpec([None, *s]) for s in model.weight_shapes],
            tf.TensorSpec([None, None, 28, 28, 1]),
        ],
    )
    np.testing.assert_allclose(fn(weights, x), model(weights, x), atol=1e-5)


def test_a_task_is_computed_the_same_whatever_it_is_stacked_with():
    # Each task's image layers run on kernels of its own: bit-identical to the task alone (the
    # served answer), not only close.
    model, _ = both("omniglot_cnn", 3, (28, 28, 1), False)
    opt = InnerOptimizer("adam")
    theta = model.initial_weights()
    state = opt.init_state(theta)._replace(step=tf.constant(40.0))
    x, y = classification_tasks()
    seeds = tf.constant([[5, t] for t in range(T)], tf.int64)
    run = tf.function(
        lambda w, s, sx, sy, seeds: adapt_tasks(model, opt, w, s, sx, sy, 0.001, 4, 5, seeds)
    )
    together = run(stack(theta, T), stack_state(state, T), x, y, seeds)
    for t in range(T):
        alone = run(
            stack(theta, 1), stack_state(state, 1), x[t : t + 1], y[t : t + 1], seeds[t : t + 1]
        )
        for a, b in zip(together, alone):
            np.testing.assert_array_equal(a[t], b[0])


def classification_tasks(ways=3, per_class=4, seed=1):
    x = tf.random.stateless_uniform([T, ways * per_class, 28, 28, 1], [seed, 0])
    y = tf.tile(tf.repeat(tf.range(ways), per_class)[None], [T, 1])
    return x, y


@pytest.mark.parametrize("foml, foml_tail", [(False, 0), (True, 0), (True, 1)])
def test_task_update_matches_each_task(foml, foml_tail):
    model, plain = both("omniglot_cnn", 3, (28, 28, 1), False)
    opt = InnerOptimizer("sgd")
    theta = model.initial_weights()
    x, y = classification_tasks()
    seeds = [tf.constant([7, t], tf.int64) for t in range(T)]
    options = dict(inner_batch=4, inner_iters=3, foml_tail=foml_tail, ways=3)
    batches = [task_batches(x[t], y[t], seeds[t], **options) for t in range(T)]
    fast = task_update(model, opt, stack(theta, T), (), stack_batches(batches), lr=0.05, foml=foml)
    loss = 0.0
    for t in range(T):
        delta, _, mean_loss = oracle.task_update(plain, opt, theta, (), batches[t], 0.05, foml)
        loss += float(mean_loss)
        for a, b in zip(fast.delta, delta):
            np.testing.assert_allclose(a[t], b, atol=1e-5)
    assert float(fast.mean_loss) == pytest.approx(loss, rel=1e-5)


def test_adam_task_update_carries_per_task_statistics():
    model, plain = both("sine_mlp", 1, (1,), True)
    opt = InnerOptimizer("adam")
    theta = model.initial_weights()
    state = opt.init_state(theta)._replace(step=tf.constant(40.0))
    state = state._replace(v=tuple(tf.fill(v.shape, 1e-3) for v in state.v))
    x = tf.random.stateless_uniform([T, 20, 1], [3, 0], -5, 5)
    y = tf.sin(x)
    batches = [
        task_batches(x[t], y[t], tf.constant([1, t], tf.int64), inner_batch=5, inner_iters=4)
        for t in range(T)
    ]
    fast = task_update(
        model, opt, stack(theta, T), stack_state(state, T), stack_batches(batches), lr=0.01
    )
    for t in range(T):
        delta, plain_state, _ = oracle.task_update(plain, opt, theta, state, batches[t], 0.01)
        for a, b in zip(fast.delta, delta):
            np.testing.assert_allclose(a[t], b, atol=1e-6)
        for a, b in zip(fast.state.v, plain_state.v):
            np.testing.assert_allclose(a[t], b, rtol=1e-5)
    assert float(fast.state.step) == 44.0


@pytest.mark.parametrize("num_tasks", [T, 1])
def test_adapt_and_predict_match_each_task(num_tasks):
    model, plain = both("omniglot_cnn", 3, (28, 28, 1), False)
    opt = InnerOptimizer("sgd")
    x, y = classification_tasks(per_class=3)
    support_x, support_y = x[:num_tasks, :6], y[:num_tasks, :6]
    query_x = x[:num_tasks, 6:]
    seeds = tf.constant([[5, t] for t in range(num_tasks)], tf.int64)
    start = perturbed(model, num_tasks)
    adapted = adapt_tasks(model, opt, start, (), support_x, support_y, 0.01, 2, 4, seeds)
    for transductive in (False, True):
        fast = predict_tasks(model, adapted, support_x, query_x, transductive)
        for t in range(num_tasks):
            plain_w = oracle.adapt(
                plain, opt, unstack(start, t), (), support_x[t], support_y[t], 0.01, 2, 4, seeds[t]
            )
            for a, b in zip(adapted, plain_w):
                np.testing.assert_allclose(a[t], b, atol=1e-5)
            expected = oracle.predict(plain, plain_w, support_x[t], query_x[t], transductive)
            np.testing.assert_allclose(fast[t], expected, atol=1e-4)


def chain(*layers, shape=(8, 8, 1)):
    return keras.Sequential([keras.Input(shape), *layers])


@pytest.mark.parametrize(
    "layers, what",
    [
        (lambda: [keras.layers.Conv2D(2, 3, dilation_rate=2)], "dilation_rate"),
        (lambda: [keras.layers.Conv2D(2, 3), keras.layers.Conv2D(2, 3, groups=2)], "groups"),
        (lambda: [keras.layers.Conv2D(2, 3, data_format="channels_first")], "data_format"),
        (lambda: [keras.layers.Conv2D(2, 3, activation="glu")], "activation"),
        (lambda: [keras.layers.BatchNormalization(axis=1)], "axis"),
        (lambda: [keras.layers.BatchNormalization(center=False)], "center=False"),
        (lambda: [keras.layers.Dropout(0.5)], "layer type"),
        (lambda: [keras.layers.Dense(3)], "Dense on an image"),
        (lambda: [keras.layers.Flatten(), keras.layers.BatchNormalization()], "after Flatten"),
    ],
)
def test_a_model_it_cannot_compute_is_refused_with_what_is_unsupported(layers, what):
    model = keras.Sequential([keras.Input((8, 8, 4)), *layers()])
    with pytest.raises(ValueError, match="cannot compute") as error:
        StackedModel(model, CLASSIFICATION)
    assert what in str(error.value) and "Received:" in str(error.value)


def test_an_input_that_is_neither_a_vector_nor_an_image_is_refused():
    model = keras.Sequential([keras.Input((4, 4)), keras.layers.Flatten(), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="Received: input_shape"):
        StackedModel(model, CLASSIFICATION)


def test_a_branching_model_is_refused():
    inputs = keras.Input((4,))
    a = keras.layers.Dense(3)(inputs)
    b = keras.layers.Dense(3)(inputs)
    model = keras.Model(inputs, keras.layers.Add()([a, b]))
    with pytest.raises(ValueError, match="Received:"):
        StackedModel(model, REGRESSION)


@pytest.mark.parametrize(
    "tasks, groups, sizes", [(5, 2, [2, 3]), (4, 2, [2, 2]), (2, 5, [1, 1]), (3, 1, [3])]
)
def test_group_sizes(tasks, groups, sizes):
    assert sorted(group_sizes(tasks, groups)) == sizes
    assert sum(group_sizes(tasks, groups)) == tasks


def test_flat_weights_hold_each_task_s_values_in_order_and_unflatten_exactly():
    model = StackedModel(build_model("sine_mlp", 1, (1,)), REGRESSION)
    weights = perturbed(model)
    flat = flatten_weights(weights)
    assert flat.shape == (T, model.num_weights) and model.num_weights == 4353
    for t in range(T):
        by_hand = np.concatenate([w[t].numpy().ravel() for w in weights])
        np.testing.assert_array_equal(flat[t], by_hand)
    for back, w in zip(unflatten_weights(flat, model.weight_shapes), weights):
        np.testing.assert_array_equal(back, w)
    with pytest.raises(ValueError, match="Expected 4353 weight values per task"):
        unflatten_weights(flat[:, 1:], model.weight_shapes)


def test_batch_norm_and_its_gradient_by_hand():
    # x = 0, 1, 2 in one channel: mean 1, var 2/3, xhat = (-1, 0, 1) * sqrt(3/2).
    x = tf.constant([0.0, 1.0, 2.0], shape=[3, 1, 1, 1])
    gamma, beta = tf.constant([2.0]), tf.constant([1.0])
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        y = batch_norm(x, gamma, beta, 0.0)
        loss = y[0, 0, 0, 0]  # dy = (1, 0, 0)
    dx, dgamma, dbeta = tape.gradient(loss, [x, gamma, beta])
    s6 = np.sqrt(6.0)
    np.testing.assert_allclose(y.numpy().ravel(), [1 - s6, 1, 1 + s6], rtol=1e-6)
    np.testing.assert_allclose(dgamma.numpy(), [-np.sqrt(1.5)], rtol=1e-6)
    np.testing.assert_allclose(dbeta.numpy(), [1.0], rtol=1e-6)
    np.testing.assert_allclose(dx.numpy().ravel(), np.array([1, -2, 1]) / s6, rtol=1e-5)


def test_batch_norm_gradient_matches_differentiating_the_moments():
    rng = np.random.default_rng(0)
    x = tf.constant(3 * rng.normal(size=(5, 7, 7, 8)) + 1, tf.float32)
    gamma = tf.constant(rng.normal(size=8), tf.float32)
    beta = tf.constant(rng.normal(size=8), tf.float32)
    weight = tf.constant(rng.normal(size=x.shape), tf.float32)

    def reference(x, gamma, beta):
        mean, var = tf.nn.moments(x, axes=[0, 1, 2])
        return tf.nn.batch_normalization(x, mean, var, beta, gamma, 1e-3)

    results = []
    for fn in (reference, lambda *a: batch_norm(*a, 1e-3)):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            y = fn(x, gamma, beta)
            loss = tf.reduce_sum(tf.sin(y) * weight)
        results.append([y, *tape.gradient(loss, [x, gamma, beta])])
    np.testing.assert_array_equal(results[0][0], results[1][0])  # the same forward ops
    for want, got in zip(results[0][1:], results[1][1:]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def small_nets():
    """Models of the layers small few-shot networks use, beyond the paper's."""
    images = [
        keras.Input((8, 8, 2)),
        keras.layers.Conv2D(4, 3, padding="same", activation="gelu"),
        keras.layers.LayerNormalization(),
        keras.layers.AveragePooling2D(2),
        # A non-linearity between LayerNorm and BatchNorm: else BatchNorm would cancel LayerNorm's
        # beta, whose gradient of pure float noise Adam amplifies (as a conv bias's, below).
        keras.layers.Activation("tanh"),
        # No bias before BatchNorm.
        keras.layers.Conv2D(4, 3, use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.LeakyReLU(0.2),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(8, activation="silu"),
        keras.layers.LayerNormalization(center=False),
        keras.layers.Dense(3),
    ]
    pooled_max = [
        keras.Input((6, 6, 1)),
        keras.layers.LayerNormalization(),
        keras.layers.Conv2D(3, 3, activation="elu"),
        keras.layers.ReLU(max_value=6.0),
        keras.layers.GlobalMaxPooling2D(),
        keras.layers.Dense(3),
    ]
    vectors = [
        keras.Input((3,)),
        keras.layers.Dense(16, activation="selu"),
        keras.layers.Activation("sigmoid"),
        keras.layers.LayerNormalization(scale=False),
        keras.layers.ELU(),
        keras.layers.Dense(1),
    ]
    return {"images": images, "pooled_max": pooled_max, "vectors": vectors}


@pytest.mark.parametrize("kind", ["images", "pooled_max", "vectors"])
def test_widened_layers_match_keras_task_by_task_and_grouped(kind):
    layers = small_nets()[kind]
    shape = tuple(layers[0].shape[1:])
    regression = kind == "vectors"
    keras_model = keras.Sequential(layers)
    model = StackedModel(keras_model, REGRESSION if regression else CLASSIFICATION)
    plain = oracle.FunctionalModel(keras_model, regression)
    weights = perturbed(model)
    x = tf.random.uniform([T, 6, *shape])
    stacked = model(weights, x)
    grouped = tf.function(
        lambda w, x: model(w, x),
        input_signature=[
            [tf.TensorSpec([None, *s]) for s in model.weight_shapes],
            tf.TensorSpec([None, None, *shape]),
        ],
    )(weights, x)
    for t in range(T):
        expected = plain(unstack(weights, t), x[t])
        np.testing.assert_allclose(stacked[t], expected, atol=2e-5)
        np.testing.assert_allclose(grouped[t], expected, atol=2e-5)
    # Adaptation differentiates them as the oracle does.
    opt = InnerOptimizer("adam")
    y = tf.random.uniform([T, 6, 1]) if regression else tf.constant([[0, 1, 2] * 2] * T)
    seeds = tf.constant([[5, t] for t in range(T)], tf.int64)
    state = stack_state(opt.init_state(model.initial_weights()), T)
    adapted = adapt_tasks(model, opt, weights, state, x, y, 0.01, 3, 4, seeds)
    for t in range(T):
        start = unstack(weights, t)
        want = oracle.adapt(
            plain, opt, start, opt.init_state(start), x[t], y[t], 0.01, 3, 4, seeds[t]
        )
        for a, b in zip(adapted, want):
            np.testing.assert_allclose(a[t], b, atol=1e-5)


def test_a_softmax_head_is_taken_as_logits():
    for head in (
        [keras.layers.Dense(3, activation="softmax")],
        [keras.layers.Dense(3), keras.layers.Softmax()],
    ):
        keras_model = chain(keras.layers.Flatten(), *head, shape=(4, 4, 1))
        model = StackedModel(keras_model, CLASSIFICATION)
        x = tf.random.uniform([1, 5, 4, 4, 1])
        logits = model(stack(model.initial_weights(), 1), x)[0]
        np.testing.assert_allclose(tf.nn.softmax(logits), keras_model(x[0]), atol=1e-6)


@pytest.mark.parametrize(
    "layers, what, hint",
    [
        (lambda: [keras.layers.Dropout(0.5)], "layer type", "remove it"),
        (lambda: [keras.layers.GaussianNoise(0.1)], "layer type", "random numbers"),
        (
            lambda: [
                keras.layers.Conv2D(2, 3, activation="softmax"),
                keras.layers.Flatten(),
                keras.layers.Dense(2),
            ],
            "activation",
            "last layer",
        ),  # fmt: skip
        (lambda: [keras.layers.LayerNormalization(axis=1)], "axis other than the last", ""),
        (lambda: [keras.layers.GlobalAveragePooling2D(keepdims=True)], "keepdims", "without"),
        (lambda: [keras.layers.Conv2DTranspose(2, 3)], "layer type", "Supported: a chain"),
    ],
)
def test_refusals_say_what_to_use_instead(layers, what, hint):
    with pytest.raises(ValueError, match="cannot compute") as error:
        StackedModel(keras.Sequential([keras.Input((8, 8, 4)), *layers()]), CLASSIFICATION)
    assert what in str(error.value) and hint in str(error.value)


def test_a_sequential_without_an_input_is_refused_with_what_to_add():
    with pytest.raises(ValueError, match=r"keras.Input\(shape\)"):
        StackedModel(keras.Sequential([keras.layers.Dense(3)]), REGRESSION)
