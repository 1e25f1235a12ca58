"""The SavedModel contract: what TensorFlow Serving needs, checked without it."""

import dataclasses
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.algorithms import AdamState
from keras_reptile.config import Protocol
from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from keras_reptile.export.saved_model import export_saved_model, next_version
from keras_reptile.task_kind import CLASSIFICATION
from keras_reptile.training.evaluator import Evaluator
from keras_reptile.training.trainer import inner_optimizer
from tests.export.helpers import (
    BATCH,
    LR,
    OMNI_RECIPE,
    PROTOCOL,
    PYTHON_OPS,
    RESULT,
    SINE_RECIPE,
    STEPS,
    WAYS,
    LoadedWithDefaults,
    make_card,
    make_module,
    meta_graph,
    saved_model_ops,
    task,
)


def test_layout_card_and_warmup(exported):
    assert exported["path"].endswith("/1")
    extra = f"{exported['path']}/assets.extra"
    card = ModelCard.read(exported["path"])
    assert card.ways == WAYS and card.package_version and card.results == (RESULT,)
    assert card == dataclasses.replace(exported["card"], package_version=card.package_version)
    assert json.loads(open(f"{extra}/{sig.CARD_FILE}").read())["ways"] == WAYS
    from tensorflow_serving.apis import prediction_log_pb2

    records = list(tf.data.TFRecordDataset(f"{extra}/{sig.WARMUP_FILE}").as_numpy_iterator())
    names = set()
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        names.add(log.predict_log.request.model_spec.signature_name)
    assert names == set(sig.SIGNATURES)
    assert next_version(str(exported["base"])) == 2


def test_signature_defs_follow_the_contract(exported):
    graph = meta_graph(exported["path"])
    specs = sig.signature_specs((28, 28, 1), CLASSIFICATION)
    for name, spec in specs.items():
        sdef = graph.signature_def[name]
        assert set(sdef.inputs) == {i.key for i in spec.inputs}
        assert set(sdef.outputs) == set(spec.outputs)
        assert set(sdef.defaults) == {i.key for i in spec.inputs if i.optional}
        for inp in spec.inputs:
            assert sdef.inputs[inp.key].dtype == inp.dtype.as_datatype_enum
    defaults = graph.signature_def[sig.ADAPT_AND_PREDICT].defaults
    assert defaults[sig.INNER_STEPS].int_val == [STEPS]
    assert defaults[sig.TRANSDUCTIVE].bool_val == [False]


def test_no_python_ops(exported):
    ops = saved_model_ops(exported["path"])
    assert not ops & PYTHON_OPS
    assert "Conv2D" in ops and ops & {"While", "StatelessWhile"}  # model and in-graph inner loop


def test_tf1_session_runs_every_signature_by_tensor_names(exported):
    support, labels, query = task()
    loaded = LoadedWithDefaults(exported["path"])
    expected = loaded.signatures[sig.ADAPT_AND_PREDICT](
        support_images=support,
        support_labels=labels,
        query_images=query,
        inner_steps=tf.constant(STEPS),
        learning_rate=tf.constant(LR),
        transductive=tf.constant(False),
    )
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], exported["path"])
        sdef = meta.signature_def[sig.ADAPT_AND_PREDICT]
        # Optional inputs left out, as a TF Serving request may: their defaults apply.
        feeds = {
            sdef.inputs[sig.SUPPORT_IMAGES].name: support,
            sdef.inputs[sig.SUPPORT_LABELS].name: labels,
            sdef.inputs[sig.QUERY_IMAGES].name: query,
        }
        fetches = {k: v.name for k, v in sdef.outputs.items()}
        out = sess.run(fetches, feeds)
        np.testing.assert_allclose(out[sig.LOGITS], expected[sig.LOGITS], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out[sig.CLASSES], expected[sig.CLASSES])
        sdef = meta.signature_def[sig.SERVING_DEFAULT]
        out = sess.run(
            {k: v.name for k, v in sdef.outputs.items()}, {sdef.inputs[sig.IMAGES].name: query}
        )
        assert out[sig.PROBABILITIES].shape == (WAYS, WAYS)


