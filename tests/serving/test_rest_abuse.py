"""The REST port against abusive clients: every case gets its 4xx (or 503) and TF Serving's error
body, the server stays up, and a light request sent meanwhile is answered in time.

Raw sockets carry the malformed HTTP; the limits are tiny (`RestLimits`), so each case takes
well under a second or two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time

import pytest

from serving import rest
from serving.cancellation import Timeouts
from serving.rest_limits import RestLimits
from serving.service import Service
from serving.validation import Limits
from tests.serving import in_process
from tests.serving.helpers import export, http, install

pytestmark = pytest.mark.slow

LIMITS = Limits(max_support=40, max_queries=20, max_inner_steps=50, max_message_bytes=2**20)
REST_LIMITS = RestLimits(
    threads=4,
    max_connections=6,
    header_timeout_ms=600,
    body_timeout_ms=600,
    max_concurrent_decodes=1,
)
LIGHT_SECONDS = 2.0  # a status request sent during an abusive one is answered within this


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    install(export("sine", 1), folder / "sine", 1)
    result = in_process.manager("sine", folder / "sine", LIMITS)
    yield result
    result.stop()


@contextlib.contextmanager
def rest_server(manager, limits: RestLimits = REST_LIMITS, timeouts: Timeouts | None = None):
    server = rest.build_server(
        Service(manager, LIMITS, timeouts=timeouts), "127.0.0.1", 0, limits=limits
    )
    try:
        yield server
    finally:
        server.shutdown()
        server.close()


@pytest.fixture(scope="module")
def server(manager):
    with rest_server(manager) as server:
        yield server


def _port(server) -> int:
    return server.server_address[1]


def _answer(sock: socket.socket) -> tuple[int, dict | None]:
    """The status and JSON body of the answer read from `sock` until the server closes it."""
    reply = b"".join(iter(lambda: sock.recv(65536), b""))
    if not reply:
        return 0, None
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else None


def _light(port: int) -> float:
    """Seconds a status request took (asserting it was answered 200)."""
    start = time.monotonic()
    status, body = http("GET", f"http://127.0.0.1:{port}/v1/models/sine", timeout=LIGHT_SECONDS)
    assert status == 200, body
    return time.monotonic() - start


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _send_then_wait(data: bytes, pause: float = 0.0, shut: bool = False):
    """A client that sends `data` at once, then (after `pause`) maybe half-closes."""

    def talk(sock):
        sock.sendall(data)
        time.sleep(pause)
        if shut:
            sock.shutdown(socket.SHUT_WR)

    return talk


def _trickle(data: bytes, every: float = 0.1):
    """A client that sends `data` a byte at a time, `every` seconds apart, while it may."""

    def talk(sock):
        for byte in data:
            try:
                sock.send(bytes([byte]))
            except OSError:
                return
            time.sleep(every)

    return talk


def _head_then_trickle(request: bytes, every: float = 0.1):
    """A client that sends a request's line and headers at once, then trickles its body."""
    head, _, body = request.partition(b"\r\n\r\n")
    trickle = _trickle(body, every)

    def talk(sock):
        sock.sendall(head + b"\r\n\r\n")
        trickle(sock)

    return talk


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    talk: object  # callable(socket): what the client sends
    status: int
    message: str


_PREDICT = "/v1/models/sine:predict"
_DEEP = b"[" * 100_000 + b"]" * 100_000
_ROWS = json.dumps({"instances": [[0.5]] * 100_000}).encode()
_COLUMN = json.dumps({"inputs": [[0.5]] * 100_000}).encode()
_BODY = json.dumps({"instances": [[0.5]]}).encode()

