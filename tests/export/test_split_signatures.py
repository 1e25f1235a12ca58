"""`adapt` then `predict_adapted`: `adapt_and_predict` in two calls, with the same answers."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.algorithms import flatten_weights
from keras_reptile.config import Protocol
from keras_reptile.export import signatures as sig
from keras_reptile.export.saved_model import export_saved_model
from keras_reptile.task_kind import CLASSIFICATION, REGRESSION
from tests.export.helpers import (
    SINE_RECIPE,
    WAYS,
    LoadedWithDefaults,
    make_card,
    make_module,
    meta_graph,
    task,
)

SINE_PROTOCOL = Protocol(shots=5, eval_iters=8, eval_batch=5, learning_rate=0.02)


@pytest.fixture(scope="module")
def sine(tmp_path_factory):
    module = make_module(SINE_RECIPE, SINE_PROTOCOL)
    base = tmp_path_factory.mktemp("saved_models") / "sine"
    path = export_saved_model(module, str(base), make_card("sine", module, SINE_RECIPE))
    return dict(module=module, path=path)


def _sine_tasks(count, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5, 5, (count, 5, 1)).astype(np.float32)
    queries = rng.uniform(-5, 5, (count, 7, 1)).astype(np.float32)
    return x, np.sin(x), queries


def _assert_same_answers(split, together):
    assert set(split) == set(together)
    for key in together:
        np.testing.assert_array_equal(split[key], together[key], err_msg=key)


def test_signature_defs_declare_the_flat_weights(exported, sine):
    for path, module in ((exported["path"], exported["module"]), (sine["path"], sine["module"])):
        graph = meta_graph(path)
        size = module._model.num_weights
        assert size == sum(int(np.prod(w.shape)) for w in module.weights)
        shapes = {
            name: [d.size for d in graph.signature_def[name].outputs[sig.ADAPTED_WEIGHTS]
                   .tensor_shape.dim]
            for name in (sig.ADAPT, sig.ADAPT_TASKS)
        }  # fmt: skip
        assert shapes == {sig.ADAPT: [size], sig.ADAPT_TASKS: [-1, size]}
        predict = graph.signature_def[sig.PREDICT_ADAPTED].inputs[sig.ADAPTED_WEIGHTS]
        assert [d.size for d in predict.tensor_shape.dim] == [size]
        assert set(graph.signature_def[sig.ADAPT].outputs) == {sig.ADAPTED_WEIGHTS}
    classifier = meta_graph(exported["path"])
    assert set(classifier.signature_def[sig.PREDICT_ADAPTED].inputs) == {
        sig.ADAPTED_WEIGHTS, sig.SUPPORT_IMAGES, sig.QUERY_IMAGES, sig.TRANSDUCTIVE
    }  # fmt: skip
    assert set(classifier.signature_def[sig.PREDICT_ADAPTED].defaults) == {sig.TRANSDUCTIVE}


def test_adapt_with_no_steps_returns_the_initialization(exported):
    loaded = LoadedWithDefaults(exported["path"])
    support, labels, _ = task(5)
    flat = loaded.signatures[sig.ADAPT](
        support_images=support, support_labels=labels, inner_steps=tf.constant(0)
    )[sig.ADAPTED_WEIGHTS]
    expected = flatten_weights([w[None] for w in exported["weights"]])[0]
    np.testing.assert_array_equal(flat, expected)


@pytest.mark.parametrize("transductive", [False, True])
def test_classification_split_equals_adapt_and_predict(exported, transductive):
    loaded = LoadedWithDefaults(exported["path"])
    answer = dict(transductive=tf.constant(transductive))
    for seed in range(2):
        support, labels, query = task(20 + seed)
        adapted = loaded.signatures[sig.ADAPT](support_images=support, support_labels=labels)
        assert adapted[sig.ADAPTED_WEIGHTS].shape == (exported["module"]._model.num_weights,)
        split = loaded.signatures[sig.PREDICT_ADAPTED](
            adapted_weights=adapted[sig.ADAPTED_WEIGHTS],
            support_images=support,
            query_images=query,
            **answer,
        )
        together = loaded.signatures[sig.ADAPT_AND_PREDICT](
            support_images=support, support_labels=labels, query_images=query, **answer
        )
        _assert_same_answers(split, together)


@pytest.mark.parametrize("transductive", [False, True])
def test_classification_split_tasks_equal_adapt_and_predict_tasks(exported, transductive):
    loaded = LoadedWithDefaults(exported["path"])
    support, labels, query = (np.stack(parts) for parts in zip(*(task(30 + i) for i in range(3))))
    options = dict(inner_steps=tf.constant(4), learning_rate=tf.constant(0.001))
    answer = dict(transductive=tf.constant(transductive))
    adapted = loaded.signatures[sig.ADAPT_TASKS](
        support_images=support, support_labels=labels, **options
    )[sig.ADAPTED_WEIGHTS]
    assert adapted.shape == (3, exported["module"]._model.num_weights)
    split = loaded.signatures[sig.PREDICT_ADAPTED_TASKS](
        adapted_weights=adapted, support_images=support, query_images=query, **answer
    )
    together = loaded.signatures[sig.ADAPT_AND_PREDICT_TASKS](
        support_images=support, support_labels=labels, query_images=query, **options, **answer
    )
    assert split[sig.PROBABILITIES].shape == (3, WAYS, WAYS)
    _assert_same_answers(split, together)
    for t in range(3):  # each task's weights are those it gets alone
        alone = loaded.signatures[sig.ADAPT](
            support_images=support[t], support_labels=labels[t], **options
        )[sig.ADAPTED_WEIGHTS]
        np.testing.assert_array_equal(adapted[t], alone)


def test_regression_split_equals_adapt_and_predict(sine):
    loaded = LoadedWithDefaults(sine["path"])
    x, y, queries = _sine_tasks(3)
    adapted = loaded.signatures[sig.ADAPT_TASKS](support_inputs=x, support_targets=y)
    split = loaded.signatures[sig.PREDICT_ADAPTED_TASKS](
        adapted_weights=adapted[sig.ADAPTED_WEIGHTS], query_inputs=queries
    )
    together = loaded.signatures[sig.ADAPT_AND_PREDICT_TASKS](
        support_inputs=x, support_targets=y, query_inputs=queries
    )
    assert split[sig.PREDICTIONS].shape == (3, 7, 1)
    _assert_same_answers(split, together)
    for t in range(3):
        flat = loaded.signatures[sig.ADAPT](support_inputs=x[t], support_targets=y[t])
        np.testing.assert_array_equal(flat[sig.ADAPTED_WEIGHTS], adapted[sig.ADAPTED_WEIGHTS][t])
        split = loaded.signatures[sig.PREDICT_ADAPTED](
            adapted_weights=flat[sig.ADAPTED_WEIGHTS], query_inputs=queries[t]
        )
        together = loaded.signatures[sig.ADAPT_AND_PREDICT](
            support_inputs=x[t], support_targets=y[t], query_inputs=queries[t]
        )
        _assert_same_answers(split, together)


def _session_run(sess, meta, name, **arrays):
    """Runs signature `name` in a TF1 Session by its tensor names."""
    sdef = meta.signature_def[name]
    feeds = {sdef.inputs[k].name: v for k, v in arrays.items()}
    return sess.run({k: v.name for k, v in sdef.outputs.items()}, feeds)


def test_tf1_session_runs_the_split_signatures_by_tensor_names(exported, sine):
    """As tensorflow_model_server runs them: optional inputs left out, weights passed between
    two Session.run calls as the array the first returned."""
    for path, tasks in ((exported["path"], [task(40)]), (sine["path"], [_sine_tasks(1)])):
        with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
            run = functools.partial(_session_run, sess, meta)
            keys = (REGRESSION if path == sine["path"] else CLASSIFICATION).keys
            for support, targets, query in tasks:
                if path == sine["path"]:
                    support, targets, query = support[0], targets[0], query[0]
                adapted = run(sig.ADAPT, **{keys.support: support, keys.targets: targets})
                predict = {sig.ADAPTED_WEIGHTS: adapted[sig.ADAPTED_WEIGHTS], keys.query: query}
                if path != sine["path"]:
                    predict[keys.support] = support
                split = run(sig.PREDICT_ADAPTED, **predict)
                together = run(
                    sig.ADAPT_AND_PREDICT,
                    **{keys.support: support, keys.targets: targets, keys.query: query},
                )
                _assert_same_answers(split, together)
                multi = run(
                    sig.PREDICT_ADAPTED_TASKS,
                    **{k: v[None] for k, v in predict.items()},
                )
                _assert_same_answers({k: v[0] for k, v in multi.items()}, together)


def test_adapted_weights_of_other_tasks_fail_with_a_clear_message(exported):
    """(A wrong length is refused by the signature's static shape, and by the graph's check
    `adapted_weights must hold P values per task` where nothing checks shapes first.)"""
    loaded = LoadedWithDefaults(exported["path"])
    support, _, query = task()
    size = exported["module"]._model.num_weights
    with pytest.raises(tf.errors.InvalidArgumentError, match="query task counts differ"):
        loaded.signatures[sig.PREDICT_ADAPTED_TASKS](
            adapted_weights=tf.zeros([2, size]),
            support_images=support[None],
            query_images=query[None],
        )