def test_saved_model_cli_runs_it(exported, tmp_path):
    np.save(tmp_path / "images.npy", np.ones((3, 28, 28, 1), np.float32))
    result = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "saved_model_cli"),
            "run",
            "--dir",
            exported["path"],
            "--tag_set",
            "serve",
            "--signature_def",
            sig.SERVING_DEFAULT,
            "--inputs",
            f"{sig.IMAGES}={tmp_path / 'images.npy'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "probabilities" in result.stdout


def test_reloaded_predictions_equal_the_in_memory_model(exported):
    support, labels, query = task(1)
    loaded = LoadedWithDefaults(exported["path"])
    mem = exported["module"].serving_signatures
    a = loaded.signatures[sig.SERVING_DEFAULT](images=query)
    b = mem[sig.SERVING_DEFAULT](images=query)
    np.testing.assert_array_equal(a[sig.LOGITS], b[sig.LOGITS])
    for transductive in (False, True):
        args = dict(
            support_images=support,
            support_labels=labels,
            query_images=query,
            inner_steps=tf.constant(STEPS),
            learning_rate=tf.constant(LR),
            transductive=tf.constant(transductive),
        )
        np.testing.assert_allclose(
            loaded.signatures[sig.ADAPT_AND_PREDICT](**args)[sig.LOGITS],
            mem[sig.ADAPT_AND_PREDICT](**args)[sig.LOGITS],
            rtol=1e-6,
            atol=1e-6,
        )


def test_adapt_and_predict_equals_the_evaluator(exported):
    loaded = LoadedWithDefaults(exported["path"])
    module = exported["module"]
    evaluator = Evaluator(module._model, inner_optimizer(OMNI_RECIPE), PROTOCOL, ways=WAYS)
    state = AdamState(tf.constant(700.0), tuple(tf.constant(v) for v in exported["adam_v"]))
    tasks = [task(i) for i in range(3)]
    support, labels, query = (np.stack(parts) for parts in zip(*tasks))
    seeds = tf.constant([sig.SERVING_BATCH_SEED] * 3, tf.int64)
    weights = [tf.constant(w) for w in exported["weights"]]
    expected = evaluator.adapt_and_predict(weights, state, support, labels, query, seeds)
    for transductive, logits in zip((False, True), expected):
        for t, (s, y, q) in enumerate(tasks):
            served = loaded.signatures[sig.ADAPT_AND_PREDICT](
                support_images=s,
                support_labels=y,
                query_images=q,
                transductive=tf.constant(transductive),
            )
            probabilities = tf.nn.softmax(logits[t])
            np.testing.assert_array_equal(served[sig.PROBABILITIES], probabilities)
            np.testing.assert_array_equal(served[sig.CLASSES], np.argmax(logits[t], -1))


@pytest.mark.parametrize("transductive", [False, True])
def test_each_task_of_adapt_and_predict_tasks_equals_adapt_and_predict(exported, transductive):
    loaded = LoadedWithDefaults(exported["path"])
    tasks = [task(10 + i) for i in range(4)]
    support, labels, query = (np.stack(parts) for parts in zip(*tasks))
    # Each task adapts as it would alone: the same bits, not only close ones.
    options = dict(
        transductive=tf.constant(transductive),
        inner_steps=tf.constant(4),
        learning_rate=tf.constant(0.001),
    )
    together = loaded.signatures[sig.ADAPT_AND_PREDICT_TASKS](
        support_images=support, support_labels=labels, query_images=query, **options
    )
    assert together[sig.PROBABILITIES].shape == (4, WAYS, WAYS)
    for t, (s, y, q) in enumerate(tasks):
        alone = loaded.signatures[sig.ADAPT_AND_PREDICT](
            support_images=s, support_labels=y, query_images=q, **options
        )
        np.testing.assert_array_equal(together[sig.CLASSES][t], alone[sig.CLASSES])
        np.testing.assert_array_equal(together[sig.PROBABILITIES][t], alone[sig.PROBABILITIES])


