"""TensorFlow Serving's gRPC API: PredictionService, ModelService and the gRPC health service.

GetModelMetadata answers TF Serving's `signature_def` field (a `SignatureDefMap`) and this server's
`model_card` field: the version's model card JSON as a `google.protobuf.StringValue`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import validation
from serving.cancellation import Cancellation, Timeouts
from serving.errors import ServingError, invalid
from serving.metrics import ServingMetrics
from serving.service import MODEL_CARD, SIGNATURE_DEF, Service, Target, check_deadline

SERVICE_NAMES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


def _answer(
    context: grpc.ServicerContext,
    method: str,
    fn: Callable,
    metrics: ServingMetrics | None = None,
    model_name: str = "",
):
    """Runs `fn`, turning a ServingError (or anything unexpected) into a gRPC status; counts
    the request and its latency in `metrics` (under `model_name`)."""
    start, code = time.monotonic(), grpc.StatusCode.OK
    try:
        return fn()
    except ServingError as e:
        code = e.code
        if e.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            logging.info("%s: %s", method, e.message)
        context.abort(e.code, e.message)
    except Exception as e:  # a bad request never takes the server down
        code = grpc.StatusCode.INTERNAL
        logging.exception("%s failed", method)
        context.abort(grpc.StatusCode.INTERNAL, f"{method} internal error: {type(e).__name__}")
    finally:
        if metrics is not None:
            seconds = time.monotonic() - start
            metrics.record_request(model_name, method, "GRPC", code.name, seconds)


def _target(request) -> Target:
    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")
    spec = request.model_spec
    if not spec.name:
        raise invalid("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return Target(spec.name, version=int(spec.version.value))
    if choice == "version_label":
        return Target(spec.name, label=spec.version_label)
    return Target(spec.name)


def _deadline(context: grpc.ServicerContext, timeouts: Timeouts) -> tuple[float, Cancellation]:
    """The request's deadline (the client's, else the server's default, cut to the server's
    maximum), and a Cancellation fired when the RPC ends early."""
    deadline, reason = timeouts.grpc(context.time_remaining())
    check_deadline(deadline, "the request")
    cancellation = Cancellation(reason)

    def on_rpc_end():
        if time.monotonic() >= deadline - 0.01:
            cancellation.cancel(grpc.StatusCode.DEADLINE_EXCEEDED, reason)
        else:
            cancellation.cancel(grpc.StatusCode.CANCELLED, "the client cancelled the request")

    context.add_callback(on_rpc_end)
    return deadline, cancellation


def _fill_model_spec(model_spec, name: str, version: int, signature_name: str = "") -> None:
    model_spec.Clear()
    model_spec.name = name
    model_spec.version.value = version
    if signature_name:
        model_spec.signature_name = signature_name


def _feature_array(feature) -> np.ndarray:
    kind = feature.WhichOneof("kind")
    if kind == "float_list":
        return np.asarray(feature.float_list.value, np.float32)
    if kind == "int64_list":
        return np.asarray(feature.int64_list.value, np.int64)
    return np.asarray(list(feature.bytes_list.value), object)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict (any signature), Classify (serving_default of classifiers), GetModelMetadata."""

    def __init__(self, service: Service):
        self._service = service

    def _answer(self, context, method: str, fn: Callable, request):
        name = request.model_spec.name
        return _answer(context, method, fn, self._service.metrics, name)

    def Predict(self, request, context):
        def run():
            target = _target(request)
            deadline, cancellation = _deadline(context, self._service.timeouts)
            result = self._service.predict(
                target,
                request.model_spec.signature_name,
                lambda spec: validation.arrays_from_protos(
                    spec, request.inputs, self._service.limits
                ),
                list(request.output_filter),
                deadline,
                cancellation,
            )
            response = predict_pb2.PredictResponse()
            _fill_model_spec(
                response.model_spec, result.name, result.version, result.signature_name
            )
            for key, value in result.outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response

        return self._answer(context, "Predict", run, request)

    def Classify(self, request, context):
        def run():
            target = _target(request)
            deadline, cancellation = _deadline(context, self._service.timeouts)
            kind = request.input.WhichOneof("kind")
            if kind == "example_list":
                examples, shared = request.input.example_list.examples, {}
            elif kind == "example_list_with_context":
                with_context = request.input.example_list_with_context
                examples = with_context.examples
                shared = {
                    k: _feature_array(f) for k, f in with_context.context.features.feature.items()
                }
            else:
                raise invalid("Input is empty.")
            rows = [
                {**shared, **{k: _feature_array(f) for k, f in e.features.feature.items()}}
                for e in examples
            ]
            result = self._service.classify(
                target, request.model_spec.signature_name, rows, deadline, cancellation
            )
            response = classification_pb2.ClassificationResponse()
            _fill_model_spec(
                response.model_spec, result.name, result.version, result.signature_name
            )
            for scores in result.outputs["scores"]:
                classification = response.result.classifications.add()
                for label, score in enumerate(scores):
                    classification.classes.add(label=str(label), score=float(score))
            return response

        return self._answer(context, "Classify", run, request)

    def Regress(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "Regress is not served: the signatures take tensors, not tf.Example; use Predict.",
        )

    def MultiInference(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not served; use Predict or Classify."
        )

    def GetModelMetadata(self, request, context):
        def run():
            fields = list(request.metadata_field)
            metadata = self._service.metadata(_target(request), fields)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            _fill_model_spec(response.model_spec, metadata.name, metadata.version)
            if SIGNATURE_DEF in fields:
                response.metadata[SIGNATURE_DEF].Pack(signature_map(metadata.signature_defs))
            if MODEL_CARD in fields:
                card = wrappers_pb2.StringValue(value=metadata.card.to_json())
                response.metadata[MODEL_CARD].Pack(card)
            return response

        return self._answer(context, "GetModelMetadata", run, request)


def signature_map(signature_defs) -> get_model_metadata_pb2.SignatureDefMap:
    """The `SignatureDefMap` of SignatureDef protos by name (shared with REST)."""
    return get_model_metadata_pb2.SignatureDefMap(signature_def=signature_defs)


def status_response(statuses) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatusResponse from `ModelManager.status` entries (shared with REST)."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        entry = response.model_version_status.add(version=status.version, state=status.state)
        entry.status.error_code = status.error_code.value[0]
        entry.status.error_message = status.error_message
    return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, service: Service):
        self._service = service

    def GetModelStatus(self, request, context):
        def run():
            target = _target(request)
            return status_response(self._service.status(target.name, target.version))

        return _answer(context, "GetModelStatus", run)

    def HandleReloadConfigRequest(self, request, context):
        def run():
            self._service.reload(request.config)
            return model_management_pb2.ReloadConfigResponse()

        return _answer(context, "HandleReloadConfigRequest", run)


def build_server(
    service: Service,
    host: str,
    port: int,
    workers: int,
    max_message_bytes: int,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A started gRPC server with the three services (over TLS with `credentials`, from
    `serving.tls`); returns it, its port and its health."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(service), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(service), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 in brackets
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"Could not bind the gRPC port. Received: --host={host} --port={port}")
    server.start()
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer
