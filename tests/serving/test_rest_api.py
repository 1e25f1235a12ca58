"""TensorFlow Serving's REST API over real HTTP, against the real server process."""

import json
import socket

import numpy as np
import pytest

from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from tests.serving import cases as bad
from tests.serving.helpers import (
    STEPS,
    TASKS,
    WAYS,
    assert_same_answer,
    columnar,
    export,
    http,
    outputs,
    predict_request,
    rest_model_url,
    sine_task,
    stack_tasks,
    stubs,
    task,
)

pytestmark = pytest.mark.slow


def _grpc_logits(server, inputs, signature=sig.ADAPT_AND_PREDICT, model="omni", **kw):
    api = stubs(server.grpc_target)
    try:
        return outputs(
            api.prediction.Predict(predict_request(model, signature, inputs, **kw), timeout=30)
        )
    finally:
        api.channel.close()


def test_model_status(server):
    status, body = http("GET", rest_model_url(server, "omni"))
    assert status == 200
    assert sorted(body["model_version_status"], key=lambda s: s["version"]) == [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for v in ("1", "2")
    ]
    status, body = http("GET", rest_model_url(server, "omni", version=1))
    assert status == 200 and [s["version"] for s in body["model_version_status"]] == ["1"]


def test_model_metadata(server):
    for url, version in (
        (rest_model_url(server, "omni"), "2"),
        (rest_model_url(server, "omni", label="stable"), "1"),
    ):
        status, body = http("GET", url + "/metadata")
        assert status == 200
        assert body["model_spec"] == {"name": "omni", "signature_name": "", "version": version}
        sdefs = body["metadata"]["signature_def"]["signature_def"]
        inputs = sdefs[sig.ADAPT_AND_PREDICT]["inputs"]
        assert inputs[sig.SUPPORT_LABELS]["dtype"] == "DT_INT32"
        assert [d["size"] for d in inputs[sig.QUERY_IMAGES]["tensor_shape"]["dim"]] == [
            "-1",
            "28",
            "28",
            "1",
        ]
        tasks = sdefs[TASKS]["inputs"]
        assert [d["size"] for d in tasks[sig.QUERY_IMAGES]["tensor_shape"]["dim"]] == [
            "-1",
            "-1",
            "28",
            "28",
            "1",
        ]
        assert sig.INNER_BATCH_SIZE in tasks and sig.INNER_BATCH_SIZE in inputs


@pytest.mark.parametrize(
    "model, spec, seed",
    [
        ("omni", {}, 2),
        ("omni", {"version": 1}, 1),
        ("omni", {"label": "stable"}, 1),
        ("omni", {"label": "canary"}, 2),
        ("sine", {}, 1),
    ],
)
def test_model_card(server, model, spec, seed):
    status, body = http("GET", rest_model_url(server, model, **spec) + "/model_card")
    assert status == 200, body
    card = ModelCard.read(export(model, seed))
    assert card.recipe.seed == seed  # the versions' cards differ
    assert body == card.to_dict()
    assert ModelCard.from_json(json.dumps(body)) == card


def test_columnar_predict_equals_grpc_and_omits_optional_inputs(server):
    inputs = task(1)
    status, body = http(
        "POST", rest_model_url(server, "omni") + ":predict", columnar(sig.ADAPT_AND_PREDICT, inputs)
    )
    assert status == 200, body
    expected = _grpc_logits(server, inputs)
    np.testing.assert_allclose(body["outputs"][sig.LOGITS], expected[sig.LOGITS], rtol=1e-6)
    assert body["outputs"][sig.CLASSES] == expected[sig.CLASSES].tolist()


def test_columnar_predict_with_optional_inputs_and_a_version(server):
    inputs = dict(
        task(1),
        inner_steps=np.int32(STEPS + 3),
        inner_batch_size=np.int32(3),
        transductive=np.bool_(True),
    )
    url = rest_model_url(server, "omni", version=1) + ":predict"
    status, body = http("POST", url, columnar(sig.ADAPT_AND_PREDICT, inputs))
    assert status == 200, body
    expected = _grpc_logits(server, inputs, version=1)
    np.testing.assert_allclose(body["outputs"][sig.LOGITS], expected[sig.LOGITS], rtol=1e-6)


