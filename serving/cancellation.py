"""A request's deadline and its client's cancellation, as plain Python values.

Signatures run in a TF1 `tf.compat.v1.Session` (`serving.servable`), as in
`tensorflow_model_server`: a run is given `RunOptions(timeout_in_ms=...)` from the request's
deadline, and TensorFlow stops it mid-computation when the timeout passes (DEADLINE_EXCEEDED).
A Session run cannot be stopped any other way, so a client that goes away (CANCELLED) stops
work that has not started yet (a request waiting for a computation slot or in a batch), while a
run already going on stops at its deadline at the latest: the server's maximum deadline
(`--max_request_timeout_in_ms`) bounds the work a departed client can leave behind.
"""

from __future__ import annotations

import math
import threading
import time

import grpc


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
