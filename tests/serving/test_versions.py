"""Versions on a live server: the zoo, hot swap under load, failed loads, config reloads."""

import shutil
import threading
import time

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2
from tensorflow_serving.config import model_server_config_pb2

from keras_reptile.export import signatures as sig
from serving.launcher import ServerProcess
from tests.serving.helpers import export, http, install, predict_request, stubs, task

pytestmark = pytest.mark.slow
State = get_model_status_pb2.ModelVersionStatus.State


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A server started with no model flags in a folder holding saved_models/{omni,sine}."""
    cwd = tmp_path_factory.mktemp("zoo")
    install(export("omni", 1), cwd / "saved_models" / "omni", 1)
    install(export("sine", 1), cwd / "saved_models" / "sine", 1)
    with ServerProcess(["--file_system_poll_wait_seconds=0.5"], cwd=str(cwd)) as server:
        api = stubs(server.grpc_target)
        yield server, api, cwd / "saved_models"
        api.channel.close()


def _status(api, model):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    try:
        response = api.model.GetModelStatus(request, timeout=10)
    except grpc.RpcError:
        return {}
    return {s.version: s for s in response.model_version_status}


def _wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"Timed out waiting for {what}")


def _served_version(api, model="omni"):
    response = api.prediction.Predict(
        predict_request(model, sig.ADAPT_AND_PREDICT, task()), timeout=30
    )
    return response.model_spec.version.value


def test_zoo_serves_every_folder_under_its_name(zoo):
    server, api, _ = zoo
    for model in ("omni", "sine"):
        assert {v: s.state for v, s in _status(api, model).items()} == {1: State.AVAILABLE}
    status, body = http("GET", f"{server.rest_url}/v1/models/sine")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"


def test_hot_swap_under_load_fails_no_request(zoo):
    server, api, models = zoo
    stop, lock = threading.Event(), threading.Lock()
    versions, errors = [], []

    def client():
        channel_api = stubs(server.grpc_target)
        request = predict_request("omni", sig.ADAPT_AND_PREDICT, task())
        while not stop.is_set():
            try:
                response = channel_api.prediction.Predict(request, timeout=60)
                with lock:
                    versions.append(response.model_spec.version.value)
            except grpc.RpcError as e:
                with lock:
                    errors.append(f"{e.code()}: {e.details()}")
        channel_api.channel.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        _wait_for(lambda: len(versions) >= 16, what="requests on version 1")
        install(export("omni", 2), models / "omni", 2)
        _wait_for(lambda: versions[-8:] == [2] * 8, what="version 2 to be served")
        seen = len(versions)
        _wait_for(lambda: len(versions) >= seen + 16, what="more requests on version 2")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert versions[0] == 1 and versions[-1] == 2
    status = _status(api, "omni")
    assert (status[1].state, status[1].status.error_code) == (State.END, 0)
    assert status[2].state == State.AVAILABLE


def _write(name, data):
    return lambda folder: (folder / name).write_bytes(data)


def test_failing_versions_are_reported_and_never_replace_the_serving_one(zoo):
    _, api, models = zoo
    broken = install(None, models / "omni", 3, edit=_write("saved_model.pb", b"not a SavedModel"))
    bad_warmup = install(  # loads, but its warmup file is junk
        export("omni", 2),
        models / "omni",
        4,
        edit=_write(f"assets.extra/{sig.WARMUP_FILE}", b"junk" * 64),
    )
    _wait_for(
        lambda: all(
            v in _status(api, "omni") and _status(api, "omni")[v].state == State.END for v in (3, 4)
        ),
        what="both loads to fail",
    )
    status = _status(api, "omni")
    for version in (3, 4):
        assert status[version].status.error_code != 0
        assert (
            f"Failed to load version {version} of model omni"
            in status[version].status.error_message
        )
    assert "warmup" in status[4].status.error_message
    assert status[2].state == State.AVAILABLE
    assert _served_version(api) == 2

    # Files that change are tried again: a good version 3 replaces the broken one.
    shutil.rmtree(bad_warmup)
    shutil.rmtree(broken)
    install(export("omni", 1), models / "omni", 3)
    _wait_for(lambda: _served_version(api) == 3, what="the repaired version 3")
    assert _status(api, "omni")[2].state == State.END


def test_a_new_model_folder_is_served_without_restart(zoo):
    _, api, models = zoo
    install(export("sine", 1), models / "sine2", 1)
    _wait_for(
        lambda: 1 in _status(api, "sine2") and _status(api, "sine2")[1].state == State.AVAILABLE,
        what="sine2",
    )
    assert _served_version(api, "omni") == 3
    request = predict_request("sine2", sig.SERVING_DEFAULT, {sig.INPUTS: np.float32([[0.5]])})
    assert api.prediction.Predict(request, timeout=30).model_spec.name == "sine2"


def _config(models, **labels):
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(
        name="omni", base_path=str(models / "omni"), model_platform="tensorflow"
    )
    model.model_version_policy.specific.versions.extend([2, 3])
    for label, version in labels.items():
        model.version_labels[label] = version
    return config


def test_reload_config_serves_exactly_the_new_list(zoo):
    _, api, models = zoo
    request = model_management_pb2.ReloadConfigRequest(config=_config(models, prod=2, next=3))
    response = api.model.HandleReloadConfigRequest(request, timeout=120)
    assert response.status.error_code == 0
    assert {v: s.state for v, s in _status(api, "omni").items() if s.state == State.AVAILABLE} == {
        2: State.AVAILABLE,
        3: State.AVAILABLE,
    }
    assert _status(api, "sine")[1].state == State.END  # not in the new list: unloaded
    with pytest.raises(grpc.RpcError) as e:
        _served_version(api, "sine")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    labelled = predict_request("omni", sig.ADAPT_AND_PREDICT, task(), label="prod")
    assert api.prediction.Predict(labelled, timeout=30).model_spec.version.value == 2


def _reload_error(api, config):
    with pytest.raises(grpc.RpcError) as e:
        api.model.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), timeout=120
        )
    return e.value.code(), e.value.details()


def test_reload_config_errors(zoo):
    _, api, models = zoo
    code, message = _reload_error(api, _config(models, old=1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        "Request to assign label to version 1 of model omni, which is not currently available"
        in message
    )
    labelled = predict_request("omni", sig.ADAPT_AND_PREDICT, task(), label="prod")
    assert api.prediction.Predict(labelled, timeout=30).model_spec.version.value == 2  # labels kept

    custom = model_server_config_pb2.ModelServerConfig()
    custom.custom_model_config.Pack(model_server_config_pb2.ModelServerConfig())
    code, message = _reload_error(api, custom)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Only ModelConfigList" in message

    twice = _config(models)
    twice.model_config_list.config.append(twice.model_config_list.config[0])
    code, message = _reload_error(api, twice)
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT
        and "Illegal to list model omni multiple times" in message
    )

    empty = _config(models)
    empty.model_config_list.config.add(name="ghost", base_path=str(models / "ghost"))
    code, message = _reload_error(api, empty)
    assert (
        code == grpc.StatusCode.UNKNOWN
        and "1 model(s) did not become available: {{ghost" in message
    )
    assert _served_version(api) == 3