def test_row_predict_of_serving_default_plain_and_named(server):
    images = task()[sig.QUERY_IMAGES][:3]
    expected = _grpc_logits(server, {sig.IMAGES: images}, sig.SERVING_DEFAULT)
    for instances in (images.tolist(), [{sig.IMAGES: i.tolist()} for i in images]):
        status, body = http(
            "POST",
            rest_model_url(server, "omni", label="canary") + ":predict",
            {"instances": instances},
        )
        assert status == 200, body
        assert len(body["predictions"]) == 3
        np.testing.assert_allclose(
            [p[sig.LOGITS] for p in body["predictions"]], expected[sig.LOGITS], rtol=1e-6
        )


def test_row_predict_of_adapt_and_predict(server):
    inputs = task(2, shots=1)  # 5 support, 5 queries: one of each per row
    rows = [
        {
            k: inputs[k][i].tolist()
            for k in (sig.SUPPORT_IMAGES, sig.SUPPORT_LABELS, sig.QUERY_IMAGES)
        }
        for i in range(WAYS)
    ]
    body = {"signature_name": sig.ADAPT_AND_PREDICT, "instances": rows}
    status, body = http("POST", rest_model_url(server, "omni") + ":predict", body)
    assert status == 200, body
    expected = _grpc_logits(server, inputs)
    assert [p[sig.CLASSES] for p in body["predictions"]] == expected[sig.CLASSES].tolist()


def _named(value) -> dict:
    """Outputs by name: a signature with one output (`predictions`) answers its value alone."""
    return value if isinstance(value, dict) else {sig.PREDICTIONS: value}


@pytest.mark.parametrize(
    "model, tasks",
    [("omni", [task(seed) for seed in range(3)]), ("sine", [sine_task(seed) for seed in (4, 5)])],
)
def test_adapt_and_predict_tasks_answers_each_task_as_if_alone(server, model, tasks):
    url = rest_model_url(server, model) + ":predict"
    status, body = http("POST", url, columnar(TASKS, stack_tasks(tasks)))
    assert status == 200, body
    columns = _named(body["outputs"])
    rows = [{k: v.tolist() for k, v in t.items()} for t in tasks]  # the row format: a task a row
    status, body = http("POST", url, {"signature_name": TASKS, "instances": rows})
    assert status == 200, body
    predictions = [_named(p) for p in body["predictions"]]
    for index, inputs in enumerate(tasks):
        alone = _grpc_logits(server, inputs, model=model)
        assert_same_answer(columns, index, alone)
        assert_same_answer({k: [v] for k, v in predictions[index].items()}, 0, alone)


def test_single_output_signatures_answer_plain_values(server):
    inputs = sine_task()
    status, body = http(
        "POST", rest_model_url(server, "sine") + ":predict", columnar(sig.ADAPT_AND_PREDICT, inputs)
    )
    assert status == 200 and np.asarray(body["outputs"]).shape == (7, 1)
    status, body = http(
        "POST", rest_model_url(server, "sine") + ":predict", {"instances": [[0.5], [1.0]]}
    )
    assert status == 200 and np.asarray(body["predictions"]).shape == (2, 1)


def test_non_finite_outputs_are_an_internal_error(server):
    inputs = dict(sine_task(), learning_rate=np.float32(1e30), inner_steps=np.int32(50))
    status, body = http(
        "POST", rest_model_url(server, "sine") + ":predict", columnar(sig.ADAPT_AND_PREDICT, inputs)
    )
    assert status == 500 and "non-finite values" in body["error"]


def test_classify(server):
    images = task()[sig.QUERY_IMAGES][:2]
    body = {"examples": [{sig.IMAGES: i.ravel().astype(int).tolist()} for i in images]}
    status, answer = http("POST", rest_model_url(server, "omni") + ":classify", body)
    assert status == 200, answer
    probabilities = _grpc_logits(server, {sig.IMAGES: images}, sig.SERVING_DEFAULT)[
        sig.PROBABILITIES
    ]
    assert [[label for label, _ in row] for row in answer["results"]] == [
        [str(i) for i in range(WAYS)]
    ] * 2
    np.testing.assert_allclose(
        [[s for _, s in row] for row in answer["results"]], probabilities, rtol=1e-5
    )


