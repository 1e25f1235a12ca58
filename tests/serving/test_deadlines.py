"""The server's default and maximum deadlines, over gRPC and REST: the work stops at them."""

import threading
import time

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import get_model_status_pb2

from keras_reptile.export import signatures as sig
from serving.cancellation import Timeouts
from serving.service import Service
from serving.validation import Limits
from tests.serving import in_process
from tests.serving.helpers import columnar, http, predict_request, task

LIMITS = Limits(max_inner_steps=10**6)
LONG = dict(task(), inner_steps=np.int32(10**6))  # minutes of adaptation


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    with in_process.omni_manager(tmp_path_factory.mktemp("models"), LIMITS) as manager:
        yield manager


def _light_requests_meanwhile(running, answered: list) -> threading.Thread:
    """Status and a serving_default prediction, sent while the long request runs."""

    def send():
        time.sleep(0.3)
        start = time.monotonic()
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "omni"
        running.api.model.GetModelStatus(request, timeout=10)
        images = {sig.IMAGES: task()[sig.QUERY_IMAGES]}
        running.api.prediction.Predict(predict_request("omni", "", images), timeout=10)
        answered.append(time.monotonic() - start)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "timeouts, client_timeout, flag",
    [
        (Timeouts(max_ms=1000), 60.0, "--max_request_timeout_in_ms"),
        (Timeouts(default_ms=1000), None, "--request_timeout_in_ms"),
    ],
    ids=["maximum", "default"],
)
def test_a_grpc_deadline_stops_a_long_adaptation_and_light_requests_go_on(
    manager, timeouts, client_timeout, flag
):
    with in_process.serve(Service(manager, LIMITS, timeouts=timeouts)) as running:
        answered = []
        light = _light_requests_meanwhile(running, answered)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            request = predict_request("omni", sig.ADAPT_AND_PREDICT, LONG)
            running.api.prediction.Predict(request, timeout=client_timeout)
        took = time.monotonic() - start
        light.join(30)
    # The server answered, so its run had returned: TensorFlow stopped it at the deadline.
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert flag in e.value.details() and "was stopped" in e.value.details()
    assert 0.9 < took < 2.0, took
    assert answered and answered[0] < 1.0, answered


def test_the_rest_timeout_answers_504_in_tf_servings_json(manager):
    timeouts = Timeouts(rest_ms=1000)
    with in_process.serve(Service(manager, LIMITS, timeouts=timeouts)) as running:
        start = time.monotonic()
        status, body = http(
            "POST",
            f"{running.rest_url}/v1/models/omni:predict",
            columnar(sig.ADAPT_AND_PREDICT, LONG),
        )
        took = time.monotonic() - start
    assert status == 504 and list(body) == ["error"]
    assert "was stopped: the REST timeout (--rest_api_timeout_in_ms) passed" in body["error"]
    assert 0.9 < took < 2.0, took


def test_timeouts_cut_deadlines_to_the_maximum():
    timeouts = Timeouts(default_ms=20000, max_ms=5000, rest_ms=9000)
    now = time.monotonic()
    deadline, reason = timeouts.grpc(None)
    assert deadline - now == pytest.approx(5.0, abs=0.1) and "--max_request_timeout" in reason
    deadline, reason = timeouts.grpc(2.0)
    assert deadline - now == pytest.approx(2.0, abs=0.1) and reason == "the deadline passed"
    deadline, reason = timeouts.rest()
    assert deadline - now == pytest.approx(5.0, abs=0.1) and "--max_request_timeout" in reason
    assert "--request_timeout_in_ms" in Timeouts(default_ms=10).grpc(None)[1]
    with pytest.raises(ValueError, match="Received: max_ms=0"):
        Timeouts(max_ms=0)
