"""Admission control: how many computations run at once, and how many may wait for a turn.

Every signature run of a request, over gRPC and REST alike (and every batch of task batching),
takes a slot of one `Admission` first. At most `max_concurrent` run; up to `max_queued` more wait
in arrival order, each until its deadline or its client's cancellation; a request that finds the
queue full is refused at once with TensorFlow Serving's UNAVAILABLE. So heavy requests hold at
most `max_concurrent + max_queued` of the server's threads, and status, metadata and model card
requests, which compute nothing, always find one.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator

import grpc

from serving.cancellation import Cancellation
from serving.errors import QUEUE_FULL, ServingError

_POLL_SECONDS = 0.02  # how often a waiting request looks at its client's cancellation


class Admission:
    """A bounded queue in front of the computations.

    Args:
        max_concurrent: int. Computations that run at once (>= 1).
        max_queued: int. Computations that may wait for a slot (>= 0); one more is refused.
        on_wait: callable(seconds) or None. Told how long each admitted computation waited.
    """

    def __init__(self, max_concurrent: int, max_queued: int, on_wait=None):
        for name, value, low in (
            ("max_concurrent", max_concurrent, 1),
            ("max_queued", max_queued, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(
                    f"`{name}` must be an integer >= {low}. Received: {name}={value!r}"
                )
        self.max_concurrent, self.max_queued, self._on_wait = max_concurrent, max_queued, on_wait
        self._cond = threading.Condition()
        self._running = 0
        self._waiting: collections.deque[object] = collections.deque()

    @property
    def running(self) -> int:
        with self._cond:
            return self._running

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._waiting)

    @contextlib.contextmanager
    def slot(
        self,
        deadline: float | None = None,
        cancellation: Cancellation | None = None,
        bounded: bool = True,
    ) -> Iterator[None]:
        """Holds a computation slot while the block runs.

        Raises UNAVAILABLE if `bounded` and the queue is full, DEADLINE_EXCEEDED if `deadline` (a
        `time.monotonic()` value) passes while waiting, the cancellation's status if cancelled
        while waiting. Unbounded waits (task batching's batches, already queued there) are not
        refused.
        """
        start = time.monotonic()
        ticket = object()
        with self._cond:
            if self._running >= self.max_concurrent or self._waiting:
                if bounded and len(self._waiting) >= self.max_queued:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE, QUEUE_FULL)
                self._waiting.append(ticket)
                try:
                    self._wait_turn(ticket, deadline, cancellation)
                finally:
                    self._waiting.remove(ticket)
                    self._cond.notify_all()
            self._running += 1
        if self._on_wait is not None:
            self._on_wait(time.monotonic() - start)
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _wait_turn(self, ticket, deadline, cancellation) -> None:
        """Waits (holding the lock between waits) until `ticket` is first and a slot is free."""
        while not (self._waiting[0] is ticket and self._running < self.max_concurrent):
            if cancellation is not None and cancellation.code is not None:
                raise ServingError(
                    cancellation.code,
                    f"Stopped while waiting for a computation slot: {cancellation.reason}.",
                )
            timeout = _POLL_SECONDS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServingError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        "Deadline exceeded while waiting for a computation slot "
                        f"({self.max_concurrent} running, --max_concurrent_computations).",
                    )
                timeout = min(timeout, left)
            self._cond.wait(timeout)
