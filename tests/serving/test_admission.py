"""Admission control: a bounded queue of computations shared by gRPC and REST."""

import threading
import time

import grpc
import numpy as np
import pytest

from keras_reptile.export import signatures as sig
from serving.admission import Admission
from serving.cancellation import Cancellation, Timeouts
from serving.errors import QUEUE_FULL, ServingError
from serving.service import Service
from serving.validation import Limits
from tests.serving import in_process
from tests.serving.helpers import columnar, http, predict_request, task

LIMITS = Limits(max_inner_steps=10**6)


def _hold(admission: Admission, release: threading.Event, entered: list) -> threading.Thread:
    def run():
        with admission.slot():
            entered.append(time.monotonic())
            release.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_a_full_queue_is_refused_with_tf_servings_unavailable():
    admission, release, entered = Admission(1, 1), threading.Event(), []
    running = _hold(admission, release, entered)
    _until(lambda: admission.running == 1)
    waiting = _hold(admission, release, entered)
    _until(lambda: admission.queued == 1)
    with pytest.raises(ServingError) as e:
        with admission.slot():
            pass
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and e.value.message == QUEUE_FULL
    assert e.value.http_status == 503
    release.set()
    running.join(), waiting.join()
    assert len(entered) == 2 and (admission.running, admission.queued) == (0, 0)


def test_waiting_ends_at_the_deadline_or_on_cancellation_and_unbounded_waits_queue():
    admission, release, entered = Admission(1, 0), threading.Event(), []
    running = _hold(admission, release, entered)
    _until(lambda: admission.running == 1)
    start = time.monotonic()
    with pytest.raises(ServingError) as e:
        with admission.slot(deadline=start + 0.2, bounded=False):
            pass
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.19 < time.monotonic() - start < 1.0
    cancellation = Cancellation()
    threading.Timer(0.1, cancellation.cancel).start()
    with pytest.raises(ServingError) as e:
        with admission.slot(cancellation=cancellation, bounded=False):
            pass
    assert e.value.code == grpc.StatusCode.CANCELLED
    release.set()
    running.join()
    assert admission.queued == 0


def test_computations_are_admitted_in_arrival_order():
    admission, release, order = Admission(1, 5), threading.Event(), []
    first = _hold(admission, release, [])
    _until(lambda: admission.running == 1)

    def wait_turn(i):
        with admission.slot():
            order.append(i)

    threads = []
    for i in range(4):
        threads.append(threading.Thread(target=wait_turn, args=(i,)))
        threads[-1].start()
        _until(lambda i=i: admission.queued == i + 1)
    release.set()
    for thread in [first, *threads]:
        thread.join()
    assert order == [0, 1, 2, 3]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="Received: max_concurrent=0"):
        Admission(0, 1)
    with pytest.raises(ValueError, match="Received: max_queued=-1"):
        Admission(1, -1)


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    with in_process.omni_manager(tmp_path_factory.mktemp("models"), LIMITS) as manager:
        yield manager


def test_the_server_refuses_past_its_queue_over_grpc_and_rest(manager):
    admission = Admission(1, 0)
    service = Service(manager, LIMITS, timeouts=Timeouts(max_ms=3000), admission=admission)
    long = predict_request("omni", sig.ADAPT_AND_PREDICT, dict(task(), inner_steps=np.int32(10**6)))
    with in_process.serve(service) as running:
        errors = []

        def heavy():
            try:
                running.api.prediction.Predict(long, timeout=30)
            except grpc.RpcError as error:
                errors.append(error.code())

        thread = threading.Thread(target=heavy)
        thread.start()
        _until(lambda: admission.running == 1, 10)
        images = {sig.IMAGES: task()[sig.QUERY_IMAGES]}
        light = predict_request("omni", "", images)
        with pytest.raises(grpc.RpcError) as e:
            running.api.prediction.Predict(light, timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and e.value.details() == QUEUE_FULL
        url = f"{running.rest_url}/v1/models/omni:predict"
        status, body = http(
            "POST", url, columnar("serving_default", {sig.IMAGES: task()[sig.QUERY_IMAGES]})
        )
        assert (status, body) == (503, {"error": QUEUE_FULL})
        thread.join(30)
        assert errors == [grpc.StatusCode.DEADLINE_EXCEEDED]
        assert admission.running == 0  # the heavy run stopped; its slot is free
        running.api.prediction.Predict(light, timeout=10)
