"""Tiny exports, the real server in a subprocess, stubs and HTTP for the serving tests."""

from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request

import grpc
import keras
import numpy as np
import tensorflow as tf
from grpc_health.v1 import health_pb2_grpc
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from keras_reptile.algorithms import FunctionalModel, InnerOptimizer
from keras_reptile.export import signatures as sig
from keras_reptile.export.saved_model import ServingModule, export_saved_model
from keras_reptile.models import build_model
from serving.client import predict_request  # noqa: F401 - the tests build requests with it
from serving.client import rest_model_url as client_model_url
from serving.launcher import ServerProcess

WAYS, SHAPE, STEPS, LR, BATCH = 5, (28, 28, 1), 2, 0.001, 5
# Limits of the shared server: small, so over-limit requests stay cheap.
LIMIT_FLAGS = [
    "--max_support=40",
    "--max_queries=20",
    "--max_inner_steps=50",
    f"--max_message_bytes={2**20}",
]


@functools.cache
def _scratch() -> pathlib.Path:
    path = pathlib.Path(tempfile.mkdtemp(prefix="serving-tests-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def make_module(kind: str, seed: int) -> ServingModule:
    """A tiny module: 'omni' (omniglot_cnn, 5 ways, Adam) or 'sine' (sine_mlp, SGD)."""
    keras.utils.set_random_seed(seed)
    if kind == "omni":
        fmodel = FunctionalModel(build_model("omniglot_cnn", WAYS, SHAPE), regression=False)
        optimizer, ways, lr = InnerOptimizer("adam"), WAYS, LR
    else:
        fmodel = FunctionalModel(build_model("sine_mlp", 1, (1,)), regression=True)
        optimizer, ways, lr = InnerOptimizer("sgd"), 1, 0.02
    weights = [w.numpy() for w in fmodel.initial_weights()]
    adam_v = [np.full(w.shape, 1e-4, np.float32) for w in weights]
    return ServingModule(
        fmodel,
        weights,
        optimizer,
        10.0,
        adam_v,
        ways=ways,
        inner_steps=STEPS,
        learning_rate=lr,
        batch_size=BATCH,
    )


@functools.cache
def export(kind: str, seed: int = 1) -> str:
    """The version folder of a tiny export (made once per test run)."""
    module = make_module(kind, seed)
    shape = list(SHAPE) if kind == "omni" else [1]
    card = {"preset": f"test_{kind}", "ways": WAYS if kind == "omni" else 1, "input_shape": shape}
    return export_saved_model(module, str(_scratch() / f"{kind}-{seed}"), card, kind)


def install(version_dir: str | None, base: pathlib.Path, version: int, edit=None) -> pathlib.Path:
    """Copies an export to `base/<version>` atomically (aside, `edit(aside)`, then renamed)."""
    base.mkdir(parents=True, exist_ok=True)
    aside = base / f".copy-{version}"
    if version_dir is None:
        aside.mkdir()
    else:
        shutil.copytree(version_dir, aside)
    if edit is not None:
        edit(aside)
    final = base / str(version)
    os.rename(aside, final)
    return final


def task(seed: int = 0, shots: int = 2, queries: int = WAYS):
    rng = np.random.default_rng(seed)
    support = (rng.random((WAYS * shots, *SHAPE)) > 0.5).astype(np.float32)
    labels = np.repeat(np.arange(WAYS, dtype=np.int32), shots)
    query = (rng.random((queries, *SHAPE)) > 0.5).astype(np.float32)
    return {sig.SUPPORT_IMAGES: support, sig.SUPPORT_LABELS: labels, sig.QUERY_IMAGES: query}


def sine_task(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5, 5, (10, 1)).astype(np.float32)
    return {
        sig.SUPPORT_INPUTS: x,
        sig.SUPPORT_TARGETS: np.sin(x).astype(np.float32),
        sig.QUERY_INPUTS: np.linspace(-5, 5, 7, dtype=np.float32)[:, None],
    }


# The shared server: two omni versions with labels (config file) and a sine model.

CONFIG = """
model_config_list {{
  config {{
    name: "omni"
    base_path: "{root}/omni"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{ name: "sine" base_path: "{root}/sine" model_platform: "tensorflow" }}
}}
"""


@functools.cache
def shared_server() -> ServerProcess:
    """One server for the read-only API tests (started once, stopped at exit)."""
    root = _scratch() / "shared"
    install(export("omni", 1), root / "omni", 1)
    install(export("omni", 2), root / "omni", 2)
    install(export("omni", 1), root / "omni", 3)  # on disk, but not in the specific policy
    install(export("sine", 1), root / "sine", 1)
    (root / "models.config").write_text(CONFIG.format(root=root))
    server = ServerProcess([f"--model_config_file={root / 'models.config'}", *LIMIT_FLAGS])
    atexit.register(server.close)
    return server.start()


@dataclasses.dataclass
class Stubs:
    channel: grpc.Channel
    prediction: prediction_service_pb2_grpc.PredictionServiceStub
    model: model_service_pb2_grpc.ModelServiceStub
    health: health_pb2_grpc.HealthStub


def stubs(target: str) -> Stubs:
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)])
    return Stubs(
        channel,
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
        health_pb2_grpc.HealthStub(channel),
    )


def outputs(response) -> dict[str, np.ndarray]:
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def http(method: str, url: str, body=None, raw: bytes | None = None, timeout: float = 60):
    """(status, decoded JSON) of a real HTTP request; error statuses are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def rest_model_url(server: ServerProcess, model: str, version=None, label=None) -> str:
    return client_model_url(server.rest_url, model, version, label)


def columnar(signature: str, inputs: dict) -> dict:
    return {
        "signature_name": signature,
        "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()},
    }
