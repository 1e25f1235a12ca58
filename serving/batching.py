"""Task batching: concurrent `adapt_and_predict` requests adapt as one multi-task network.

TensorFlow Serving's own batching concatenates requests along dimension 0, which would merge two
clients' support sets into one task. Here a batch is a stack of tasks: requests for the same model
version whose tensors have the same shapes and whose inner settings (steps, batch size, learning
rate, transductive) are equal wait together for up to `batch_timeout_micros`, then run as one
`adapt_and_predict_tasks` call (at most `max_batch_size` tasks), and each gets its own task's
answer back. Each answer equals what `adapt_and_predict` gives that task alone.

Deadlines and cancellation act per request: a request that gives up while queued leaves its batch;
one whose batch is already running gets its status at once while the others' answers go on. When
`max_enqueued_batches` batches are waiting, a new request is refused with TF Serving's UNAVAILABLE.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import Mapping

import grpc
import numpy as np
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,  # noqa: F401 - registers the wrapper types in the pool
)

from keras_reptile.export import signatures as sig
from serving.admission import Admission
from serving.cancellation import Cancellation
from serving.errors import QUEUE_FULL, ServingError
from serving.metrics import PROCESSED_BATCH_SIZE, QUEUING_LATENCY, ServingMetrics

THREAD_POOL_NAME = "task_batching"  # the batching metrics' thread_pool_name label


def _batching_parameters_message():
    """TF Serving's `BatchingParameters` message (its text format), built from a descriptor:
    tensorflow-serving-api does not ship `session_bundle_config.proto`."""
    f = descriptor_pb2.FileDescriptorProto(
        name="keras_reptile_batching_parameters.proto",
        package="tensorflow.serving",
        dependency=["google/protobuf/wrappers.proto"],
        syntax="proto3",
    )
    message = f.message_type.add(name="BatchingParameters")
    label, t = descriptor_pb2.FieldDescriptorProto, descriptor_pb2.FieldDescriptorProto
    fields = [
        ("max_batch_size", ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", ".google.protobuf.Int64Value"),
        ("num_batch_threads", ".google.protobuf.Int64Value"),
        ("thread_pool_name", ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", None),
        ("pad_variable_length_inputs", None),
    ]
    for number, (name, type_name) in enumerate(fields, start=1):
        field = message.field.add(name=name, number=number, label=label.LABEL_OPTIONAL)
        if name == "allowed_batch_sizes":
            field.type, field.label = t.TYPE_INT64, label.LABEL_REPEATED
        elif name == "pad_variable_length_inputs":
            field.type = t.TYPE_BOOL
        else:
            field.type, field.type_name = t.TYPE_MESSAGE, type_name
    pool = descriptor_pool.Default()
    try:
        descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    except KeyError:
        descriptor = pool.Add(f).message_types_by_name["BatchingParameters"]
    return message_factory.GetMessageClass(descriptor)


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """The batching settings (`--batching_parameters_file`, TF Serving's field names).

    Args:
        max_batch_size: int. Most tasks adapted together.
        batch_timeout_micros: int. Longest a batch waits for more tasks before it runs.
        num_batch_threads: int. Batches run at once.
        max_enqueued_batches: int. Batches that may wait; past that, requests are refused.

    The defaults were chosen by measurement on a 2-core CPU (docs/benchmarks.md): one batch
    thread per core, small batches, a short wait.
    """

    max_batch_size: int = 4
    batch_timeout_micros: int = 5000
    num_batch_threads: int = 2
    max_enqueued_batches: int = 16

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            low = 0 if field.name == "batch_timeout_micros" else 1
            if not isinstance(value, int) or value < low:
                raise ValueError(
                    f"BatchingParameters.{field.name} must be an integer >= {low}. "
                    f"Received: {field.name}={value!r}"
                )

    @classmethod
    def from_text(cls, text: str) -> BatchingParameters:
        """Parses TF Serving's text format, e.g. `max_batch_size { value: 8 }`."""
        proto = _batching_parameters_message()()
        try:
            text_format.Parse(text, proto)
        except text_format.ParseError as e:
            raise ValueError(
                f"The batching parameters are not a text-format BatchingParameters. Received: {e}"
            ) from None
        unsupported = [
            name
            for name, given in (
                ("thread_pool_name", proto.HasField("thread_pool_name")),
                ("allowed_batch_sizes", bool(proto.allowed_batch_sizes)),
                ("pad_variable_length_inputs", proto.pad_variable_length_inputs),
            )
            if given
        ]
        if unsupported:
            raise ValueError(
                "Task batching pads nothing and takes any batch size up to max_batch_size; these "
                f"fields do not apply. Received: {', '.join(unsupported)}"
            )
        values = {
            f.name: getattr(proto, f.name).value
            for f in dataclasses.fields(cls)
            if proto.HasField(f.name)
        }
        return cls(**values)

    @classmethod
    def read(cls, path: str) -> BatchingParameters:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise ValueError(
                f"Cannot read the batching parameters file. Received: "
                f"batching_parameters_file={path!r} ({e.strerror})"
            ) from None
        return cls.from_text(text)


class _Item:
    """One request's task, waiting for its answer."""

    def __init__(self, arrays: Mapping[str, np.ndarray], deadline: float | None):
        self.arrays, self.deadline = arrays, deadline
        self.queued = time.monotonic()
        self.done = threading.Event()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: ServingError | None = None


class _Batch:
    def __init__(self, key, servable, signature: str, opened: float):
        self.key, self.servable, self.signature, self.opened = key, servable, signature, opened
        self.items: list[_Item] = []


def batch_key(servable, arrays: Mapping[str, np.ndarray], signature=sig.ADAPT_AND_PREDICT) -> tuple:
    """Requests batch together iff they have the same version, signature, shapes and inner
    settings."""
    shapes = tuple((k, v.shape) for k, v in sorted(arrays.items()) if k not in sig.OPTIONAL_SCALARS)
    settings = tuple((k, np.asarray(arrays[k]).item()) for k in sig.OPTIONAL_SCALARS if k in arrays)
    return (id(servable), signature, shapes, settings)


class TaskBatcher:
    """Collects single-task requests into multi-task batches and runs them on batch threads.

    Args:
        params: BatchingParameters.
        admission: Admission or None. Each batch takes one of its computation slots to run
            (waiting for it without being refused: its requests are queued here already).
        metrics: ServingMetrics or None. Records each task's time in the queue and each batch's
            size, under TF Serving's batching metrics (`thread_pool_name` "task_batching").
    """

    def __init__(
        self,
        params: BatchingParameters,
        admission: Admission | None = None,
        metrics: ServingMetrics | None = None,
    ):
        self.params, self.admission, self.metrics = params, admission, metrics
        self._cond = threading.Condition()
        self._forming: dict[tuple, _Batch] = {}
        self._ready: collections.deque[_Batch] = collections.deque()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Runs what is queued, then stops the batch threads."""
        with self._cond:
            self._stopped = True
            self._ready.extend(self._forming.values())
            self._forming.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def submit(
        self,
        servable,
        arrays: Mapping[str, np.ndarray],
        deadline: float | None = None,
        cancellation: Cancellation | None = None,
        signature: str = sig.ADAPT_AND_PREDICT,
    ) -> dict[str, np.ndarray]:
        """Queues one task (checked inputs of a single-task `signature`: `adapt_and_predict`,
        `adapt` or `predict_adapted`) and waits for its answer; a batch runs the signature's
        multi-task form."""
        item = _Item(arrays, deadline)
        key = batch_key(servable, arrays, signature)
        with self._cond:
            if self._stopped:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "The server is shutting down.")
            batch = self._forming.get(key)
            if batch is None:
                if len(self._forming) + len(self._ready) >= self.params.max_enqueued_batches:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE, QUEUE_FULL)
                batch = self._forming[key] = _Batch(key, servable, signature, time.monotonic())
            batch.items.append(item)
            if len(batch.items) >= self.params.max_batch_size:
                self._ready.append(self._forming.pop(key))
            self._cond.notify_all()
        return self._wait(item, batch, deadline, cancellation)

    def _wait(self, item, batch, deadline, cancellation) -> dict[str, np.ndarray]:
        while not item.done.wait(0.01):
            code = cancellation.code if cancellation is not None else None
            reason = cancellation.reason if cancellation is not None else ""
            if code is None and deadline is not None and time.monotonic() >= deadline:
                code, reason = grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed"
            if code is not None:
                with self._cond:
                    if item in batch.items and not item.done.is_set():
                        batch.items.remove(item)  # still queued: it leaves its batch
                        if not batch.items:
                            self._forming.pop(batch.key, None)
                            if batch in self._ready:
                                self._ready.remove(batch)
                raise ServingError(code, f"The request was stopped while batched: {reason}.")
        if item.error is not None:
            raise item.error
        return item.outputs

    def _next_batch(self) -> _Batch | None:
        """Waits for a full batch, or one whose timeout has passed; None once stopped."""
        timeout = self.params.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                if self._ready:
                    return self._ready.popleft()
                now = time.monotonic()
                expired = [b for b in self._forming.values() if now - b.opened >= timeout]
                if expired:
                    batch = min(expired, key=lambda b: b.opened)
                    return self._forming.pop(batch.key)
                if self._stopped:
                    return None
                soonest = min(
                    (b.opened + timeout - now for b in self._forming.values()), default=None
                )
                self._cond.wait(soonest)

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            with self._cond:
                items = list(batch.items)
                batch.items.clear()  # running: nobody leaves it any more
            if items:
                self._record(batch.servable, items)
                self._run(batch.servable, batch.signature, items)

    def _record(self, servable, items: list[_Item]) -> None:
        if self.metrics is None:
            return
        now = time.monotonic()
        for item in items:
            self.metrics.observe(QUEUING_LATENCY, (now - item.queued) * 1e6, THREAD_POOL_NAME)
        self.metrics.observe(PROCESSED_BATCH_SIZE, len(items), servable.name, THREAD_POOL_NAME)

    @staticmethod
    def _answers(servable, signature: str, items: list[_Item], deadline: float | None) -> list:
        if len(items) == 1:  # nothing to stack: the one-task signature, without a task loop
            arrays = items[0].arrays
            return [servable.run(signature, arrays, deadline, check_outputs=False)]
        stacked = {
            k: v if k in sig.OPTIONAL_SCALARS else np.stack([it.arrays[k] for it in items])
            for k, v in items[0].arrays.items()
        }
        tasks = sig.MULTI_TASK[signature]
        outputs = servable.run(tasks, stacked, deadline, check_outputs=False)
        return [{k: v[t] for k, v in outputs.items()} for t in range(len(items))]

    def _run(self, servable, signature: str, items: list[_Item]) -> None:
        # The batch runs until its last request's deadline; the others are answered at theirs.
        deadlines = [item.deadline for item in items]
        deadline = None if None in deadlines else max(deadlines)
        slot = (
            self.admission.slot(deadline, bounded=False)
            if self.admission is not None
            else contextlib.nullcontext()
        )
        try:
            with slot:
                answers = self._answers(servable, signature, items, deadline)
            for item, answer in zip(items, answers):
                item.outputs = answer
                try:  # one task's non-finite answer fails that request only
                    servable.check_outputs(signature, item.outputs)
                except ServingError as e:
                    item.error = e
        except ServingError as e:
            for item in items:
                item.error = e
        except Exception as e:  # every waiting request gets an answer
            for item in items:
                item.error = ServingError(grpc.StatusCode.INTERNAL, f"Batch failed: {e}")
        for item in items:
            item.done.set()
