"""The shipped model zoo: each `saved_models/<name>/<version>` as TF Serving would run it."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.data.sources import load_tasks
from keras_reptile.data.streams import task_seeds
from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from keras_reptile.export.saved_model import version_dir
from keras_reptile.run import build_stacked_model
from keras_reptile.task_kind import REGRESSION
from tests.conftest import OMNIGLOT_DIR, REPO_ROOT
from tests.export.helpers import PYTHON_OPS, saved_model_ops
from tests.served_vs_evaluator import KEY

ZOO = REPO_ROOT / "saved_models"
VERSIONS = sorted(p for p in ZOO.glob("*/*") if p.name.isdigit())
IDS = [f"{p.parent.name}/{p.name}" for p in VERSIONS]
CLASSIFIERS = [p for p in VERSIONS if ModelCard.read(str(p)).task_kind != REGRESSION]
TASKS = 20  # new tasks each model adapts to here, through a TF1 Session


def test_the_zoo_ships_one_model_per_recipe():
    assert {p.parent.name for p in VERSIONS} >= {"sine", "omniglot_5w"}
    for path in VERSIONS:
        assert ModelCard.read(str(path)).name == path.parent.name


@pytest.mark.parametrize("path", VERSIONS, ids=IDS)
def test_card_lists_every_protocol_measured_on_these_weights(path):
    card = ModelCard.read(str(path))  # also checks each result was measured at its step
    assert card.results, "a shipped model carries measured results"
    for m in card.results:
        assert m.num_tasks == m.protocol.eval_samples and m.ci95 > 0
    # The signatures' defaults are a protocol that was measured.
    adaptations = {m.protocol.adaptation for m in card.results}
    assert card.default_protocol.adaptation in adaptations
    if (
        card.name in ("omniglot_5w", "omniglot_20w")
        and card.meta_iterations == card.recipe.meta_iters
    ):
        for shots in (1, 5):
            for transductive in (False, True):
                assert card.find(shots=shots, transductive=transductive).num_tasks == 10000


def _readme_zoo_rows() -> list[list[str]]:
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in lines
        if re.match(r"\| `\w+` \|", line)
    ]


def _agrees(printed: str, value: float) -> bool:
    """`printed` is `value` rounded to as many decimals as it shows."""
    decimals = len(printed.partition(".")[2])
    return abs(float(printed) - value) <= 0.5 * 10**-decimals + 1e-12


def test_readme_zoo_table_prints_the_newest_cards_results():
    rows = _readme_zoo_rows()
    assert {row[0].strip("`") for row in rows} >= {"sine", "omniglot_5w"}
    for name, task, answer, ours, *_ in rows:
        card = ModelCard.read(version_dir(str(ZOO / name.strip("`"))))  # the newest version
        if card.task_kind == REGRESSION:
            m = card.find(split="test" if answer == "meta-learned" else "test_from_random_init")
            scale = 1
        else:
            ways, shots = map(int, re.match(r"(\d+)-way (\d+)-shot", task).groups())
            assert ways == card.ways, (name, task)
            m = card.find(shots=shots, transductive=answer == "transductive")
            assert m is not None and m.num_tasks == 10000, (name, task, answer)
            scale = 100
        mean, ci95 = re.fullmatch(r"\**([\d.]+) \+- ([\d.]+)( %)?\**", ours).group(1, 2)
        assert _agrees(mean, scale * m.mean) and _agrees(ci95, scale * m.ci95), (name, task, m)


def _skip_without_data(card):
    if card.recipe.dataset == "omniglot" and not OMNIGLOT_DIR.exists():
        pytest.skip(f"Omniglot not found at {OMNIGLOT_DIR}")


def _test_tasks(card):
    _skip_without_data(card)
    _, tasks = load_tasks(card.recipe, None, str(OMNIGLOT_DIR))
    return tasks


@pytest.mark.parametrize("path", VERSIONS, ids=IDS)
def test_tf1_session_adapts_to_new_tasks_as_measured(path):
    card = ModelCard.read(str(path))
    assert not saved_model_ops(path) & PYTHON_OPS
    tasks = _test_tasks(card)
    spec = sig.signature_specs(card.input_shape, card.task_kind)[sig.ADAPT_AND_PREDICT]
    results = [m for m in card.results if m.split == "test" and not m.protocol.transductive]
    samples = [_sample(tasks, card, m.protocol, TASKS) for m in results]
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(path))
        sdef = meta.signature_def[sig.ADAPT_AND_PREDICT]
        output = sdef.outputs[spec.outputs[0]].name  # logits or predictions
        for measured, sample in zip(results, samples):
            scores = []
            for task in sample:
                # Only the required inputs: the SignatureDef's defaults are the card's protocol.
                feeds = {sdef.inputs[i.key].name: v for i, v in zip(spec.inputs[:3], task[:3])}
                out = sess.run(output, feeds)
                if card.task_kind == REGRESSION:
                    scores.append(np.mean((out - task[3]) ** 2))
                else:
                    scores.append(np.mean(np.argmax(out, -1) == task[3]))
            if card.task_kind == REGRESSION:
                assert np.mean(scores) < 3 * measured.mean + 0.1, scores
            else:
                # 20 tasks x `ways` queries: far more than 15 points below the mean is a bug.
                assert np.mean(scores) > measured.mean - 0.15, (measured, scores)


def _session_run(sess, meta, name, arrays):
    sdef = meta.signature_def[name]
    feeds = {sdef.inputs[k].name: v for k, v in arrays.items()}
    return sess.run({k: v.name for k, v in sdef.outputs.items()}, feeds)


@pytest.mark.parametrize("path", VERSIONS, ids=IDS)
def test_tf1_session_split_signatures_answer_as_adapt_and_predict(path):
    """`adapt` then `predict_adapted` (and their multi-task forms), fed by tensor names with the
    defaults left out, give `adapt_and_predict`'s outputs bit for bit on new tasks."""
    card = ModelCard.read(str(path))
    keys = card.task_kind.keys
    sample = _sample(_test_tasks(card), card, card.default_protocol, 2)
    tasks = [{keys.support: t[0], keys.targets: t[1], keys.query: t[2]} for t in sample]
    stacked = {k: np.stack([t[k] for t in tasks]) for k in tasks[0]}
    answers = (
        [{}] if card.task_kind == REGRESSION else [{sig.TRANSDUCTIVE: a} for a in (False, True)]
    )
    size = build_stacked_model(card.recipe, card.input_shape).num_weights
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(path))
        for one, adapt, predict, together in (
            (True, sig.ADAPT, sig.PREDICT_ADAPTED, sig.ADAPT_AND_PREDICT),
            (False, sig.ADAPT_TASKS, sig.PREDICT_ADAPTED_TASKS, sig.ADAPT_AND_PREDICT_TASKS),
        ):
            for task in tasks[:1] if one else [stacked]:
                support = {k: task[k] for k in (keys.support, keys.targets)}
                weights = _session_run(sess, meta, adapt, support)[sig.ADAPTED_WEIGHTS]
                assert weights.shape[-1] == size
                for answer in answers:
                    query = {sig.ADAPTED_WEIGHTS: weights, keys.query: task[keys.query]}
                    if card.task_kind != REGRESSION:
                        query[keys.support] = task[keys.support]
                    split = _session_run(sess, meta, predict, {**query, **answer})
                    want = _session_run(sess, meta, together, {**task, **answer})
                    assert set(split) == set(want)
                    for key in want:
                        np.testing.assert_array_equal(split[key], want[key], err_msg=key)