CASES = [
    Case(
        "body_too_large",
        _send_then_wait(
            b"POST /v1/models/sine:predict HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        ),
        413,
        "larger than the maximum of 1048576 bytes (--max_message_bytes)",
    ),
    Case("deep_nesting", _send_then_wait(_post(_PREDICT, _DEEP)), 400, "nests arrays"),
    Case("huge_row_count", _send_then_wait(_post(_PREDICT, _ROWS)), 400, "holds 100000 rows"),
    Case("huge_column", _send_then_wait(_post(_PREDICT, _COLUMN)), 400, "(--max_queries)"),
    Case(
        "slow_headers",
        _trickle(b"GET /v1/models/sine HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        408,
        "--rest_api_header_timeout_in_ms",
    ),
    Case(
        "partial_headers_then_silence",
        _send_then_wait(b"GET /v1/models/sine HTTP/1.1\r\nHost: loc", pause=1.0),
        408,
        "--rest_api_header_timeout_in_ms",
    ),
    Case(
        "slow_body",
        _head_then_trickle(_post(_PREDICT, _BODY)),
        408,
        "--rest_api_body_timeout_in_ms",
    ),
    Case(
        "short_body_then_silence",
        _send_then_wait(_post(_PREDICT, _BODY)[:-3], pause=1.0),
        408,
        "--rest_api_body_timeout_in_ms",
    ),
    Case(
        "short_body_then_end",
        _send_then_wait(_post(_PREDICT, _BODY)[:-3], shut=True),
        400,
        f"ended after {len(_BODY) - 3} of its {len(_BODY)} bytes",
    ),
    Case(
        "long_path_segment",
        _send_then_wait(f"GET /v1/models/{'a' * 300} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()),
        400,
        "has 300 characters; at most 255",
    ),
    Case(
        "long_demo_file_name",
        _send_then_wait(f"GET /demo/{'a' * 300}.js HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()),
        404,
        "Not found: /demo/aaa",
    ),
    Case(
        "huge_version_number",
        _send_then_wait(
            f"GET /v1/models/sine/versions/{'9' * 5000} HTTP/1.1\r\n"
            "Host: localhost\r\n\r\n".encode()
        ),
        400,
        "is not a 64-bit integer",
    ),
    Case(
        "huge_content_length",
        _send_then_wait(
            b"POST /v1/models/sine:predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: "
            + b"9" * 5000
            + b"\r\n\r\n"
        ),
        413,
        "more than 18 digits of bytes",
    ),
    Case(
        "non_ascii_content_length",
        _send_then_wait(
            "POST /v1/models/sine:predict HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Length: \u0661\u0662\r\n\r\n".encode()
        ),
        400,
        "is not a number of bytes",
    ),
    Case(
        "duplicate_content_length",
        _send_then_wait(_post(_PREDICT, _BODY, f"Content-Length: {len(_BODY)}\r\n")),
        400,
        "2 Content-Length headers; expected one",
    ),
    Case(
        "chunked_body",
        _send_then_wait(
            b"POST /v1/models/sine:predict HTTP/1.1\r\nHost: localhost\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
        411,
        "Transfer-Encoding (chunked bodies) is not supported",
    ),
    Case(
        "bad_host",
        _send_then_wait(b"GET /demo/ HTTP/1.1\r\nHost: rebound.example.com\r\n\r\n"),
        403,
        "Host 'rebound.example.com' is not served here",
    ),
    Case(
        "two_hosts",
        _send_then_wait(b"GET /v1/models/sine HTTP/1.1\r\nHost: localhost\r\nHost: x\r\n\r\n"),
        400,
        "2 Host headers",
    ),
    Case(
        "unknown_method",
        _send_then_wait(b"PATCH /v1/models/sine HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        501,
        "Unsupported method: PATCH",
    ),
    Case(
        "not_http",
        _send_then_wait(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n"),
        400,
        "Bad",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_abusive_request_gets_its_status_and_the_server_stays_up(server, case):
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as sock:
        client = threading.Thread(target=case.talk, args=(sock,))
        start = time.monotonic()
        client.start()
        time.sleep(0.1)
        assert _light(_port(server)) < LIGHT_SECONDS  # while the abusive client talks
        status, body = _answer(sock)
        took = time.monotonic() - start
        client.join(10)
    assert status == case.status, body
    assert set(body) == {"error"} and case.message in body["error"], body
    assert took < 3.0, took
    assert _light(_port(server)) < LIGHT_SECONDS
