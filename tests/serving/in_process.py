"""The server's parts assembled in the test process, on free loopback ports (no subprocess).

`serving.server.main` assembles the same parts from its flags; these tests give them directly, so
one loaded model serves several configurations (deadlines, queues, metrics) cheaply.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import grpc

from serving import grpc_service, model_config, rest
from serving.model_manager import ModelManager
from serving.service import Service
from serving.validation import Limits
from tests.serving.helpers import Stubs, stubs


def manager(name: str, base_path: str, limits: Limits, **options) -> ModelManager:
    """A started manager serving `base_path`'s versions as `name` (no polling); `options` go to
    `ModelManager`."""
    config = model_config.config_from_flags(name, str(base_path))
    sources = model_config.sources_from_config(config)
    result = ModelManager(sources, limits, poll_seconds=0, **options)
    result.start()
    return result


@contextlib.contextmanager
def omni_manager(folder, limits: Limits) -> Iterator[ModelManager]:
    """A started manager serving the tiny "omni" export (version 1) from `folder`, stopped after."""
    from tests.serving.helpers import export, install

    install(export("omni", 1), folder / "omni", 1)
    result = manager("omni", folder / "omni", limits)
    try:
        yield result
    finally:
        result.stop()


@dataclasses.dataclass
class Running:
    service: Service
    grpc_target: str
    rest_url: str
    api: Stubs | None


@contextlib.contextmanager
def serve(
    service: Service, credentials: grpc.ServerCredentials | None = None, **rest_options
) -> Iterator[Running]:
    """`service` over gRPC (TLS with `credentials`; `api` then is None) and REST until the block
    ends."""
    grpc_server, port, _ = grpc_service.build_server(
        service, "127.0.0.1", 0, 8, service.limits.max_message_bytes, credentials
    )
    rest_server = rest.build_server(service, "127.0.0.1", 0, **rest_options)
    target = f"127.0.0.1:{port}"
    api = stubs(target) if credentials is None else None
    try:
        yield Running(service, target, f"http://127.0.0.1:{rest_server.server_address[1]}", api)
    finally:
        if api is not None:
            api.channel.close()
        grpc_server.stop(0)
        rest_server.shutdown()
        rest_server.server_close()
