import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.algorithms import predict_tasks
from keras_reptile.config import Recipe
from keras_reptile.run import build_stacked_model

inner_loop = sys.modules["keras_reptile.algorithms.inner_loop"]


def _all_pairs_at_once(model, weights, support_x, query_x):
    """The query pass as one stack of every (task, query) network: the chunked pass's oracle."""
    num_tasks, num_queries = tf.shape(query_x)[0], tf.shape(query_x)[1]
    pair_weights = [tf.repeat(w, num_queries, axis=0) for w in weights]
    support = tf.repeat(support_x, num_queries, axis=0)
    queries = tf.reshape(query_x, [-1, 1, *query_x.shape[2:]])
    outputs = model(pair_weights, tf.concat([support, queries], axis=1))[:, -1]
    return tf.reshape(outputs, [num_tasks, num_queries, -1])


@pytest.mark.parametrize("tasks, support, queries, chunk_floats", [
    (1, 5, 5, 2**25), (3, 10, 9, 1), (2, 5, 7, 3 * 6 * 51141), (1, 50, 50, 2**22),
    (1, 25, 1, 2**25), (2, 25, 1, 2**25),
])  # fmt: skip
def test_the_chunked_query_pass_equals_all_pairs_at_once(
    monkeypatch, tasks, support, queries, chunk_floats
):
    monkeypatch.setattr(inner_loop, "QUERY_PASS_CHUNK_FLOATS", chunk_floats)
    model = build_stacked_model(
        Recipe(dataset="omniglot", model="omniglot_cnn", classes=5), (28, 28, 1)
    )
    rng = np.random.default_rng(0)
    weights = [
        tf.constant(w.numpy() + rng.normal(0, 0.01, (tasks, *w.shape)).astype(np.float32))
        for w in model.initial_weights()
    ]
    shape = [tf.TensorSpec([None, *w.shape[1:]]) for w in weights]
    images = tf.TensorSpec([None, None, 28, 28, 1])

    def served(fn):  # shapes unknown when tracing, as in a signature
        return tf.function(fn, input_signature=[shape, images, images])

    s = tf.constant((rng.random((tasks, support, 28, 28, 1)) > 0.5).astype(np.float32))
    q = tf.constant((rng.random((tasks, queries, 28, 28, 1)) > 0.5).astype(np.float32))
    chunked = served(lambda w, s, q: predict_tasks(model, w, s, q, False))(weights, s, q)
    if tasks * queries == 1:  # a lone pair runs as two networks (one takes another kernel)
        pair = served(lambda w, s, q: _all_pairs_at_once(model, w, s, tf.concat([q, q], 1)))
        expected = pair(weights, s, q)[:, :1]
    else:
        expected = served(lambda w, s, q: _all_pairs_at_once(model, w, s, q))(weights, s, q)
    assert inner_loop.query_pass_chunk(model.cost.activation_floats, support).numpy() >= 2
    np.testing.assert_array_equal(chunked.numpy(), expected.numpy())
