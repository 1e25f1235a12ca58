"""ModelManager in-process: policies, failed loads, swaps that wait for requests in flight."""

import threading
import time

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2

from keras_reptile.export import signatures as sig
from serving.errors import ServingError
from serving.model_config import ModelSource, config_from_flags
from serving.model_manager import ModelManager
from serving.validation import Limits
from tests.serving.helpers import export, install

pytestmark = pytest.mark.slow
State = get_model_status_pb2.ModelVersionStatus.State


def _manager(base, **kw):
    manager = ModelManager([ModelSource("omni", str(base), **kw)], Limits(), poll_seconds=0)
    manager.start()
    return manager


def _states(manager):
    return {s.version: s.state for s in manager.status("omni")}


def _write(name, data):
    return lambda folder: (folder / name).write_bytes(data)


def test_failed_versions_never_replace_the_serving_one(tmp_path):
    base = tmp_path / "omni"
    install(export("omni", 1), base, 1)
    manager = _manager(base)
    install(None, base, 3, edit=_write("saved_model.pb", b"not a SavedModel"))
    install(
        export("omni", 1), base, 4, edit=_write(f"assets.extra/{sig.WARMUP_FILE}", b"junk" * 64)
    )
    manager.poll()
    status = {s.version: s for s in manager.status("omni")}
    assert {v: s.state for v, s in status.items()} == {
        1: State.AVAILABLE,
        3: State.END,
        4: State.END,
    }
    assert (
        status[3].error_code != grpc.StatusCode.OK and "saved_model.pb" in status[3].error_message
    )
    assert status[4].error_code == grpc.StatusCode.DATA_LOSS and "warmup" in status[4].error_message
    with manager.servable("omni") as servable:
        assert servable.version == 1
    manager.poll()  # unchanged failed versions are not retried
    assert _states(manager)[3] == State.END
    manager.stop()
    assert _states(manager)[1] == State.END


def test_unloading_waits_for_requests_in_flight(tmp_path):
    base = tmp_path / "omni"
    install(export("omni", 1), base, 1)
    manager = _manager(base)
    install(export("omni", 2), base, 2)
    poll = threading.Thread(target=manager.poll)
    with manager.servable("omni") as old:
        assert old.version == 1
        poll.start()
        deadline = time.monotonic() + 120
        while _states(manager).get(1) != State.UNLOADING and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _states(manager) == {1: State.UNLOADING, 2: State.AVAILABLE}
        with manager.servable("omni") as new:  # new requests already go to version 2
            assert new.version == 2
        assert poll.is_alive()  # still waiting for this request
    poll.join(60)
    assert _states(manager) == {1: State.END, 2: State.AVAILABLE}
    manager.stop()


def test_policies_and_labels(tmp_path):
    base = tmp_path / "omni"
    for version in (1, 2, 3):
        install(export("omni", 1), base, version)
    manager = _manager(base, policy=("latest", 2))
    assert _states(manager) == {2: State.AVAILABLE, 3: State.AVAILABLE}
    config = config_from_flags("omni", str(base))
    model = config.model_config_list.config[0]
    model.model_version_policy.specific.versions.extend([1, 3])
    model.version_labels["stable"] = 1
    manager.reload_config(config)
    assert _states(manager) == {1: State.AVAILABLE, 2: State.END, 3: State.AVAILABLE}
    with manager.servable("omni", label="stable") as servable:
        assert servable.version == 1
    with pytest.raises(ServingError) as e:
        with manager.servable("omni", version=2):
            pass
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    model.model_version_policy.all.SetInParent()
    manager.reload_config(config)
    assert set(_states(manager).values()) == {State.AVAILABLE}
    manager.stop()


def test_base_paths_outside_the_allowed_roots_are_refused_at_start_and_on_reload(tmp_path):
    allowed, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    install(export("omni", 1), allowed / "omni", 1)
    install(export("omni", 1), elsewhere / "omni", 1)
    (allowed / "link").symlink_to(elsewhere / "omni")  # a link out of the root counts as out
    roots = (str(allowed),)
    with pytest.raises(ServingError, match=r"outside the folders .*--model_base_path_roots"):
        ModelManager(
            [ModelSource("omni", str(elsewhere / "omni"))], Limits(), base_path_roots=roots
        )
    manager = ModelManager(
        [ModelSource("omni", str(allowed / "omni"))], Limits(), poll_seconds=0,
        base_path_roots=roots,
    )  # fmt: skip
    manager.start()
    for path in (elsewhere / "omni", allowed / "link"):
        with pytest.raises(ServingError) as e:
            manager.reload_config(config_from_flags("omni", str(path)))
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert _states(manager) == {1: State.AVAILABLE}  # nothing was changed
    manager.reload_config(config_from_flags("other", str(allowed / "omni")))
    manager.stop()


def test_the_reload_rpc_can_be_turned_off(tmp_path):
    from serving.service import Service

    install(export("omni", 1), tmp_path / "omni", 1)
    manager = ModelManager([ModelSource("omni", str(tmp_path / "omni"))], Limits(), poll_seconds=0)
    manager.start()
    service = Service(manager, Limits(), allow_reload=False)
    with pytest.raises(ServingError, match="--allow_reload_config_rpc=false") as e:
        service.reload(config_from_flags("omni", str(tmp_path / "omni")))
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    manager.stop()
