"""Launching with TF Serving's flags, deadlines, graceful SIGTERM, refusing to start."""

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from keras_reptile.export import signatures as sig
from serving.launcher import REPO_ROOT, ServerProcess
from tests.serving.helpers import (
    columnar,
    export,
    http,
    install,
    outputs,
    predict_request,
    rest_model_url,
    stubs,
    task,
)
from tests.serving.test_tls import quote
from tests.serving.tls_helpers import make_pki

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "omni"
    install(export("omni", 1), base, 1)
    return base


def _long_request(steps):
    return predict_request("omni", sig.ADAPT_AND_PREDICT, dict(task(), inner_steps=np.int32(steps)))


def test_flags_launch_one_model_on_loopback_without_rest(base):
    with ServerProcess(["--model_name=omni", f"--model_base_path={base}"], rest=False) as server:
        api = stubs(server.grpc_target)
        response = api.prediction.Predict(
            predict_request("omni", "", {sig.IMAGES: task()[sig.QUERY_IMAGES]}), timeout=30
        )
        assert response.model_spec.version.value == 1
        api.channel.close()
        log = server.log()
    assert f"Running gRPC ModelServer at 127.0.0.1:{server.port}" in log
    assert "Exporting HTTP/REST API" not in log


def test_deadlines_are_honoured_and_sigterm_lets_requests_finish(base):
    server = ServerProcess(
        [
            "--model_name=omni",
            f"--model_base_path={base}",
            "--max_inner_steps=5000",
            "--rest_api_timeout_in_ms=1000",
        ]
    )
    server.start()
    api = stubs(server.grpc_target)
    try:
        with pytest.raises(grpc.RpcError) as e:
            api.prediction.Predict(_long_request(3000), timeout=0.3)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait_for_log(server, "was stopped: the deadline passed")  # the server stopped computing
        status, body = http(
            "POST",
            rest_model_url(server, "omni") + ":predict",
            columnar(sig.ADAPT_AND_PREDICT, dict(task(), inner_steps=np.int32(3000))),
        )
        assert status == 504 and "was stopped: the REST timeout" in body["error"]
        start = time.monotonic()
        api.prediction.Predict(_long_request(300), timeout=120)
        duration = time.monotonic() - start

        result = {}

        def in_flight():
            try:
                result["outputs"] = outputs(
                    api.prediction.Predict(_long_request(1200), timeout=300)
                )
            except grpc.RpcError as error:
                result["error"] = error

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(min(duration, 2.0))  # the 4x longer request is still running
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(grpc.RpcError) as e:  # no new request once stopping
            stubs(server.grpc_target).prediction.Predict(_long_request(1), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        thread.join(300)
        assert "error" not in result, result.get("error")
        assert result["outputs"][sig.CLASSES].shape == (5,)
        assert server.process.wait(60) == 0
        assert "Server stopped" in server.log()
    finally:
        api.channel.close()
        server.stop(signal.SIGKILL)
        server.close()


def _wait_for_log(server, text, timeout=30.0):
    deadline = time.monotonic() + timeout
    while text not in server.log():
        assert time.monotonic() < deadline, f"{text!r} not in the server log"
        time.sleep(0.2)


def _launch(args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "serving.server", "--port=1", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_refuses_to_start_without_models_or_with_a_bad_label(base, tmp_path):
    result = _launch([], tmp_path)
    assert result.returncode == 1 and "No model flags and no saved_models/ folder" in result.stderr
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "omni" base_path: "{base}" '
        f'version_labels {{ key: "stable" value: 9 }} }} }}'
    )
    result = _launch([f"--model_config_file={config}"], tmp_path)
    assert result.returncode == 1
    assert "Request to assign label to version 9 of model omni" in result.stderr


def test_bad_thread_flag_is_a_usage_error(tmp_path):
    result = _launch(["--tensorflow_intra_op_parallelism=-2"], tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--tensorflow_intra_op_parallelism must be >= 0. Received: -2" in result.stderr


def test_the_hardening_flags_reach_the_server(base, tmp_path):
    """Mutual TLS, Prometheus, the maximum deadline, the computation queue and the cost limits,
    from their flags."""
    ca, server_pair, client = make_pki()
    ssl = tmp_path / "ssl.config"
    ssl.write_text(
        f"server_key: {quote(server_pair.key)}\nserver_cert: {quote(server_pair.cert)}\n"
        f"custom_ca: {quote(ca)}\nclient_verify: true\n"
    )
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/metrics" }')
    credentials = grpc.ssl_channel_credentials(
        ca.encode(), client.key.encode(), client.cert.encode()
    )
    flags = [
        "--model_name=omni",
        f"--model_base_path={base}",
        "--max_inner_steps=100000",
        f"--ssl_config_file={ssl}",
        f"--monitoring_config_file={monitoring}",
        "--max_request_timeout_in_ms=1500",
        "--max_concurrent_computations=1",
        "--max_queued_computations=0",
        "--max_request_gflop=500",
    ]
    with ServerProcess(flags, channel_credentials=credentials) as server:
        with grpc.secure_channel(server.grpc_target, credentials) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            answer = stub.Predict(
                predict_request("omni", sig.ADAPT_AND_PREDICT, task()), timeout=30
            )
            assert outputs(answer)[sig.CLASSES].shape == (5,)
            with pytest.raises(grpc.RpcError) as e:  # about 8 GFLOP per 100 steps
                stub.Predict(_long_request(100000), timeout=30)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max_request_gflop" in e.value.details()
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as e:
                stub.Predict(_long_request(5000), timeout=60)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "--max_request_timeout_in_ms" in e.value.details()
            assert time.monotonic() - start < 3.5
        with grpc.insecure_channel(server.grpc_target) as plain:
            with pytest.raises(grpc.RpcError):
                prediction_service_pb2_grpc.PredictionServiceStub(plain).Predict(
                    _long_request(1), timeout=5
                )
        with urllib.request.urlopen(server.rest_url + "/metrics", timeout=10) as page:
            text = page.read().decode()
    assert ':tensorflow:serving:request_count{model_name="omni",status="OK"} 1.0' in text
    assert 'status="RESOURCE_EXHAUSTED"} 1.0' in text and 'status="DEADLINE_EXCEEDED"} 1.0' in text


def test_flags_that_cannot_work_together_are_usage_errors(tmp_path):
    result = _launch(["--grpc_workers=4"], tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--grpc_workers must exceed" in result.stderr
    result = _launch(["--rest_api_num_threads=8", "--rest_api_max_connections=4"], tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--rest_api_max_connections must be >= --rest_api_num_threads" in result.stderr
    result = _launch(["--rest_api_header_timeout_in_ms=0"], tmp_path)
    assert "--rest_api_header_timeout_in_ms must be >= 1. Received: 0" in result.stderr
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    result = _launch([f"--monitoring_config_file={monitoring}", "--rest_api_port=0"], tmp_path)
    assert result.returncode != 0 and "need --rest_api_port" in result.stderr
