"""The REST port against abusive clients: every case gets its 4xx (or 503) and TF Serving's error
body, the server stays up, and a light request sent meanwhile is answered in time.

Raw sockets carry the malformed HTTP; the limits are tiny (`RestLimits`), so each case takes
well under a second or two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import socket
import threading
import time

import pytest

from serving import rest
from serving.cancellation import Timeouts
from serving.launcher import ServerProcess
from serving.rest_limits import RestLimits
from serving.rest_transport import DeadlineExpired, DeadlineReader, DeadlineWriter
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
HANG_SECONDS = 10.0  # an abusive request is answered within this: longer means it waited


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
        "too_many_headers",
        _send_then_wait(
            b"GET /v1/models/sine HTTP/1.1\r\nHost: localhost\r\n" + b"X: y\r\n" * 200 + b"\r\n"
        ),
        431,
        "Too many headers",
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
def test_abusive_request_gets_its_status_and_the_server_stays_up(server, case, caplog):
    caplog.set_level(logging.INFO)
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
    # A hang detector, not a speed check (benchmarks/serving_memory.py measures the worst body):
    # the answer comes without waiting for the client, whatever else the machine runs.
    assert took < HANG_SECONDS, took
    assert _light(_port(server)) < LIGHT_SECONDS
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]  # client input logs no traceback


def test_connections_past_the_cap_are_answered_503_at_once(server):
    idle = [socket.create_connection(("127.0.0.1", _port(server))) for _ in range(6)]
    try:
        deadline = time.monotonic() + 2
        while server.open_connections < 6:
            assert time.monotonic() < deadline, server.open_connections
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", _port(server)), timeout=2) as extra:
            status, body = _answer(extra)
        assert status == 503 and "Too many open connections (6" in body["error"], body
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 2
    while server.open_connections:  # the idle ones are closed at their header deadline
        assert time.monotonic() < deadline, server.open_connections
        time.sleep(0.01)
    assert _light(_port(server)) < LIGHT_SECONDS


def test_a_body_waits_for_a_decoding_slot_until_its_deadline(manager):
    with rest_server(manager, timeouts=Timeouts(rest_ms=300)) as server:
        with server.decoding(time.monotonic() + 5):  # the only slot, held
            start = time.monotonic()
            status, body = http(
                "POST", f"http://127.0.0.1:{_port(server)}{_PREDICT}", {"instances": [[0.5]]}
            )
            took = time.monotonic() - start
            assert _light(_port(server)) < LIGHT_SECONDS  # status requests decode nothing
        assert status == 503 and "--rest_api_max_concurrent_decodes" in body["error"], body
        assert 0.25 < took < 2.0, took
        status, body = http(
            "POST", f"http://127.0.0.1:{_port(server)}{_PREDICT}", {"instances": [[0.5]]}
        )
        assert status == 200 and len(body["predictions"]) == 1, body


@pytest.mark.parametrize(
    "allowed, header, ok",
    [
        ((), "localhost", True),
        ((), "LOCALHOST:8501", True),
        ((), "127.0.0.1:1", True),
        ((), "[::1]:8501", True),
        ((), "[::1]", True),
        ((), "localhost.:8501", True),
        ((), "example.com", False),
        ((), "127.0.0.1.example.com", False),
        ((), "[::2]", False),
        ((), "", False),
        (("example.com", "10.0.0.5"), "example.com:80", True),
        (("example.com", "10.0.0.5"), "10.0.0.5:8501", True),
        (("example.com",), "www.example.com", False),
        (("fe80::1",), "[fe80::1]:8501", True),
        (("*",), "anything.example", True),
    ],
)
def test_the_host_header_must_name_this_server(allowed, header, ok):
    assert RestLimits(allowed_hosts=allowed).host_allowed(header) is ok


def test_the_bound_address_is_an_allowed_host():
    assert RestLimits().with_host("10.0.0.5").host_allowed("10.0.0.5:8501")
    assert not RestLimits().with_host("0.0.0.0").host_allowed("0.0.0.0")


@pytest.mark.parametrize(
    "kwargs, received",
    [
        (dict(threads=0), "Received: threads=0"),
        (dict(header_timeout_ms=0.5), "Received: header_timeout_ms=0.5"),
        (dict(threads=8, max_connections=4), "Received: max_connections=4, threads=8"),
    ],
)
def test_rest_limits_refuse_bad_values(kwargs, received):
    with pytest.raises(ValueError, match=received):
        RestLimits(**kwargs)


def test_close_returns_within_its_grace_whatever_clients_do(manager):
    limits = RestLimits(
        threads=4, max_connections=8, header_timeout_ms=60000, body_timeout_ms=60000
    )
    with rest_server(manager, limits) as server:
        port = _port(server)
        tricklers = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        idle = socket.create_connection(("127.0.0.1", port))
        for sock in tricklers:
            threading.Thread(
                target=_head_then_trickle(_post(_PREDICT, _BODY), 0.2), args=(sock,), daemon=True
            ).start()
        time.sleep(0.3)
        assert server.open_connections == 3
        server.shutdown()
        start = time.monotonic()
        server.close(grace=0.5)
        took = time.monotonic() - start
        assert took < 1.5, took
        assert server.open_connections == 0
        for sock in [*tricklers, idle]:
            sock.close()


def _raw(port: int, data: bytes) -> tuple[int, dict | None]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return _answer(sock)


def test_sigterm_exits_within_the_grace_period_whatever_rest_clients_do(tmp_path):
    """The flags reach the server, and tricklers and idle connections do not hold its exit."""
    install(export("sine", 1), tmp_path / "sine", 1)
    flags = [
        "--model_name=sine",
        f"--model_base_path={tmp_path / 'sine'}",
        "--shutdown_grace_seconds=1",
        "--rest_api_header_timeout_in_ms=60000",
        "--rest_api_body_timeout_in_ms=60000",
        "--rest_api_allowed_hosts=example.com",
        "--rest_api_num_threads=4",
        "--rest_api_max_connections=5",
    ]
    server = ServerProcess(flags)
    server.start()
    sockets = []
    try:
        port = server.rest_port
        status, _ = _raw(port, b"GET /v1/models/sine HTTP/1.1\r\nHost: example.com:80\r\n\r\n")
        assert status == 200
        status, body = _raw(port, b"GET /v1/models/sine HTTP/1.1\r\nHost: example.org\r\n\r\n")
        assert status == 403 and "--rest_api_allowed_hosts" in body["error"]
        for talk in (
            _head_then_trickle(_post(_PREDICT, _BODY), 0.5),
            _trickle(b"GET /v1/models/sine HTTP/1.1\r\n", 0.5),
            _send_then_wait(b""),
            _send_then_wait(b""),
            _send_then_wait(b""),
        ):
            sock = socket.create_connection(("127.0.0.1", port))
            sockets.append(sock)
            threading.Thread(target=talk, args=(sock,), daemon=True).start()
        time.sleep(0.5)
        status, body = _raw(port, b"GET /v1/models/sine HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status == 503 and "--rest_api_max_connections" in body["error"], body
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0
        assert time.monotonic() - start < 10
        assert "Server stopped" in server.log() and "Traceback" not in server.log()
    finally:
        for sock in sockets:
            sock.close()
        server.stop(signal.SIGKILL)
        server.close()


@pytest.mark.parametrize("phase", ["body", "answer"])
def test_a_phase_deadline_holds_however_the_peer_trickles(phase):
    near, far = socket.socketpair()
    with near, far:
        start = time.monotonic()
        with pytest.raises(DeadlineExpired, match=phase):
            if phase == "answer":  # a peer that never reads
                writer = DeadlineWriter(near)
                writer.start(0.3)
                writer.write(b"x" * (64 << 20))
            else:  # a peer that sends a byte every 0.05 s
                reader = DeadlineReader(near)
                reader.start("body", 0.3)
                feeder = threading.Thread(target=_trickle(b"y" * 40, 0.05), args=(far,))
                feeder.start()
                buffer = bytearray(1)
                while True:
                    reader.readinto(buffer)
        assert time.monotonic() - start < 1.0
