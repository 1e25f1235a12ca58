"""Checks a request's tensors against the signature contract before anything runs.

Names, dtypes and shapes come from `keras_reptile.export.signatures.signature_specs`; the number of
classes (`ways`) and the example shape come from the model card; the maxima are server flags.
Inputs of the multi-task signatures carry a leading task axis: tasks are counted against
`--max_tasks`, examples per task against `--max_support` and `--max_queries`. A task's
`adapted_weights` must have the length the version's `adapt` signature declares, and
`predict_adapted_tasks` as many of them as query tasks. Every failure is a
`ServingError` saying what was received and what was expected. Values are never cast: a tensor of
the wrong dtype is rejected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from keras_reptile import protocol_rules
from keras_reptile.export import signatures as sig
from keras_reptile.task_kind import TaskKind
from serving.errors import ServingError, invalid

SUPPORT_KEYS = (sig.SUPPORT_IMAGES, sig.SUPPORT_INPUTS)
TARGET_KEYS = (sig.SUPPORT_LABELS, sig.SUPPORT_TARGETS)
QUERY_KEYS = (sig.QUERY_IMAGES, sig.QUERY_INPUTS, sig.IMAGES, sig.INPUTS)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Server-wide request limits (the `--max_*` flags)."""

    max_support: int = 500  # per task
    max_queries: int = 500  # per task
    max_inner_steps: int = 1000
    max_message_bytes: int = 64 * 2**20
    max_tasks: int = 64  # tasks in one adapt_and_predict_tasks request


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a version's model card says about its inputs."""

    ways: int
    input_shape: tuple[int, ...]
    task_kind: TaskKind


def _keys(keys: Iterable[str]) -> str:
    return "{" + ",".join(sorted(keys)) + "}"


def _shape_text(shape) -> str:
    if shape is None:
        return "any shape"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _dtype_name(dtype: tf.DType) -> str:
    return {"float32": "float", "float64": "double", "float16": "half"}.get(dtype.name, dtype.name)


def check_input_names(signature: sig.SignatureSpec, keys: Iterable[str]) -> None:
    """Every required input present, no unknown one (TF Serving's "Sent extra / Missing" text)."""
    keys = set(keys)
    expected = {i.key for i in signature.inputs}
    required = {i.key for i in signature.inputs if not i.optional}
    extra, missing = keys - expected, required - keys
    if extra or missing:
        optional = expected - required
        also = f" and optionally {_keys(optional)}" if optional else ""
        raise invalid(
            f'Request inputs do not match signature "{signature.name}". Sent extra: {_keys(extra)}.'
            f" Missing but required: {_keys(missing)}. Expected inputs {_keys(required)}{also};"
            f" received {_keys(keys)}."
        )


def check_dtype(signature: sig.SignatureSpec, spec: sig.InputSpec, dtype: tf.DType) -> None:
    if dtype != spec.dtype:
        enum_name = types_pb2.DataType.Name(spec.dtype.as_datatype_enum)
        raise invalid(
            f'Expects input "{spec.key}" of signature "{signature.name}" to be '
            f"{_dtype_name(spec.dtype)} but {_dtype_name(dtype)} is provided. Values are never "
            f"cast: send {spec.dtype.name} ({enum_name})."
        )


def check_shape(
    signature: sig.SignatureSpec, spec: sig.InputSpec, shape: tuple[int, ...], limits: Limits
) -> None:
    """Rank and fixed dimensions as in the contract, non-empty batches, and the set maxima."""
    expected = spec.shape
    if expected is not None and (
        len(shape) != len(expected)
        or any(e is not None and e != d for e, d in zip(expected, shape))
    ):
        what = "a scalar" if expected == () else _shape_text(expected) + " (?: any size)"
        if spec.key == sig.ADAPTED_WEIGHTS and expected[-1] is not None:
            what += (
                f": each task's {expected[-1]} adapted weights, as this version's "
                f'"{sig.ADAPT}" signature returns them'
            )
        raise invalid(
            f'Input "{spec.key}" of signature "{signature.name}" has shape {_shape_text(shape)}; '
            f"expected {what}."
        )
    if spec.key not in SUPPORT_KEYS + TARGET_KEYS + QUERY_KEYS or len(shape) < 1 + spec.tasks:
        return
    where = f'Input "{spec.key}" of signature "{signature.name}"'
    if spec.tasks:
        if shape[0] == 0:
            raise invalid(
                f"{where} holds no task (shape {_shape_text(shape)}); expected at least one task."
            )
        if shape[0] > limits.max_tasks:
            raise invalid(
                f"{where} holds {shape[0]} tasks; the server accepts at most {limits.max_tasks} "
                "(--max_tasks)."
            )
    count = shape[1] if spec.tasks else shape[0]
    kind, limit, flag = (
        ("query", limits.max_queries, "--max_queries")
        if spec.key in QUERY_KEYS
        else ("support", limits.max_support, "--max_support")
    )
    per_task = " per task" if spec.tasks else ""
    if count == 0:
        raise invalid(
            f"{where} is empty (shape {_shape_text(shape)}); expected at least one {kind} "
            f"example{per_task}."
        )
    if count > limit:
        raise invalid(
            f'Input "{spec.key}" has {count} {kind} examples{per_task}; the server accepts at '
            f"most {limit} ({flag})."
        )


def check_decoded_size(key: str, shape: tuple[int, ...], dtype: tf.DType, limits: Limits) -> None:
    """A short TensorProto may expand (its last value repeats): bound the decoded size."""
    size = int(np.prod(shape, dtype=np.float64)) * max(dtype.size, 1)
    if size > limits.max_message_bytes:
        raise ServingError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f'Input "{key}" of shape {_shape_text(shape)} would take {size} bytes; the server '
            f"accepts at most {limits.max_message_bytes} (--max_message_bytes).",
        )


