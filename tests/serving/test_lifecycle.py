"""Launching with TF Serving's flags, deadlines, graceful SIGTERM, refusing to start."""

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

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
