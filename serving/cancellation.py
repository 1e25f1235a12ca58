"""A request's deadline and its client's cancellation, as plain Python values; the server's
default and maximum deadlines.

Signatures run in a TF1 `tf.compat.v1.Session` (`serving.servable`), as in
`tensorflow_model_server`: a run is given `RunOptions(timeout_in_ms=...)` from the request's
deadline, and TensorFlow stops it mid-computation when the timeout passes (DEADLINE_EXCEEDED).
A Session run cannot be stopped any other way, so a client that goes away (CANCELLED) stops
work that has not started yet (a request waiting for a computation slot or in a batch), while a
run already going on stops at its deadline at the latest: the server's maximum deadline
(`--max_request_timeout_in_ms`) bounds the work a departed client can leave behind.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time

import grpc

# gRPC reports a call without a deadline as one this far away, or more (its infinite future).
_NO_DEADLINE_SECONDS = 10**8


def remaining_ms(deadline: float | None) -> int:
    """Milliseconds until `deadline` (a `time.monotonic()` value), at least 1; 0 for none (a
    Session's "no timeout")."""
    if deadline is None:
        return 0
    return max(1, math.ceil((deadline - time.monotonic()) * 1000))


class Cancellation:
    """One request's cancellation by its client (or by the server giving up on it).

    `code` and `reason` say why (DEADLINE_EXCEEDED or CANCELLED) once it is cancelled.

    Args:
        deadline_reason: str. What a passed deadline is called in the request's error, e.g.
            "the REST timeout (--rest_api_timeout_in_ms) passed".
    """

    def __init__(self, deadline_reason: str = "the deadline passed"):
        self.deadline_reason = deadline_reason
        self._lock = threading.Lock()
        self.code: grpc.StatusCode | None = None
        self.reason = ""

    def cancel(
        self,
        code: grpc.StatusCode = grpc.StatusCode.CANCELLED,
        reason: str = "the client cancelled the request",
    ) -> None:
        with self._lock:
            if self.code is None:
                self.code, self.reason = code, reason

    @property
    def cancelled(self) -> bool:
        return self.code is not None


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """The server's deadlines, in milliseconds (`--request_timeout_in_ms`,
    `--max_request_timeout_in_ms`, `--rest_api_timeout_in_ms`).

    Args:
        default_ms: int. Deadline of a gRPC request that sets none.
        max_ms: int. Longest any request may take: a later gRPC deadline, or a longer REST
            timeout, is cut to it.
        rest_ms: int. Deadline of a REST request.
    """

    default_ms: int = 30000
    max_ms: int = 60000
    rest_ms: int = 30000

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"Timeouts.{field.name} must be an integer >= 1 (ms). "
                    f"Received: {field.name}={value!r}"
                )

    def grpc(self, remaining_seconds: float | None) -> tuple[float, str]:
        """The deadline (a `time.monotonic()` value) and its wording for a gRPC request whose
        client gave it `remaining_seconds` (None: no deadline)."""
        if remaining_seconds is None or remaining_seconds > _NO_DEADLINE_SECONDS:
            ms, reason = self.default_ms, "the server's default deadline (--request_timeout_in_ms)"
        else:
            ms, reason = remaining_seconds * 1000.0, "the deadline"
        if ms > self.max_ms:
            ms, reason = self.max_ms, "the server's maximum deadline (--max_request_timeout_in_ms)"
        return time.monotonic() + ms / 1000.0, f"{reason} passed"

    def rest(self) -> tuple[float, str]:
        """The deadline and its wording for a REST request, starting now."""
        if self.rest_ms > self.max_ms:
            ms, reason = self.max_ms, "the server's maximum deadline (--max_request_timeout_in_ms)"
        else:
            ms, reason = self.rest_ms, "the REST timeout (--rest_api_timeout_in_ms)"
        return time.monotonic() + ms / 1000.0, f"{reason} passed"
