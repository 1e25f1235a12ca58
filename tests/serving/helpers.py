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
import numpy as np
import tensorflow as tf
from grpc_health.v1 import health_pb2_grpc
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from keras_reptile.config import Protocol
from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import Measurement
from keras_reptile.export.saved_model import ServingModule, export_saved_model
from serving.client import predict_request  # noqa: F401 - the tests build requests with it
from serving.client import rest_model_url as client_model_url
from serving.launcher import ServerProcess
from tests.export import helpers
from tests.export.helpers import OMNI_RECIPE, SINE_RECIPE

WAYS, SHAPE, STEPS, LR, BATCH = 5, (28, 28, 1), 2, 0.001, 5
TASKS = sig.ADAPT_AND_PREDICT_TASKS
# Limits of the shared server: small, so over-limit requests stay cheap.
LIMIT_FLAGS = [
    "--max_support=40",
    "--max_queries=20",
    "--max_inner_steps=50",
    f"--max_message_bytes={2**20}",
    "--max_tasks=4",
]


@functools.cache
def _scratch() -> pathlib.Path:
    path = pathlib.Path(tempfile.mkdtemp(prefix="serving-tests-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


PROTOCOLS = {
    "omni": Protocol(shots=2, eval_iters=STEPS, eval_batch=BATCH, learning_rate=LR),
    "sine": Protocol(shots=10, eval_iters=STEPS, eval_batch=BATCH, learning_rate=0.02),
}
RECIPES = {"omni": OMNI_RECIPE, "sine": SINE_RECIPE}


def make_module(kind: str, seed: int) -> ServingModule:
    """A tiny module: 'omni' (omniglot_cnn, 5 ways, Adam) or 'sine' (sine_mlp, SGD)."""
    return helpers.make_module(RECIPES[kind], PROTOCOLS[kind], seed=seed)


def _results(kind: str) -> tuple[Measurement, ...]:
    """Made-up results for the card (meta-iteration 0, as `helpers.make_card` writes)."""
    protocol = PROTOCOLS[kind]
    if kind == "sine":
        return (Measurement("test", protocol, "mse", 0.5, 0.05, 10, 0),)
    return (
        Measurement("test", protocol, "accuracy", 0.25, 0.01, 10, 0),
        Measurement("test", protocol.replace(transductive=True), "accuracy", 0.3, 0.02, 10, 0),
    )


@functools.cache
def export(kind: str, seed: int = 1) -> str:
    """The version folder of a tiny export (made once per test run); its card's recipe names
    `seed`, so the cards of two seeds differ."""
    module = make_module(kind, seed)
    recipe = RECIPES[kind].replace(seed=seed)
    card = helpers.make_card(f"test_{kind}", module, recipe, _results(kind))
    return export_saved_model(module, str(_scratch() / f"{kind}-{seed}"), card)


def remove_card(version_dir: pathlib.Path) -> None:
    """Deletes a version's model card (an `install` edit): it is served from its signatures."""
    (pathlib.Path(version_dir) / "assets.extra" / sig.CARD_FILE).unlink()


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


def stack_tasks(tasks: list[dict]) -> dict[str, np.ndarray]:
    """Single-task inputs stacked on a leading task axis (`adapt_and_predict_tasks`' inputs)."""
    return {k: np.stack([t[k] for t in tasks]) for k in tasks[0]}


def omni_tasks(count: int = 2) -> dict[str, np.ndarray]:
    return stack_tasks([task(seed) for seed in range(count)])


def assert_same_answer(stacked: dict, index: int, alone: dict) -> None:
    """Task `index` of an `adapt_and_predict_tasks` answer is the `adapt_and_predict` answer."""
    if sig.PREDICTIONS in alone:
        np.testing.assert_allclose(
            np.asarray(stacked[sig.PREDICTIONS])[index], alone[sig.PREDICTIONS], atol=1e-5
        )
        return
    np.testing.assert_array_equal(np.asarray(stacked[sig.CLASSES])[index], alone[sig.CLASSES])
    np.testing.assert_allclose(
        np.asarray(stacked[sig.PROBABILITIES])[index], alone[sig.PROBABILITIES], atol=1e-5
    )


# The shared server: two omni versions with labels (config file), a sine model, and "bare": the
# sine export without its model card.

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
  config {{ name: "bare" base_path: "{root}/bare" model_platform: "tensorflow" }}
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
    install(export("sine", 1), root / "bare", 1, edit=remove_card)
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