def arrays_from_protos(
    signature: sig.SignatureSpec, protos: Mapping[str, tensor_pb2.TensorProto], limits: Limits
) -> dict[str, np.ndarray]:
    """Checks names, dtypes and shapes from the TensorProto headers, then decodes them."""
    check_input_names(signature, protos)
    arrays = {}
    for spec in signature.inputs:  # the contract's order: the same request, the same message
        if spec.key not in protos:
            continue
        key, proto = spec.key, protos[spec.key]
        try:
            dtype = tf.dtypes.as_dtype(proto.dtype)
        except TypeError:
            dtype = None
        if dtype is None or proto.dtype == 0:
            raise invalid(
                f'Input "{key}" has no valid dtype (enum value {proto.dtype}); '
                f"expected {spec.dtype.name}."
            )
        check_dtype(signature, spec, dtype)
        if proto.tensor_shape.unknown_rank:
            raise invalid(
                f'Input "{key}" has an unknown rank; expected shape {_shape_text(spec.shape)}.'
            )
        shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
        if any(d < 0 for d in shape):
            raise invalid(f'Input "{key}" has a negative dimension in shape {list(shape)}.')
        check_shape(signature, spec, shape, limits)
        check_decoded_size(key, shape, dtype, limits)
        try:
            arrays[key] = tf.make_ndarray(proto)
        except Exception as e:  # any decoding failure is the request's fault
            raise invalid(
                f"tensor parsing error: {key}: the values do not fill shape "
                f"{_shape_text(shape)} of {spec.dtype.name} ({type(e).__name__})."
            ) from None
    return arrays


def check_arrays(
    signature: sig.SignatureSpec, arrays: Mapping[str, np.ndarray], limits: Limits
) -> dict[str, np.ndarray]:
    """`arrays_from_protos` for arrays already decoded (REST): names, dtypes, shapes."""
    check_input_names(signature, arrays)
    for spec in signature.inputs:
        if spec.key in arrays:
            check_dtype(signature, spec, tf.dtypes.as_dtype(arrays[spec.key].dtype))
            check_shape(signature, spec, tuple(arrays[spec.key].shape), limits)
    return dict(arrays)


def check_values(
    signature: sig.SignatureSpec,
    arrays: Mapping[str, np.ndarray],
    info: ModelInfo,
    limits: Limits,
    defaulted: Iterable[str] = (),
) -> None:
    """Value checks of a complete request (defaults filled in; `defaulted` names those keys)."""
    defaulted = set(defaulted)
    for key, array in arrays.items():
        if array.dtype.kind == "f" and key != sig.LEARNING_RATE:
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                raise invalid(
                    f'Input "{key}" contains {bad} non-finite values (NaN or Inf); '
                    f"expected finite numbers."
                )
    support = next((k for k in SUPPORT_KEYS if k in arrays), None)
    target = next((k for k in TARGET_KEYS if k in arrays), None)
    query = next((k for k in QUERY_KEYS[:2] if k in arrays), None)
    weights = sig.ADAPTED_WEIGHTS if sig.ADAPTED_WEIGHTS in arrays else None
    tasks = any(i.tasks for i in signature.inputs)
    if tasks:
        counted = [k for k in (support, weights) if k]
        for first in counted[:1]:
            for other in (target, query, *counted[1:]):
                if other and len(arrays[first]) != len(arrays[other]):
                    raise invalid(
                        f'Input "{first}" holds {len(arrays[first])} tasks but "{other}" holds '
                        f"{len(arrays[other])}; expected the same number of tasks in both."
                    )
    axis = 1 if tasks else 0  # the examples axis
    counts = [arrays[k].shape[axis] for k in (support, target) if k and arrays[k].ndim > axis]
    if len(counts) == 2 and counts[0] != counts[1]:
        per_task = " per task" if tasks else ""
        raise invalid(
            f'Input "{support}" has {counts[0]} examples{per_task} but "{target}" has '
            f"{counts[1]}; expected one label or target per support example."
        )
    if target in arrays:
        labels = arrays[target]
        outside = info.task_kind.outside(labels, info.ways)
        if outside.any():
            first = np.argwhere(outside)[:5]  # [index] or [task, example] rows
            where = "(task, example) indices" if tasks else "indices"
            indices = [tuple(i) for i in first.tolist()] if tasks else first[:, 0].tolist()
            raise invalid(
                f'Input "{target}" has {int(outside.sum())} values outside '
                f"[0, {info.ways}) (the model has {info.ways} ways): received "
                f"{labels[tuple(first.T)].tolist()} at {where} {indices}; expected class indices "
                f"0..{info.ways - 1}."
            )
    note = " (the signature's default)"
    # The settings' own rules (protocol_rules, which the graph and a recipe apply too), then
    # this server's upper bounds.
    maxima = {
        sig.INNER_STEPS: (limits.max_inner_steps, "--max_inner_steps"),
        sig.INNER_BATCH_SIZE: (limits.max_support, "--max_support"),
    }
    for rule in protocol_rules.RULES:
        if rule.key not in arrays:
            continue
        value = arrays[rule.key].item()
        given = note if rule.key in defaulted else ""
        if rule.key in maxima:
            limit, flag = maxima[rule.key]
            if not (rule.holds(value) and value <= limit):
                raise invalid(
                    f"{rule.key} must be in [{rule.minimum:g}, {limit}] ({flag}); "
                    f"received {value}{given}."
                )
        elif not rule.holds(value):
            raise invalid(f"{rule.key} must be {rule.expected}; received {value}{given}.")
