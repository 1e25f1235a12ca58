"""Stops a running signature call when its deadline passes or its client goes away.

TensorFlow's eager runtime runs a function under the CancellationManager returned by
`tensorflow.python.eager.cancellation.context()`, a process-wide value. Requests run in parallel,
so this module makes that value per thread (falling back to TensorFlow's own). If TensorFlow's
internals ever lack these names, calls simply run to completion, as they would without it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import grpc
from tensorflow.python.eager import cancellation as _tf_cancellation

_local = threading.local()


def _install() -> bool:
    original = getattr(_tf_cancellation, "context", None)
    if original is None or not hasattr(_tf_cancellation, "CancellationManager"):
        return False
    if getattr(original, "_per_thread", False):
        return True

    def context():
        return getattr(_local, "manager", None) or original()

    context._per_thread = True
    _tf_cancellation.context = context
    return True


SUPPORTED = _install()


class Cancellation:
    """One request's cancellation: `cancel(...)` aborts the call running under `active()`.

    `code` and `reason` say why (DEADLINE_EXCEEDED or CANCELLED) once it is cancelled.
    """

    def __init__(self):
        self._manager = _tf_cancellation.CancellationManager() if SUPPORTED else None
        self.code: grpc.StatusCode | None = None
        self.reason = ""

    def cancel(
        self,
        code: grpc.StatusCode = grpc.StatusCode.CANCELLED,
        reason: str = "the client cancelled the request",
    ) -> None:
        if self.code is None:
            self.code, self.reason = code, reason
        if self._manager is not None:
            self._manager.start_cancel()

    def cancel_after(self, seconds: float, code: grpc.StatusCode, reason: str) -> threading.Timer:
        """Cancels after `seconds` unless the returned timer is cancelled first."""
        timer = threading.Timer(max(seconds, 0.0), self.cancel, (code, reason))
        timer.daemon = True
        timer.start()
        return timer

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Runs the block's TensorFlow calls under this request's cancellation manager."""
        _local.manager = self._manager
        try:
            yield
        finally:
            _local.manager = None
