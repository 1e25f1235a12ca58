"""Bad requests, each sent over gRPC and REST: the status and the message it must get."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grpc
import numpy as np

from keras_reptile.export import signatures as sig
from tests.serving.helpers import SHAPE, TASKS, WAYS, omni_tasks, task

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    code: grpc.StatusCode
    http: int
    message: str  # a substring of the message
    inputs: Callable[[], dict] = task
    model: str = "omni"
    signature: str = sig.ADAPT_AND_PREDICT
    version: int | None = None
    label: str | None = None
    rest_message: str | None = None  # when REST words it differently
    protocols: tuple = ("grpc", "rest")


def _changed(base: Callable[[], dict], changes: dict) -> Callable[[], dict]:
    """`base()`'s inputs with some replaced (a value, or a function of the inputs) or removed."""

    def inputs():
        arrays = base()
        for key, value in changes.items():
            if value is None:
                del arrays[key]
            else:
                arrays[key] = value(arrays) if callable(value) else value
        return arrays

    return inputs


def _with(**changes):
    """A single task (`adapt_and_predict`) with changes."""
    return _changed(task, changes)


def _tasks_with(**changes):
    """Two tasks (`adapt_and_predict_tasks`) with changes."""
    return _changed(omni_tasks, changes)


def _one_nan(images):
    images = images.copy()
    images.flat[3] = np.nan
    return images


def _labels(*values):
    return np.asarray(values + (0,) * (2 * WAYS - len(values)), np.int32)


