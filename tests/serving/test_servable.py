"""One loaded version in-process: card, defaults, warmup, cleaned errors, deadlines."""

import shutil
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from keras_reptile.task_kind import REGRESSION
from serving import validation
from serving.errors import ServingError
from serving.servable import Servable
from serving.validation import Limits
from tests.serving.helpers import (
    BATCH,
    STEPS,
    WAYS,
    export,
    install,
    omni_tasks,
    remove_card,
    task,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servable():
    return Servable.load("omni", 1, export("omni", 1))


def test_card_signatures_and_defaults(servable):
    assert (
        servable.info.ways,
        servable.info.input_shape,
        servable.info.task_kind == REGRESSION,
    ) == (
        WAYS,
        (28, 28, 1),
        False,
    )
    assert servable.card == ModelCard.read(export("omni", 1))
    assert servable.card.name == "test_omni" and len(servable.card.results) == 2
    assert set(servable.specs) == set(sig.SIGNATURES)
    for name in (sig.ADAPT_AND_PREDICT, sig.ADAPT_AND_PREDICT_TASKS):
        assert servable.defaults[name][sig.INNER_STEPS] == STEPS
        assert servable.defaults[name][sig.INNER_BATCH_SIZE] == BATCH
    prepared = servable.prepare(sig.ADAPT_AND_PREDICT, task(), Limits())
    assert set(prepared) == {i.key for i in servable.spec(sig.ADAPT_AND_PREDICT).inputs}
    assert servable.run(sig.ADAPT_AND_PREDICT, prepared)[sig.CLASSES].shape == (WAYS,)
    prepared = servable.prepare(sig.ADAPT_AND_PREDICT_TASKS, omni_tasks(3), Limits())
    assert servable.run(sig.ADAPT_AND_PREDICT_TASKS, prepared)[sig.CLASSES].shape == (3, WAYS)
    assert servable.warm_up(Limits()) == len(sig.SIGNATURES)  # one warmup record per signature


def test_split_signatures_run_through_the_request_path(servable):
    size = servable.spec(sig.PREDICT_ADAPTED).input(sig.ADAPTED_WEIGHTS).shape[-1]
    assert size and servable.spec(sig.PREDICT_ADAPTED_TASKS).input(sig.ADAPTED_WEIGHTS).shape == (
        None,
        size,
    )
    arrays = task()
    support = {k: arrays[k] for k in (sig.SUPPORT_IMAGES, sig.SUPPORT_LABELS)}
    adapted = servable.run(sig.ADAPT, servable.prepare(sig.ADAPT, support, Limits()))
    query = {
        sig.ADAPTED_WEIGHTS: adapted[sig.ADAPTED_WEIGHTS],
        sig.SUPPORT_IMAGES: arrays[sig.SUPPORT_IMAGES],
        sig.QUERY_IMAGES: arrays[sig.QUERY_IMAGES],
    }
    prepared = servable.prepare(sig.PREDICT_ADAPTED, query, Limits())
    split = servable.run(sig.PREDICT_ADAPTED, prepared)
    together = servable.run(
        sig.ADAPT_AND_PREDICT, servable.prepare(sig.ADAPT_AND_PREDICT, arrays, Limits())
    )
    for key in together:
        np.testing.assert_array_equal(split[key], together[key])
    protos = {k: tf.make_tensor_proto(v) for k, v in query.items()}
    protos[sig.ADAPTED_WEIGHTS] = tf.make_tensor_proto(query[sig.ADAPTED_WEIGHTS][:-1])
    spec = servable.spec(sig.PREDICT_ADAPTED)
    with pytest.raises(ServingError) as e:
        validation.arrays_from_protos(spec, protos, Limits())
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"expected [{size}]" in e.value.message


def test_errors_raised_inside_the_graph_lose_their_trace(servable):
    arrays = servable.prepare(sig.ADAPT_AND_PREDICT, task(), Limits())
    arrays[sig.SUPPORT_LABELS] = arrays[sig.SUPPORT_LABELS] + 3  # bypasses validation
    with pytest.raises(ServingError) as e:
        servable.run(sig.ADAPT_AND_PREDICT, arrays)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "labels must be < 5" in e.value.message
    # No graph trace nor node or tensor name; the offending values (a stack of one task, so
    # "[[3 3 4...]...]") stay.
    assert "{{" not in e.value.message and "Detected at node" not in e.value.message
    assert ":0)" not in e.value.message and "[Op:" not in e.value.message
    assert "[x = ] [[3 3 4...]...]" in e.value.message


def test_a_deadline_stops_a_long_adaptation_mid_run(servable):
    arrays = servable.prepare(
        sig.ADAPT_AND_PREDICT,
        dict(task(), inner_steps=np.int32(100000)),
        Limits(max_inner_steps=100000),
    )
    start = time.monotonic()
    with pytest.raises(ServingError) as e:
        servable.run(sig.ADAPT_AND_PREDICT, arrays, deadline=start + 0.5)
    # The run returned: TensorFlow stopped the computation, within a second of its deadline.
    assert time.monotonic() - start < 1.5
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "was stopped: the deadline passed" in e.value.message


@pytest.mark.parametrize(
    "kind, ways, shape, regression", [("omni", WAYS, (28, 28, 1), False), ("sine", 1, (1,), True)]
)
def test_without_card_or_warmup_the_signatures_say_enough(tmp_path, kind, ways, shape, regression):
    def strip(folder):
        remove_card(folder)
        (folder / "assets.extra" / sig.WARMUP_FILE).unlink()

    path = install(export(kind, 1), tmp_path, 1, edit=strip)
    servable = Servable.load(kind, 1, str(path))
    assert servable.card is None
    assert (
        servable.info.ways,
        servable.info.input_shape,
        servable.info.task_kind == REGRESSION,
    ) == (
        ways,
        shape,
        regression,
    )
    assert set(servable.specs) == set(sig.SIGNATURES)
    assert servable.warm_up(Limits()) == len(sig.SIGNATURES)  # synthetic, one per signature


def test_a_savedmodel_outside_the_contract_is_refused(tmp_path):
    module = tf.Module()
    module.f = tf.function(
        lambda x: {"y": x * 2.0}, input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)]
    )
    path = tmp_path / "1"
    tf.saved_model.save(module, str(path), signatures={sig.SERVING_DEFAULT: module.f})
    (path / "assets.extra").mkdir()
    card = ModelCard.read(export("omni", 1))
    (path / "assets.extra" / sig.CARD_FILE).write_text(card.to_json())
    with pytest.raises(ServingError) as e:
        Servable.load("m", 1, str(path))
    assert "does not follow the contract" in e.value.message
    assert "expected inputs {'images': 'float32'}" in e.value.message


def test_a_card_that_is_not_a_model_card_is_refused(tmp_path):
    path = tmp_path / "1"
    shutil.copytree(export("omni", 1), path)
    old = '{"preset": "omni", "ways": 5, "input_shape": [28, 28, 1]}'  # the card before format 2
    (path / "assets.extra" / sig.CARD_FILE).write_text(old)
    with pytest.raises(ServingError) as e:
        Servable.load("m", 1, str(path))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(path / "assets.extra" / sig.CARD_FILE) in e.value.message
    assert "Not a keras-reptile model card of format 2. Received: format=None" in e.value.message