# Replays a SavedModel's warmup requests (one per signature, two tasks for the multi-task one)
# in a TF1 Session, as tensorflow_model_server does when it loads a version. Imports TensorFlow
# only, so the environment decides oneDNN.
_REPLAY_WARMUP = """
import sys
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
path = sys.argv[1]
with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
    warmup = path + "/assets.extra/tf_serving_warmup_requests"
    for record in tf.compat.v1.io.tf_record_iterator(warmup):
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        sdef = meta.signature_def[request.model_spec.signature_name]
        feeds = {sdef.inputs[k].name: tf.make_ndarray(v) for k, v in request.inputs.items()}
        outputs = sess.run({k: v.name for k, v in sdef.outputs.items()}, feeds)
        print(request.model_spec.signature_name, {k: v.shape for k, v in outputs.items()})
"""


@pytest.mark.parametrize("onednn", ["0", "1"], ids=["eigen", "onednn"])
@pytest.mark.parametrize("path", VERSIONS, ids=IDS)
def test_every_signature_runs_with_either_cpu_kernels(path, onednn):
    """Every signature runs on TensorFlow's own CPU kernels (a tensorflow_model_server built
    without oneDNN, or on a CPU without AVX-512: no grouped convolution may be differentiated) and
    on oneDNN's (its default on CPUs with AVX-512)."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-c", _REPLAY_WARMUP, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ran = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert ran == set(sig.SIGNATURES), result.stdout


def _sample(tasks, card, protocol, count):
    """New test tasks as numpy arrays: support x, support y, query x, query y."""
    queries = card.task_kind.queries_per_class(protocol.eval_queries)
    seeds = task_seeds(KEY, tf.range(count))
    return [
        [np.asarray(t) for t in tasks.sample(s, card.ways, protocol.shots, queries)]
        for s in tf.unstack(seeds)
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", CLASSIFIERS, ids=[f"{p.parent.name}/{p.name}" for p in CLASSIFIERS]
)
def test_served_answers_equal_the_evaluators_on_100_tasks(path):
    """Identical predictions, probabilities within 1e-5, through both adapt signatures.

    Each task runs on kernels of its own wherever it is stacked, and the evaluator's graph is fed
    its shapes and settings at run time as a served graph is, so TensorFlow rewrites both alike.
    Compared in a process without op determinism (tests/served_vs_evaluator.py).
    """
    _skip_without_data(ModelCard.read(str(path)))
    result = subprocess.run(
        [sys.executable, "-m", "tests.served_vs_evaluator", str(path), str(OMNIGLOT_DIR)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    compared = json.loads(result.stdout.splitlines()[-1])
    print(compared)
    assert compared["tasks"] == 100 and compared["classes_equal"], compared
    assert compared["max_probability_difference"] <= 1e-5, compared
