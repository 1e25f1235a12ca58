"""The shipped model zoo: each `saved_models/<name>/<version>` as TF Serving would run it."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.config import Config
from keras_reptile.data.sources import load_tasks
from keras_reptile.data.tasks import task_seed
from keras_reptile.export import signatures as sig
from tests.conftest import OMNIGLOT_DIR, REPO_ROOT
from tests.export.helpers import PYTHON_OPS, saved_model_ops

ZOO = REPO_ROOT / "saved_models"
VERSIONS = sorted(p for p in ZOO.glob("*/*") if p.name.isdigit())
TASKS = 20  # new tasks each model adapts to here, through a TF1 Session


def card_of(path):
    return json.loads((path / "assets.extra" / sig.CARD_FILE).read_text())


def config_of(card) -> Config:
    names = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in card["config"].items() if k in names})


def test_the_zoo_ships_its_models():
    assert {p.parent.name for p in VERSIONS} >= {"sine"}


@pytest.mark.parametrize("path", VERSIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_card_carries_numbers_measured_on_the_fully_trained_model(path):
    card = card_of(path)
    config = config_of(card)
    assert card["meta_iterations"] == config.meta_iters
    measured = card["measured"]
    assert measured["meta_iterations"] == config.meta_iters
    assert measured["num_tasks"] == config.eval_samples
    assert measured["protocol"]["shots"] == card["shots"] == config.shots
    assert measured["protocol"]["eval_iters"] == card["evaluation"]["inner_steps"]
    protocols = ("mse",) if config.is_regression else ("non_transductive", "transductive")
    for protocol in protocols:
        result = measured["test"][protocol]
        assert result["num_tasks"] == config.eval_samples and result["ci95"] > 0


@pytest.mark.parametrize("path", VERSIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_tf1_session_adapts_to_new_tasks_as_measured(path):
    card = card_of(path)
    config = config_of(card)
    if config.dataset == "omniglot" and not OMNIGLOT_DIR.exists():
        pytest.skip(f"Omniglot not found at {OMNIGLOT_DIR}")
    assert not saved_model_ops(path) & PYTHON_OPS
    _, test_tasks = load_tasks(config, str(OMNIGLOT_DIR))
    spec = sig.signature_specs(tuple(card["input_shape"]), config.is_regression)
    spec = spec[sig.ADAPT_AND_PREDICT]
    tasks = [_sample(test_tasks, config, i) for i in range(TASKS)]
    scores = []
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(path))
        sdef = meta.signature_def[sig.ADAPT_AND_PREDICT]
        output = sdef.outputs[spec.outputs[0]].name  # logits or predictions
        for task in tasks:
            # Only the required inputs: the SignatureDef's defaults are the card's protocol.
            feeds = {
                sdef.inputs[inp.key].name: value for inp, value in zip(spec.inputs[:3], task[:3])
            }
            out = sess.run(output, feeds)
            if config.is_regression:
                scores.append(np.mean((out - task[3]) ** 2))
            else:
                scores.append(np.mean(np.argmax(out, -1) == task[3]))
    measured = card["measured"]["test"]
    if config.is_regression:
        assert np.mean(scores) < 3 * measured["mse"]["mean"] + 0.1, scores
    else:
        # 20 tasks x `ways` queries: far more than 15 points below the measured mean is a bug.
        assert np.mean(scores) > measured["non_transductive"]["mean"] - 0.15, scores


def _sample(tasks, config, index):
    """A new test task as numpy arrays: support x, support y, query x, query y."""
    queries = config.eval_queries if config.is_regression else 1
    task = tasks.sample(task_seed(12345, index), config.classes, config.shots, queries)
    return [np.asarray(t) for t in task]
