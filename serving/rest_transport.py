"""The REST port's connections: a bounded pool of threads, a connection cap, total deadlines.

`BoundedHTTPServer` accepts connections on its own thread and hands each to one of a fixed number
of daemon worker threads; connections beyond the cap are answered 503 at once and closed. A
connection's reads go through a `DeadlineReader`, whose budget covers a whole phase (the request
line and headers, or the body) rather than each read, so a client that trickles bytes is cut off
when the phase's time is up; its writes go through a `DeadlineWriter` likewise. `close(grace)`
stops reading from every connection, gives requests in flight `grace` seconds to answer, then
shuts the remaining sockets: no client can hold it.
"""

from __future__ import annotations

import io
import json
import queue
import socket
import socketserver
import threading
import time

from absl import logging


class DeadlineExpired(Exception):
    """A phase of a request (its `phase`: "headers", "body" or "answer") ran out of time."""

    def __init__(self, phase: str):
        super().__init__(phase)
        self.phase = phase


class DeadlineReader(io.RawIOBase):
    """A socket's reads, each given the time left of the current phase as its timeout.

    Args:
        sock: socket.socket. The connection.
    """

    def __init__(self, sock: socket.socket):
        super().__init__()
        self._sock = sock
        self.phase, self.deadline, self.received = "headers", time.monotonic(), 0

    def start(self, phase: str, seconds: float) -> None:
        """Begins a phase that must be read within `seconds` (counting from now)."""
        self.phase, self.deadline, self.received = phase, time.monotonic() + seconds, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExpired(self.phase)
        self._sock.settimeout(left)
        try:
            count = self._sock.recv_into(buffer)
        except TimeoutError:
            raise DeadlineExpired(self.phase) from None
        self.received += count
        return count


class DeadlineWriter(io.RawIOBase):
    """A socket's writes, all of them within the time given by `start` (phase "answer").

    Args:
        sock: socket.socket. The connection.
    """

    def __init__(self, sock: socket.socket):
        super().__init__()
        self._sock = sock
        self.deadline = time.monotonic()

    def start(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        while view:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExpired("answer")
            self._sock.settimeout(left)
            try:
                sent = self._sock.send(view[: 1 << 16])
            except TimeoutError:
                raise DeadlineExpired("answer") from None
            view = view[sent:]
        return len(data)


def refusal(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.0 answer `{"error": message}` that closes the connection."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class BoundedHTTPServer(socketserver.TCPServer):
    """A TCP server whose connections are served by `threads` daemon threads, at most
    `max_connections` open at once (served or waiting for a thread).

    Args:
        address: (host, port). Where to listen (an IPv6 host binds IPv6).
        handler: a `socketserver.BaseRequestHandler` class.
        threads: int. Worker threads (>= 1).
        max_connections: int. Open connections (>= threads); one more is answered 503.
    """

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, handler, threads: int, max_connections: int):
        for name, value, low in (
            ("threads", threads, 1),
            ("max_connections", max_connections, threads),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(
                    f"`{name}` must be an integer >= {low}. Received: {name}={value!r}"
                )
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.max_connections = max_connections
        self.stopping = False
        self._open: set[socket.socket] = set()
        self._cond = threading.Condition()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._work, name=f"rest-{i}", daemon=True)
            for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    @property
    def open_connections(self) -> int:
        with self._cond:
            return len(self._open)

    def process_request(self, request, client_address) -> None:
        """On the accepting thread: queue the connection for a worker, or refuse it at once."""
        with self._cond:
            admitted = not self.stopping and len(self._open) < self.max_connections
            if admitted:
                self._open.add(request)
        if admitted:
            self._queue.put((request, client_address))
            return
        message = (
            "The server is shutting down."
            if self.stopping
            else f"Too many open connections ({self.max_connections}, "
            "--rest_api_max_connections); try again later."
        )
        try:
            request.setblocking(False)
            request.send(refusal(503, "Service Unavailable", message))
        except OSError:
            pass
        self.shutdown_request(request)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, client_address = item
            try:
                if not self.stopping:
                    self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 - a broken connection never stops a worker
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
                with self._cond:
                    self._open.discard(request)
                    self._cond.notify_all()

    def handle_error(self, request, client_address) -> None:
        logging.exception("REST connection from %s failed", client_address[0])

    def close(self, grace: float = 0.0) -> None:
        """Stops accepting and reading, lets requests in flight answer for up to `grace` seconds,
        then shuts the connections left. Call after `shutdown()` (which stops `serve_forever`)."""
        with self._cond:
            self.stopping = True
            left = list(self._open)
        super().server_close()
        for request in left:  # a pending read returns end-of-file; answers can still be sent
            _shutdown(request, socket.SHUT_RD)
        end = time.monotonic() + grace
        with self._cond:
            while self._open and time.monotonic() < end:
                self._cond.wait(end - time.monotonic())
            left = list(self._open)
        for request in left:
            _shutdown(request, socket.SHUT_RDWR)
        for _ in self._workers:
            self._queue.put(None)

    def server_close(self) -> None:
        self.close(0.0)


def _shutdown(request: socket.socket, how: int) -> None:
    try:
        request.shutdown(how)
    except OSError:
        pass