def test_regression_tasks_equal_each_task_alone(tmp_path):
    protocol = Protocol(shots=5, eval_iters=8, eval_batch=5, learning_rate=0.02)
    module = make_module(SINE_RECIPE, protocol)
    path = export_saved_model(module, str(tmp_path), make_card("sine", module, SINE_RECIPE))
    loaded = LoadedWithDefaults(path)
    x = np.random.default_rng(0).uniform(-5, 5, (3, 5, 1)).astype(np.float32)
    queries = np.linspace(-5, 5, 4, dtype=np.float32)[None, :, None].repeat(3, 0)
    together = loaded.signatures[sig.ADAPT_AND_PREDICT_TASKS](
        support_inputs=x, support_targets=np.sin(x), query_inputs=queries
    )[sig.PREDICTIONS]
    assert together.shape == (3, 4, 1)
    for t in range(3):
        alone = loaded.signatures[sig.ADAPT_AND_PREDICT](
            support_inputs=x[t], support_targets=np.sin(x[t]), query_inputs=queries[t]
        )[sig.PREDICTIONS]
        np.testing.assert_array_equal(together[t], alone)


def test_inner_batch_size_is_a_request_option(exported):
    loaded = LoadedWithDefaults(exported["path"])
    s, y, q = task(3)
    fn = loaded.signatures[sig.ADAPT_AND_PREDICT]
    default = fn(support_images=s, support_labels=y, query_images=q)[sig.LOGITS]
    same = fn(
        support_images=s, support_labels=y, query_images=q, inner_batch_size=tf.constant(BATCH)
    )[sig.LOGITS]
    other = fn(support_images=s, support_labels=y, query_images=q, inner_batch_size=tf.constant(3))[
        sig.LOGITS
    ]
    np.testing.assert_array_equal(default, same)
    assert np.abs(default - other).max() > 1e-6


def test_variables_bit_identical_after_concurrent_calls(exported):
    loaded = LoadedWithDefaults(exported["path"])
    variables = [*loaded.weights, *loaded.adam_v, loaded.adam_step]
    before = [v.numpy().copy() for v in variables]
    assert len(before) == 2 * len(exported["weights"]) + 1
    adapt = loaded.signatures[sig.ADAPT_AND_PREDICT]
    errors = []

    def client(seed):
        try:
            for i in range(50 // 8 + 1):
                support, labels, query = task(seed * 100 + i)
                adapt(
                    support_images=support,
                    support_labels=labels,
                    query_images=query,
                    inner_steps=tf.constant(2),
                    learning_rate=tf.constant(0.1),
                    transductive=tf.constant(i % 2 == 0),
                )
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for v, b in zip(variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
    np.testing.assert_array_equal(before[0], exported["weights"][0])


def test_bad_labels_fail_with_a_clear_message(exported):
    support, labels, query = task()
    loaded = LoadedWithDefaults(exported["path"])
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"labels must be < {WAYS}"):
        loaded.signatures[sig.ADAPT_AND_PREDICT](
            support_images=support,
            support_labels=labels + 3,
            query_images=query,
            inner_steps=tf.constant(1),
            learning_rate=tf.constant(0.1),
            transductive=tf.constant(False),
        )


def test_failed_export_leaves_no_version(tmp_path, monkeypatch):
    module = make_module(OMNI_RECIPE, PROTOCOL)
    import keras_reptile.export.saved_model as writer

    monkeypatch.setattr(writer, "_warmup_records", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        export_saved_model(module, str(tmp_path), make_card("m", module, OMNI_RECIPE))
    assert list(tmp_path.iterdir()) == []
