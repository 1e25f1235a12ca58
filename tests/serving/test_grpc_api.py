"""TensorFlow Serving's gRPC API through the real stubs, against the real server process."""

import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)

from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from keras_reptile.task_kind import CLASSIFICATION
from tests.serving import cases as bad
from tests.serving.helpers import (
    BATCH,
    STEPS,
    TASKS,
    WAYS,
    assert_same_answer,
    export,
    outputs,
    predict_request,
    shared_server,
    sine_task,
    stack_tasks,
    stubs,
    task,
)

pytestmark = pytest.mark.slow
State = get_model_status_pb2.ModelVersionStatus.State


@pytest.fixture(scope="module")
def api():
    server = shared_server()
    s = stubs(server.grpc_target)
    yield s
    s.channel.close()


def test_health_is_serving_for_the_server_and_each_service(api):
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        response = api.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_adapt_and_predict_answers_for_the_latest_version(api):
    response = api.prediction.Predict(
        predict_request("omni", sig.ADAPT_AND_PREDICT, task()), timeout=30
    )
    spec = response.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == ("omni", 2, "adapt_and_predict")
    out = outputs(response)
    assert set(out) == {sig.LOGITS, sig.PROBABILITIES, sig.CLASSES}
    assert out[sig.LOGITS].shape == (WAYS, WAYS) and out[sig.CLASSES].dtype == np.int64
    np.testing.assert_allclose(out[sig.PROBABILITIES].sum(axis=1), 1.0, rtol=1e-5)


def test_omitted_optional_inputs_take_the_signature_defaults(api):
    explicit = dict(
        task(),
        inner_steps=np.int32(STEPS),
        inner_batch_size=np.int32(BATCH),
        learning_rate=np.float32(0.001),
        transductive=np.bool_(False),
    )
    a = outputs(
        api.prediction.Predict(predict_request("omni", sig.ADAPT_AND_PREDICT, task()), timeout=30)
    )
    b = outputs(
        api.prediction.Predict(predict_request("omni", sig.ADAPT_AND_PREDICT, explicit), timeout=30)
    )
    np.testing.assert_array_equal(a[sig.LOGITS], b[sig.LOGITS])
    for changed in (dict(inner_steps=np.int32(STEPS + 5)), dict(inner_batch_size=np.int32(2))):
        request = predict_request("omni", sig.ADAPT_AND_PREDICT, dict(task(), **changed))
        c = outputs(api.prediction.Predict(request, timeout=30))
        assert not np.array_equal(a[sig.LOGITS], c[sig.LOGITS]), changed


def _predict(api, model, signature, inputs):
    return outputs(api.prediction.Predict(predict_request(model, signature, inputs), timeout=60))


@pytest.mark.parametrize(
    "model, tasks, options",
    [
        ("omni", [task(seed) for seed in range(3)], {}),
        ("omni", [task(seed) for seed in (3, 4)], dict(transductive=np.bool_(True))),
        ("omni", [task(5)], dict(inner_steps=np.int32(4), inner_batch_size=np.int32(3))),
        ("sine", [sine_task(seed) for seed in range(3)], {}),
    ],
    ids=["omni", "omni_transductive", "omni_one_task_with_options", "sine"],
)
def test_adapt_and_predict_tasks_answers_each_task_as_if_alone(api, model, tasks, options):
    response = api.prediction.Predict(
        predict_request(model, TASKS, dict(stack_tasks(tasks), **options)), timeout=60
    )
    assert response.model_spec.signature_name == TASKS
    stacked = outputs(response)
    for index, inputs in enumerate(tasks):
        alone = _predict(api, model, sig.ADAPT_AND_PREDICT, dict(inputs, **options))
        assert set(stacked) == set(alone)
        for key, value in alone.items():
            assert stacked[key].shape == (len(tasks), *value.shape)
        assert_same_answer(stacked, index, alone)


def test_empty_signature_name_means_serving_default(api):
    images = task()[sig.QUERY_IMAGES]
    response = api.prediction.Predict(predict_request("omni", "", {sig.IMAGES: images}), timeout=30)
    assert response.model_spec.signature_name == sig.SERVING_DEFAULT
    assert outputs(response)[sig.PROBABILITIES].shape == (len(images), WAYS)


def test_versions_and_labels_pick_the_version(api):
    inputs = task()
    by_version = {
        v: outputs(
            api.prediction.Predict(
                predict_request("omni", sig.ADAPT_AND_PREDICT, inputs, version=v), timeout=30
            )
        )
        for v in (1, 2)
    }
    assert not np.array_equal(by_version[1][sig.LOGITS], by_version[2][sig.LOGITS])
    for label, version in (("stable", 1), ("canary", 2)):
        response = api.prediction.Predict(
            predict_request("omni", sig.ADAPT_AND_PREDICT, inputs, label=label), timeout=30
        )
        assert response.model_spec.version.value == version
        np.testing.assert_array_equal(
            outputs(response)[sig.LOGITS], by_version[version][sig.LOGITS]
        )