CASES = [
    Case(
        "unknown_model",
        NOT_FOUND,
        404,
        "Servable not found for request: Latest(nope)",
        model="nope",
    ),
    Case(
        "unknown_version",
        NOT_FOUND,
        404,
        "Specific(omni, 7). Versions available: [1, 2]",
        version=7,
    ),
    Case("version_outside_policy", NOT_FOUND, 404, "Specific(omni, 3)", version=3),
    Case("unknown_label", INVALID, 400, "Unrecognized servable version label: beta", label="beta"),
    Case(
        "unknown_signature",
        grpc.StatusCode.FAILED_PRECONDITION,
        400,
        'Serving signature key "nope" not found',
        signature="nope",
    ),
    Case(
        "missing_input",
        INVALID,
        400,
        "Missing but required: {support_labels}",
        _with(support_labels=None),
    ),
    Case("unknown_input", INVALID, 400, "Sent extra: {foo}", _with(foo=np.zeros(3, np.float32))),
    Case(
        "labels_wrong_dtype",
        INVALID,
        400,
        "to be int32 but float is provided",
        _with(support_labels=lambda a: a[sig.SUPPORT_LABELS].astype(np.float32) + 0.5),
        rest_message="is not of expected type: int32",
    ),
    Case(
        "images_wrong_dtype",
        INVALID,
        400,
        "to be float but int32 is provided",
        _with(query_images=np.zeros((2, *SHAPE), np.int32)),
        protocols=("grpc",),  # JSON integers are valid floats
    ),
    Case(
        "images_strings",
        INVALID,
        400,
        "",
        _with(query_images=np.full((1, *SHAPE), "a")),
        rest_message="Type: String is not of expected type: float32",
        protocols=("rest",),
    ),
    Case(
        "wrong_rank",
        INVALID,
        400,
        'Input "query_images" of signature "adapt_and_predict" has shape [5, 28, 28]; '
        "expected [?, 28, 28, 1]",
        _with(query_images=np.zeros((5, 28, 28), np.float32)),
    ),
    Case(
        "wrong_image_size",
        INVALID,
        400,
        "has shape [10, 14, 14, 1]; expected [?, 28, 28, 1]",
        _with(support_images=np.zeros((10, 14, 14, 1), np.float32)),
    ),
    Case(
        "scalar_as_vector",
        INVALID,
        400,
        'Input "inner_steps" of signature "adapt_and_predict" has shape [1]; expected a scalar',
        _with(inner_steps=np.asarray([2], np.int32)),
    ),
    Case("label_negative", INVALID, 400, "outside [0, 5)", _with(support_labels=_labels(-1))),
    Case(
        "label_equal_ways",
        INVALID,
        400,
        "received [5] at indices [0]",
        _with(support_labels=_labels(5)),
    ),
    Case(
        "empty_support",
        INVALID,
        400,
        'Input "support_images" of signature "adapt_and_predict" is empty',
        _with(
            support_images=np.zeros((0, *SHAPE), np.float32),
            support_labels=np.zeros((0,), np.int32),
        ),
    ),
    Case(
        "count_mismatch",
        INVALID,
        400,
        'Input "support_images" has 10 examples but "support_labels" has 9',
        _with(support_labels=lambda a: a[sig.SUPPORT_LABELS][:9]),
    ),
    Case(
        "inner_steps_over_max",
        INVALID,
        400,
        "inner_steps must be in [0, 50] (--max_inner_steps); received 51",
        _with(inner_steps=np.int32(51)),
    ),
    Case(
        "inner_steps_negative",
        INVALID,
        400,
        "inner_steps must be in [0, 50] (--max_inner_steps); received -1",
        _with(inner_steps=np.int32(-1)),
    ),
    Case(
        "learning_rate_nan",
        INVALID,
        400,
        "learning_rate must be a finite number > 0; received nan",
        _with(learning_rate=np.float32("nan")),
    ),
    Case(
        "learning_rate_zero",
        INVALID,
        400,
        "learning_rate must be a finite number > 0; received 0.0",
        _with(learning_rate=np.float32(0)),
    ),
    Case(
        "learning_rate_inf",
        INVALID,
        400,
        "learning_rate must be a finite number > 0; received inf",
        _with(learning_rate=np.float32("inf")),
    ),
    Case(
        "support_over_max",
        INVALID,
        400,
        "has 41 support examples; the server accepts at most 40 (--max_support)",
        _with(
            support_images=np.zeros((41, *SHAPE), np.float32),
            support_labels=np.zeros((41,), np.int32),
        ),
    ),
    Case(
        "queries_over_max",
        INVALID,
        400,
        "has 21 query examples; the server accepts at most 20 (--max_queries)",
        _with(query_images=np.zeros((21, *SHAPE), np.float32)),
    ),
    Case(
        "serving_default_over_max",
        INVALID,
        400,
        'Input "images" has 21 query examples',
        lambda: {sig.IMAGES: np.zeros((21, *SHAPE), np.float32)},
        signature=sig.SERVING_DEFAULT,
    ),
    Case(
        "non_finite_images",
        INVALID,
        400,
        'Input "query_images" contains 1 non-finite values (NaN or Inf)',
        _with(query_images=lambda a: _one_nan(a[sig.QUERY_IMAGES])),
    ),
    Case(
        "inner_batch_size_zero",
        INVALID,
        400,
        "inner_batch_size must be in [1, 40] (--max_support); received 0.",
        _with(inner_batch_size=np.int32(0)),
    ),
    Case(
        "inner_batch_size_over_max",
        INVALID,
        400,
        "inner_batch_size must be in [1, 40] (--max_support); received 41.",
        _with(inner_batch_size=np.int32(41)),
    ),
    # adapt_and_predict_tasks: the same inputs with a leading task axis.
    Case(
        "tasks_none",
        INVALID,
        400,
        'Input "support_images" of signature "adapt_and_predict_tasks" holds no task (shape '
        "[0, 10, 28, 28, 1]); expected at least one task.",
        _tasks_with(
            support_images=lambda a: a[sig.SUPPORT_IMAGES][:0],
            support_labels=lambda a: a[sig.SUPPORT_LABELS][:0],
            query_images=lambda a: a[sig.QUERY_IMAGES][:0],
        ),
        signature=TASKS,
        # JSON's [] has no inner dimensions: the free ones read as 0.
        rest_message='Input "support_images" of signature "adapt_and_predict_tasks" holds no '
        "task (shape [0, 0, 28, 28, 1]); expected at least one task.",
    ),
    Case(
        "tasks_over_max",
        INVALID,
        400,
        'Input "support_images" of signature "adapt_and_predict_tasks" holds 5 tasks; the server '
        "accepts at most 4 (--max_tasks).",
        lambda: omni_tasks(5),
        signature=TASKS,
    ),
    Case(
        "tasks_label_task_count",
        INVALID,
        400,
        'Input "support_images" holds 2 tasks but "support_labels" holds 1; expected the same '
        "number of tasks in both.",
        _tasks_with(support_labels=lambda a: a[sig.SUPPORT_LABELS][:1]),
        signature=TASKS,
    ),
    Case(
        "tasks_query_task_count",
        INVALID,
        400,
        'Input "support_images" holds 2 tasks but "query_images" holds 3; expected the same '
        "number of tasks in both.",
        _tasks_with(query_images=lambda a: np.concatenate([a[sig.QUERY_IMAGES]] * 2)[:3]),
        signature=TASKS,
    ),
    Case(
        "tasks_empty_support",
        INVALID,
        400,
        'Input "support_images" of signature "adapt_and_predict_tasks" is empty (shape '
        "[2, 0, 28, 28, 1]); expected at least one support example per task.",
        _tasks_with(
            support_images=np.zeros((2, 0, *SHAPE), np.float32),
            support_labels=np.zeros((2, 0), np.int32),
        ),
        signature=TASKS,
    ),
    Case(
        "tasks_example_count",
        INVALID,
        400,
        'Input "support_images" has 10 examples per task but "support_labels" has 9; expected '
        "one label or target per support example.",
        _tasks_with(support_labels=lambda a: a[sig.SUPPORT_LABELS][:, :9]),
        signature=TASKS,
    ),
    Case(
        "tasks_support_over_max",
        INVALID,
        400,
        'Input "support_images" has 41 support examples per task; the server accepts at most 40 '
        "(--max_support).",
        _tasks_with(
            support_images=np.zeros((2, 41, *SHAPE), np.float32),
            support_labels=np.zeros((2, 41), np.int32),
        ),
        signature=TASKS,
    ),
    Case(
        "tasks_queries_over_max",
        INVALID,
        400,
        'Input "query_images" has 21 query examples per task; the server accepts at most 20 '
        "(--max_queries).",
        _tasks_with(query_images=np.zeros((2, 21, *SHAPE), np.float32)),
        signature=TASKS,
    ),
    Case(
        "tasks_without_task_axis",
        INVALID,
        400,
        'Input "support_images" of signature "adapt_and_predict_tasks" has shape '
        "[10, 28, 28, 1]; expected [?, ?, 28, 28, 1] (?: any size).",
        task,
        signature=TASKS,
    ),
    Case(
        "tasks_label_equal_ways",
        INVALID,
        400,
        'Input "support_labels" has 1 values outside [0, 5) (the model has 5 ways): received [5] '
        "at (task, example) indices [(1, 3)]; expected class indices 0..4.",
        _tasks_with(
            support_labels=lambda a: np.stack([a[sig.SUPPORT_LABELS][0], _labels(*[0] * 3, 5)])
        ),
        signature=TASKS,
    ),
    Case(
        "tasks_inner_batch_size_zero",
        INVALID,
        400,
        "inner_batch_size must be in [1, 40] (--max_support); received 0.",
        _tasks_with(inner_batch_size=np.int32(0)),
        signature=TASKS,
    ),
    Case(
        "message_over_limit",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        413,
        "Received message larger than max",
        _with(
            support_images=np.zeros((400, *SHAPE), np.float32),
            support_labels=np.zeros((400,), np.int32),
        ),
        rest_message="larger than the maximum of 1048576 bytes (--max_message_bytes)",
    ),
]


def cases(protocol: str) -> list[Case]:
    return [c for c in CASES if protocol in c.protocols]
