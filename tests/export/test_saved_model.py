"""The SavedModel contract: what TensorFlow Serving needs, checked without it."""

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.saved_model import loader_impl

from keras_reptile.algorithms import FunctionalModel, InnerOptimizer
from keras_reptile.export import signatures as sig
from keras_reptile.export.saved_model import ServingModule, export_saved_model, next_version
from keras_reptile.models import build_model
from keras_reptile.training.evaluator import Evaluator
from tests.export.helpers import PYTHON_OPS, saved_model_ops

WAYS, SHOTS, STEPS, LR, BATCH = 5, 2, 6, 0.01, 5


def make_module():
    fmodel = FunctionalModel(build_model("omniglot_cnn", WAYS, (28, 28, 1)), regression=False)
    weights = [w.numpy() for w in fmodel.initial_weights()]
    rng = np.random.default_rng(0)
    adam_v = [rng.uniform(1e-6, 1e-3, w.shape).astype(np.float32) for w in weights]
    module = ServingModule(
        fmodel,
        weights,
        InnerOptimizer("adam"),
        700.0,
        adam_v,
        ways=WAYS,
        inner_steps=STEPS,
        learning_rate=LR,
        batch_size=BATCH,
    )
    return fmodel, weights, adam_v, module


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    fmodel, weights, adam_v, module = make_module()
    base = tmp_path_factory.mktemp("saved_models") / "omniglot"
    path = export_saved_model(module, str(base), {"preset": "test", "ways": WAYS}, "omniglot")
    return dict(fmodel=fmodel, weights=weights, adam_v=adam_v, module=module, path=path, base=base)


def task(seed=0):
    rng = np.random.default_rng(seed)
    support = rng.random((WAYS * SHOTS, 28, 28, 1), dtype=np.float32)
    labels = np.repeat(np.arange(WAYS, dtype=np.int32), SHOTS)
    query = rng.random((WAYS, 28, 28, 1), dtype=np.float32)
    return support, labels, query


def test_layout_card_and_warmup(exported):
    assert exported["path"].endswith("/1")
    extra = f"{exported['path']}/assets.extra"
    card = json.loads(open(f"{extra}/{sig.CARD_FILE}").read())
    assert card["ways"] == WAYS and "package_version" in card
    from tensorflow_serving.apis import prediction_log_pb2

    records = list(tf.data.TFRecordDataset(f"{extra}/{sig.WARMUP_FILE}").as_numpy_iterator())
    names = set()
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        names.add(log.predict_log.request.model_spec.signature_name)
    assert names == set(sig.SIGNATURES)
    assert next_version(str(exported["base"])) == 2


def test_signature_defs_follow_the_contract(exported):
    graph = loader_impl.parse_saved_model(exported["path"]).meta_graphs[0]
    specs = sig.signature_specs((28, 28, 1), regression=False)
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
    loaded = tf.saved_model.load(exported["path"])
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
            sys.executable,
            "-m",
            "tensorflow.python.tools.saved_model_cli",
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
    loaded = tf.saved_model.load(exported["path"])
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
    support, labels, query = task(2)
    loaded = tf.saved_model.load(exported["path"])
    evaluator = Evaluator(
        exported["fmodel"],
        InnerOptimizer("adam"),
        ways=WAYS,
        shots=SHOTS,
        num_steps=STEPS,
        batch_size=BATCH,
        lr=LR,
    )
    from keras_reptile.algorithms import AdamState

    state = AdamState(tf.constant(700.0), tuple(tf.constant(v) for v in exported["adam_v"]))
    seeds = tf.constant([sig.SERVING_BATCH_SEED], tf.int64)
    expected = evaluator.adapt_and_predict(
        [tf.constant(w) for w in exported["weights"]],
        state,
        support[None],
        labels[None],
        query[None],
        seeds,
        (False, True),
    )
    for transductive, logits in zip((False, True), expected):
        served = loaded.signatures[sig.ADAPT_AND_PREDICT](
            support_images=support,
            support_labels=labels,
            query_images=query,
            inner_steps=tf.constant(STEPS),
            learning_rate=tf.constant(LR),
            transductive=tf.constant(transductive),
        )
        np.testing.assert_allclose(served[sig.LOGITS], logits[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(served[sig.CLASSES], np.argmax(logits[0], -1))


def test_variables_bit_identical_after_concurrent_calls(exported):
    loaded = tf.saved_model.load(exported["path"])
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
    loaded = tf.saved_model.load(exported["path"])
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
    _, _, _, module = make_module()
    import keras_reptile.export.saved_model as writer

    monkeypatch.setattr(writer, "_warmup_records", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        export_saved_model(module, str(tmp_path), {}, "m")
    assert list(tmp_path.iterdir()) == []