def test_output_filter_returns_only_those_outputs(api):
    request = predict_request("omni", sig.ADAPT_AND_PREDICT, task())
    request.output_filter.append(sig.CLASSES)
    assert set(api.prediction.Predict(request, timeout=30).outputs) == {sig.CLASSES}
    request.output_filter.append("nope")
    with pytest.raises(grpc.RpcError) as e:
        api.prediction.Predict(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: nope" in e.value.details()


def test_regression_model_predicts_both_signatures(api):
    inputs = sine_task()
    out = outputs(
        api.prediction.Predict(predict_request("sine", sig.ADAPT_AND_PREDICT, inputs), timeout=30)
    )
    assert out[sig.PREDICTIONS].shape == (7, 1)
    response = api.prediction.Predict(
        predict_request("sine", sig.SERVING_DEFAULT, {sig.INPUTS: inputs[sig.QUERY_INPUTS]}),
        timeout=30,
    )
    assert outputs(response)[sig.PREDICTIONS].shape == (7, 1)


def test_non_finite_outputs_are_an_internal_error_not_a_prediction(api):
    inputs = dict(sine_task(), learning_rate=np.float32(1e30), inner_steps=np.int32(50))
    with pytest.raises(grpc.RpcError) as e:
        api.prediction.Predict(predict_request("sine", sig.ADAPT_AND_PREDICT, inputs), timeout=30)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "non-finite values (NaN or Inf)" in e.value.details()
    assert "[[" not in e.value.details() and "node" not in e.value.details()


def test_concurrent_requests_get_the_answer_of_a_lone_request(api):
    request = predict_request(
        "omni", sig.ADAPT_AND_PREDICT, dict(task(3), transductive=np.bool_(True))
    )
    alone = outputs(api.prediction.Predict(request, timeout=30))[sig.LOGITS]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: api.prediction.Predict(request, timeout=60), range(16)))
    for response in results:
        np.testing.assert_array_equal(outputs(response)[sig.LOGITS], alone)


def _metadata_request(model, fields, version=None, label=None):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    return request


def test_get_model_metadata_returns_the_signature_defs(api):
    response = api.prediction.GetModelMetadata(
        _metadata_request("omni", ["signature_def"]), timeout=10
    )
    assert (response.model_spec.name, response.model_spec.version.value) == ("omni", 2)
    assert set(response.metadata) == {"signature_def"}
    any_ = response.metadata["signature_def"]
    assert any_.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    any_.Unpack(signature_map)
    assert set(sig.SIGNATURES) <= set(signature_map.signature_def)
    specs = sig.signature_specs((28, 28, 1), CLASSIFICATION)
    for name in (sig.ADAPT_AND_PREDICT, TASKS):
        sdef = signature_map.signature_def[name]
        assert set(sdef.inputs) == {i.key for i in specs[name].inputs}
        assert sdef.defaults[sig.INNER_STEPS].int_val == [STEPS]
        assert sdef.defaults[sig.INNER_BATCH_SIZE].int_val == [BATCH]
    dims = signature_map.signature_def[TASKS].inputs[sig.SUPPORT_IMAGES].tensor_shape.dim
    assert [d.size for d in dims] == [-1, -1, 28, 28, 1]


def _card(response) -> dict:
    any_ = response.metadata["model_card"]
    assert any_.type_url == "type.googleapis.com/google.protobuf.StringValue"
    text = wrappers_pb2.StringValue()
    any_.Unpack(text)
    return json.loads(text.value)


@pytest.mark.parametrize(
    "model, spec, seed",
    [
        ("omni", {}, 2),
        ("omni", {"version": 1}, 1),
        ("omni", {"label": "canary"}, 2),
        ("omni", {"label": "stable"}, 1),
        ("sine", {}, 1),
    ],
)
def test_get_model_metadata_returns_the_model_card(api, model, spec, seed):
    response = api.prediction.GetModelMetadata(
        _metadata_request(model, ["model_card"], **spec), timeout=10
    )
    assert response.model_spec.version.value == spec.get("version", seed)
    assert set(response.metadata) == {"model_card"}
    card = ModelCard.read(export(model, seed))
    assert card.recipe.seed == seed  # the versions' cards differ
    assert _card(response) == card.to_dict()


def test_get_model_metadata_answers_both_fields_at_once(api):
    response = api.prediction.GetModelMetadata(
        _metadata_request("omni", ["signature_def", "model_card"], version=1), timeout=10
    )
    assert set(response.metadata) == {"signature_def", "model_card"}
    assert _card(response) == ModelCard.read(export("omni", 1)).to_dict()
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    assert set(sig.SIGNATURES) <= set(signature_map.signature_def)


