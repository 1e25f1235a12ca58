"""Re-exporting a version in place: same number, variables and card; refused if any answer moves."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.config import Protocol
from keras_reptile.export import reexport as reexport_module
from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from keras_reptile.export.reexport import generated_tasks, reexport
from keras_reptile.export.saved_model import export_saved_model, read_exported_state
from tests.export.helpers import SINE_RECIPE, make_card, make_module

PROTOCOL = Protocol(shots=5, eval_iters=4, eval_batch=5, learning_rate=0.02)


@pytest.fixture
def version(tmp_path):
    module = make_module(SINE_RECIPE, PROTOCOL)
    card = make_card("sine", module, SINE_RECIPE)
    return export_saved_model(module, str(tmp_path / "sine"), card)


def test_reexport_keeps_the_version_its_variables_and_card(version):
    before = read_exported_state(version)
    assert reexport(version, num_tasks=2) == version
    after = read_exported_state(version)
    assert after.card == before.card and after.adam_step == before.adam_step
    for a, b in zip(after.weights + after.adam_v, before.weights + before.adam_v):
        np.testing.assert_array_equal(a, b)
    assert os.listdir(os.path.dirname(version)) == ["1"]  # nothing hidden left behind
    assert set(tf.saved_model.load(version).signatures) == set(sig.SIGNATURES)


def test_a_reexport_that_answers_differently_leaves_the_version(version, monkeypatch):
    pb = os.path.join(version, "saved_model.pb")
    original = open(pb, "rb").read()

    def different(old, new, card, num_tasks):
        raise RuntimeError("Re-export check failed: test")

    monkeypatch.setattr(reexport_module, "check_same_answers", different)
    with pytest.raises(RuntimeError, match="Re-export check failed"):
        reexport(version)
    assert open(pb, "rb").read() == original
    assert os.listdir(os.path.dirname(version)) == ["1"]


def test_the_check_compares_every_bit(version, tmp_path):
    card = ModelCard.read(version)
    other = make_module(SINE_RECIPE, PROTOCOL, seed=2)  # other weights
    path = export_saved_model(other, str(tmp_path / "other"), card)
    with pytest.raises(RuntimeError, match="differently from the old adapt_and_predict"):
        reexport_module.check_same_answers(version, path, card, 1)
    reexport_module.check_same_answers(version, version, card, 1)


def test_generated_tasks_have_the_protocol_s_shapes(version):
    card = ModelCard.read(version)
    (task,) = generated_tasks(card, 1)
    assert task[sig.SUPPORT_INPUTS].shape == (5, 1) and task[sig.SUPPORT_TARGETS].shape == (5, 1)
    assert task[sig.QUERY_INPUTS].shape == (PROTOCOL.eval_queries, 1)
