"""`ServingError`: a TensorFlow Serving status code with a message, and how errors are reported.

Every failure the server reports is a `ServingError`; TensorFlow runtime errors are converted with
`from_tf_error`, which keeps the first meaningful line of the message and drops graph traces.
"""

from __future__ import annotations

import re

import grpc

# TF Serving's http_server.cc ToHTTPStatusCode.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
# TF Serving's words for a full queue (its batching's, used for every queue here): UNAVAILABLE.
QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"
MAX_MESSAGE_CHARS = 1024  # TF Serving's grpc_status_util.cc cuts longer messages.
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request or load failure with TF Serving's status code.

    Args:
        code: grpc.StatusCode. The status reported over gRPC (and mapped to HTTP for REST).
        message: str. What was wrong and what was expected.
        http_status: int or None. Overrides the HTTP status mapped from `code`.
    """

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = truncate(message)
        self.http_status = http_status if http_status is not None else HTTP_STATUS[code]

    @property
    def code_number(self) -> int:
        """The numeric code (tensorflow.error.Code, equal to gRPC's)."""
        return self.code.value[0]


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def truncate(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[:MAX_MESSAGE_CHARS] + "...TRUNCATED"


def code_from_number(number: int) -> grpc.StatusCode:
    return _CODES_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def clean_tf_message(message: str) -> str:
    """The informative part of a TensorFlow runtime error: no node names, no graph traces."""
    kept = []
    for line in message.splitlines():
        line = line.strip()
        if (
            not line
            or line.startswith(("[[{{", "Graph execution error", "Detected at node"))
            or "stack traces unavailable" in line
            or line.startswith("File ")
        ):
            continue
        kept.append(line)
    text = " ".join(kept)
    text = re.sub(r"\s*\[\[\{\{.*?\}\}\]\]", "", text)  # [[{{node ...}}]], not nested data
    text = re.sub(r"\s*\[Op:[^\]]*\]", "", text)
    text = re.sub(r"\([\w/.-]+:\d+\)\s*", "", text)  # tensor names, e.g. (assert_less/y:0)
    return text.strip() or "TensorFlow reported an error without a message"


def from_tf_error(error: Exception, context: str) -> ServingError:
    """Converts an exception raised while running a model into a `ServingError`.

    Args:
        error: the exception (a `tf.errors.OpError` keeps its code; anything else is INTERNAL).
        context: str. What was running, e.g. 'signature "adapt_and_predict" of model "m" v1'.
    """
    code_number = getattr(error, "error_code", None)
    if isinstance(code_number, int):
        code = code_from_number(code_number)
        detail = clean_tf_message(getattr(error, "message", str(error)))
    else:
        code = grpc.StatusCode.INTERNAL
        detail = f"{type(error).__name__}: {clean_tf_message(str(error))}"
    return ServingError(code, f"Running {context} failed: {detail}")