def test_a_model_without_card_is_served_from_its_signatures(api):
    with pytest.raises(grpc.RpcError) as e:
        api.prediction.GetModelMetadata(_metadata_request("bare", ["model_card"]), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert e.value.details().startswith(
        "Model bare version 1 has no model card: its SavedModel has no assets.extra/model_card.json"
    )
    response = api.prediction.GetModelMetadata(
        _metadata_request("bare", ["signature_def"]), timeout=10
    )
    assert set(response.metadata) == {"signature_def"}
    tasks = [sine_task(seed) for seed in range(2)]
    for signature, inputs in ((sig.ADAPT_AND_PREDICT, tasks[0]), (TASKS, stack_tasks(tasks))):
        np.testing.assert_array_equal(  # the same export as "sine", without its card
            _predict(api, "bare", signature, inputs)[sig.PREDICTIONS],
            _predict(api, "sine", signature, inputs)[sig.PREDICTIONS],
        )


@pytest.mark.parametrize(
    "fields, message",
    [
        ([], "must specify at least one metadata_field"),
        (
            ["nope"],
            "Metadata field nope is not supported; expected one of signature_def, model_card.",
        ),
        (["signature_def", "nope"], "Metadata field nope is not supported"),
    ],
)
def test_get_model_metadata_rejects_bad_fields(api, fields, message):
    with pytest.raises(grpc.RpcError) as e:
        api.prediction.GetModelMetadata(_metadata_request("omni", fields), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details()


def _classify_request(model, images, signature=""):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = model, signature
    for image in images:
        example = example_pb2.Example()
        example.features.feature[sig.IMAGES].CopyFrom(
            feature_pb2.Feature(float_list=feature_pb2.FloatList(value=image.ravel()))
        )
        request.input.example_list.examples.append(example)
    return request


def test_classify_scores_examples_with_serving_default(api):
    images = task()[sig.QUERY_IMAGES][:3]
    response = api.prediction.Classify(_classify_request("omni", images), timeout=30)
    assert response.model_spec.signature_name == sig.SERVING_DEFAULT
    predicted = outputs(
        api.prediction.Predict(predict_request("omni", "", {sig.IMAGES: images}), timeout=30)
    )
    assert len(response.result.classifications) == 3
    for row, probabilities in zip(response.result.classifications, predicted[sig.PROBABILITIES]):
        assert [c.label for c in row.classes] == [str(i) for i in range(WAYS)]
        np.testing.assert_allclose([c.score for c in row.classes], probabilities, rtol=1e-5)


@pytest.mark.parametrize(
    "request_, message",
    [
        (
            lambda: _classify_request("omni", task()[sig.QUERY_IMAGES][:1], sig.ADAPT_AND_PREDICT),
            "Classify fits only",
        ),
        (lambda: _classify_request("sine", np.zeros((1, 1), np.float32)), "regression model sine"),
        (
            lambda: _classify_request("omni", np.zeros((1, 10), np.float32)),
            "float_list of 10 values",
        ),
        (lambda: _classify_request("omni", []), "Input is empty."),
    ],
)
def test_classify_rejects_what_does_not_fit(api, request_, message):
    with pytest.raises(grpc.RpcError) as e:
        api.prediction.Classify(request_(), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details()


def test_get_model_status_lists_versions_and_states(api):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "omni"
    response = api.model.GetModelStatus(request, timeout=10)
    states = {s.version: (s.state, s.status.error_code) for s in response.model_version_status}
    assert states == {1: (State.AVAILABLE, 0), 2: (State.AVAILABLE, 0)}
    request.model_spec.version.value = 1
    assert len(api.model.GetModelStatus(request, timeout=10).model_version_status) == 1
    request.model_spec.version.value = 9
    with pytest.raises(grpc.RpcError) as e:
        api.model.GetModelStatus(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert e.value.details() == "Could not find version 9 of model omni"


def test_requests_without_a_model_spec_are_refused(api):
    for call, request in (
        (api.prediction.Predict, predict_pb2.PredictRequest()),
        (api.model.GetModelStatus, get_model_status_pb2.GetModelStatusRequest()),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details() == "Missing ModelSpec"


@pytest.mark.parametrize("case", bad.cases("grpc"), ids=lambda c: c.id)
def test_bad_request_gets_its_status_and_message(api, case):
    request = predict_request(case.model, case.signature, case.inputs(), case.version, case.label)
    with pytest.raises(grpc.RpcError) as e:
        api.prediction.Predict(request, timeout=30)
    assert e.value.code() == case.code, e.value.details()
    assert case.message in e.value.details()
    assert "[[" not in e.value.details() and "Traceback" not in e.value.details()


def test_server_still_serves_after_the_bad_requests(api):
    assert api.health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
    assert api.prediction.Predict(
        predict_request("omni", sig.ADAPT_AND_PREDICT, task()), timeout=30
    )
    assert shared_server().process.poll() is None


@pytest.mark.parametrize("field", ["signature_def", "model_card"])
def test_metadata_of_an_unknown_model_is_not_found(api, field):
    with pytest.raises(grpc.RpcError) as e:
        api.prediction.GetModelMetadata(_metadata_request("nope", [field]), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Servable not found for request: Latest(nope)" in e.value.details()


def test_regress_and_multi_inference_are_unimplemented(api):
    from tensorflow_serving.apis import inference_pb2, regression_pb2

    for call, request in (
        (api.prediction.Regress, regression_pb2.RegressionRequest()),
        (api.prediction.MultiInference, inference_pb2.MultiInferenceRequest()),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED and "Predict" in e.value.details()