@pytest.mark.parametrize("case", bad.cases("rest"), ids=lambda c: c.id)
def test_bad_request_gets_its_status_and_message(server, case):
    url = rest_model_url(server, case.model, case.version, case.label) + ":predict"
    status, body = http("POST", url, columnar(case.signature, case.inputs()))
    assert status == case.http, body
    assert set(body) == {"error"}
    assert (case.rest_message or case.message) in body["error"]


def _post_raw(server, data: bytes, path="/v1/models/omni:predict"):
    return http("POST", server.rest_url + path, raw=data)


@pytest.mark.parametrize(
    "method, path, body, status, message",
    [
        ("POST", "/v1/models/omni:predict", b"{not json", 400, "JSON Parse error"),
        (
            "POST",
            "/v1/models/omni:predict",
            b'{"instances": [], "inputs": {}}',
            400,
            "only one of 'inputs' or 'instances'",
        ),
        (
            "POST",
            "/v1/models/omni:predict",
            b'{"signature_name": "serving_default"}',
            400,
            "Missing 'inputs' or 'instances' key",
        ),
        (
            "POST",
            "/v1/models/omni:predict",
            b'{"instances": []}',
            400,
            "No values in 'instances' array",
        ),
        (
            "POST",
            "/v1/models/omni:predict",
            b'{"signature_name": 3, "inputs": []}',
            400,
            "'signature_name' key must be a string",
        ),
        (
            "POST",
            "/v1/models/omni:predict",
            json.dumps({"inputs": [[[[0]] * 28] * 28, [[0]]]}).encode(),
            400,
            "ragged nested list",
        ),
        (
            "POST",
            "/v1/models/omni:predict",
            b'{"signature_name": "adapt_and_predict", "instances": [1, 2]}',
            400,
            "instances is a plain list",
        ),
        (
            "POST",
            "/v1/models/omni:predict",
            b'{"signature_name": "adapt_and_predict", "instances": [{"inner_steps": 1}]}',
            400,
            "Missing but required",
        ),
        ("POST", "/v1/models/omni:regress", b'{"examples": []}', 501, "Regress is not served"),
        (
            "POST",
            "/v1/models/omni:explain",
            b"{}",
            400,
            "Malformed request: POST /v1/models/omni:explain",
        ),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        (
            "GET",
            "/v1/models/nope/metadata",
            None,
            404,
            "Servable not found for request: Latest(nope)",
        ),
        (
            "GET",
            "/v1/models/bare/model_card",
            None,
            404,
            "Model bare version 1 has no model card: its SavedModel has no "
            "assets.extra/model_card.json",
        ),
        (
            "GET",
            "/v1/models/nope/model_card",
            None,
            404,
            "Servable not found for request: Latest(nope)",
        ),
        (
            "GET",
            "/v1/models/omni/versions/7/model_card",
            None,
            404,
            "Servable not found for request: Specific(omni, 7)",
        ),
        (
            "GET",
            "/v1/models/omni/model_card/x",
            None,
            400,
            "Malformed request: GET /v1/models/omni/model_card/x",
        ),
        ("GET", "/v2/whatever", None, 400, "Malformed request: GET /v2/whatever"),
        ("PUT", "/v1/models/omni", b"{}", 400, "Malformed request: PUT /v1/models/omni"),
    ],
)
def test_malformed_requests(server, method, path, body, status, message):
    got, answer = http(method, server.rest_url + path, raw=body)
    assert got == status and message in answer["error"], answer


def test_row_format_rejects_scalars_with_advice(server):
    inputs = task(2, shots=1)
    rows = [
        {
            sig.SUPPORT_IMAGES: inputs[sig.SUPPORT_IMAGES][i].tolist(),
            sig.SUPPORT_LABELS: int(i),
            sig.QUERY_IMAGES: inputs[sig.QUERY_IMAGES][i].tolist(),
            sig.INNER_STEPS: 3,
        }
        for i in range(WAYS)
    ]
    status, body = http(
        "POST",
        rest_model_url(server, "omni") + ":predict",
        {"signature_name": sig.ADAPT_AND_PREDICT, "instances": rows},
    )
    assert status == 400 and 'send it in the columnar ("inputs") format' in body["error"]


def test_missing_content_length_is_refused(server):
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as s:
        s.sendall(b"POST /v1/models/omni:predict HTTP/1.0\r\nHost: localhost\r\n\r\n")
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split()[1] == b"411" and "Content-Length" in json.loads(body)["error"]
