"""TensorFlow Serving's REST API on `--rest_api_port`: its paths, its JSON, its error bodies.

- `GET /v1/models/<name>[/versions/<v>|/labels/<l>]`: model status.
- `GET /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata`: signature defs.
- `GET /v1/models/<name>[/versions/<v>|/labels/<l>]/model_card`: the version's model card JSON
  (`ModelCard.to_dict()`; NOT_FOUND if it has none), an extension TF Serving does not have.
- `POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict` (and `:classify`).
- `GET /demo/...`: the browser demo (`serving.demo.site`), unless turned off (then NOT_FOUND).
- `GET <prometheus_config.path>`: the Prometheus metrics, with `--monitoring_config_file`.
Errors are `{"error": "<message>"}` with the HTTP status of the TF Serving code.

Exposed to clients it cannot trust, the port holds (`serving.rest_limits.RestLimits`, the
`--rest_api_*` flags): a fixed pool of threads and a cap on open connections (503 past it), total
deadlines for a request's line and headers and for its body (408), bodies up to
`--max_message_bytes` (413), whose counts and sizes are checked before values are converted and
of which only a few are decoded at once (503 when none frees up before the deadline), a Host
header naming this server (403 otherwise), one Content-Length (no Transfer-Encoding: 411), and a
4xx answer to every malformed request. Responses are HTTP/1.0: one request per connection.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import NoReturn

import grpc
from absl import logging
from google.protobuf import json_format

from serving import json_codec, metrics, validation
from serving.cancellation import Cancellation
from serving.demo import site as demo_site
from serving.errors import ServingError, invalid, not_found
from serving.grpc_service import signature_map, status_response
from serving.rest_limits import DEFAULT_LIMITS, RestLimits
from serving.rest_transport import (
    BoundedHTTPServer,
    DeadlineExpired,
    DeadlineReader,
    DeadlineWriter,
)
from serving.service import MODEL_CARD, SIGNATURE_DEF, Service, Target, check_deadline

# http_rest_api_util.cc
_POST = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
_GET = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata|model_card))?"  # model_card: this server's extension
)


_DRAIN_BYTES = 64 << 20  # an oversized body up to this much more is read before answering
_LENGTH = re.compile(r"[0-9]{1,18}")  # ASCII digits only; more than 18 is over any limit
_MAX_SEGMENT = 255  # characters of a model name or label


def _target(name: str, version: str | None, label: str | None) -> Target:
    name = urllib.parse.unquote(name)
    label = urllib.parse.unquote(label) if label else None
    for what, value in (("model name", name), ("version label", label)):
        if value is not None and len(value) > _MAX_SEGMENT:
            raise invalid(
                f"The {what} in the path has {len(value)} characters; at most {_MAX_SEGMENT}."
            )
    if version and (len(version) > 19 or int(version) >= 2**63):
        raise invalid(f"Version {version[:20]} in the path is not a 64-bit integer.")
    return Target(name, int(version) if version else None, label)


class RestServer(BoundedHTTPServer):
    """TF Serving's REST API on a bounded pool of threads (`serving.rest_transport`).

    Args:
        address: (host, port). Where to listen.
        service: Service. What the requests run.
        demo: bool. Serve the browser demo at `/demo/`.
        metrics_path: str or None. Serve the Prometheus metrics there (needs service.metrics).
        limits: RestLimits. Threads, connections, deadlines, decodes and accepted Host names.
    """

    def __init__(
        self,
        address: tuple[str, int],
        service: Service,
        demo: bool = True,
        metrics_path: str | None = None,
        limits: RestLimits = DEFAULT_LIMITS,
    ):
        if metrics_path is not None and service.metrics is None:
            raise ValueError(
                f"Serving metrics at a path needs a Service with metrics. "
                f"Received: metrics_path={metrics_path!r}"
            )
        self.service, self.demo, self.metrics_path = service, demo, metrics_path
        self.limits = limits
        self._decodes = threading.BoundedSemaphore(limits.max_concurrent_decodes)
        super().__init__(address, _Handler, limits.threads, limits.max_connections)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="rest", daemon=True)
        thread.start()
        return thread

    @contextlib.contextmanager
    def decoding(self, deadline: float) -> Iterator[None]:
        """Holds one of the `max_concurrent_decodes` slots, waited for until `deadline`."""
        if not self._decodes.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise ServingError(
                grpc.StatusCode.UNAVAILABLE,
                f"Too many request bodies are being decoded ({self.limits.max_concurrent_decodes}"
                ", --rest_api_max_concurrent_decodes); try again later.",
            )
        try:
            yield
        finally:
            self._decodes.release()


class _Handler(BaseHTTPRequestHandler):
    server: RestServer
    server_version = "keras-reptile-serving"

    def log_message(self, format, *args):  # the base class's signature
        logging.debug("REST %s - " + format, self.client_address[0], *args)

    def setup(self) -> None:
        self.connection = self.request
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)
        self.writer = DeadlineWriter(self.connection)
        self.wfile = self.writer

    def handle_one_request(self) -> None:
        """`BaseHTTPRequestHandler.handle_one_request`, with the request line and headers read
        within `header_timeout_ms`, and every failure answered or the connection closed."""
        self.reader.start("headers", self.server.limits.header_timeout_ms / 1000)
        self.close_connection = True  # HTTP/1.0: one request per connection
        self.command = self.path = self.requestline = ""
        self.request_version = "HTTP/1.0"
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                return
            if len(self.raw_requestline) > 65536:
                self.send_error(414, "The request line is longer than 65536 bytes.")
                return
            if not self.parse_request():  # its error is answered
                return
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(501, f"Unsupported method: {self.command[:50]}")
                return
            method()
            self.wfile.flush()
        except DeadlineExpired as e:
            self.close_connection = True
            if e.phase == "answer" or (e.phase == "headers" and self.reader.received == 0):
                return  # a client that does not read, or an idle connection: closed
            self.send_error(
                408,
                "The request line and headers were not received within "
                f"{self.server.limits.header_timeout_ms} ms (--rest_api_header_timeout_in_ms).",
            )
        except OSError:  # the client went away
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        """Every error of the HTTP layer as TF Serving's `{"error": ...}` (then closing)."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # answered with a status line all the same
            self.request_version = "HTTP/1.0"
        try:
            self._send(code, {"error": message or HTTPStatus(code).phrase})
        except (OSError, DeadlineExpired):
            pass

    def _send(self, status: int, body: dict | demo_site.Response) -> None:
        headers = {}
        if isinstance(body, demo_site.Response):  # a file of the demo: not TF Serving's JSON
            status, content_type, data = body.status, body.content_type, body.body
            headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
            if body.location is not None:
                headers["Location"] = body.location
        else:
            content_type, data = "application/json", json.dumps(body).encode()
        self.writer.start(self.server.limits.body_timeout_ms / 1000)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str, fn) -> None:
        start, code = time.monotonic(), grpc.StatusCode.OK
        try:
            self._check_headers()
            status, body = 200, fn()
        except ServingError as e:
            status, body, code = e.http_status, {"error": e.message}, e.code
        except Exception as e:  # a bad request never takes the server down
            logging.exception("REST %s %s failed", method, self.path)
            status, body = 500, {"error": f"Internal error: {type(e).__name__}"}
            code = grpc.StatusCode.INTERNAL
        self._record(method, code, time.monotonic() - start)
        try:
            self._send(status, body)
        except (OSError, DeadlineExpired):
            self.close_connection = True
            logging.info("REST client went away, or did not read, before its answer was sent")

    def _check_headers(self) -> None:
        """The Host is this server's; Content-Length and Transfer-Encoding are unambiguous."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:
            raise invalid(f"The request has {len(hosts)} Host headers; expected one.")
        if hosts and not self.server.limits.host_allowed(hosts[0]):
            raise ServingError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Host {hosts[0][:100]!r} is not served here: expected localhost, 127.0.0.1 or "
                "[::1] (with any port), or a name of --rest_api_allowed_hosts.",
            )
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Transfer-Encoding (chunked bodies) is not supported: send a Content-Length.",
                http_status=411,
            )
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1:
            self.close_connection = True
            raise invalid(f"The request has {len(lengths)} Content-Length headers; expected one.")

    def _record(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Counts a :predict or :classify request in the metrics, as TF Serving does."""
        recorder = self.server.service.metrics
        match = _POST.fullmatch(urllib.parse.urlsplit(self.path).path)
        if recorder is None or method != "POST" or match is None:
            return
        api = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}
        name = urllib.parse.unquote(match.group(1))
        recorder.record_request(name, api[match.group(4).lower()], "REST", code.name, seconds)

    def _malformed(self) -> dict:
        raise invalid(f"Malformed request: {self.command} {self.path[:1000]}")

    def do_GET(self):  # http.server's naming
        self._handle("GET", self._get)

    def do_POST(self):
        self._handle("POST", self._post)

    def do_PUT(self):
        self._handle("PUT", self._malformed)

    def do_DELETE(self):
        self._handle("DELETE", self._malformed)

    def _get(self) -> dict | demo_site.Response:
        url = urllib.parse.urlsplit(self.path)
        if self.server.metrics_path is not None and url.path == self.server.metrics_path:
            text = self.server.service.metrics.exposition()
            return demo_site.Response(200, metrics.CONTENT_TYPE, text)
        if demo_site.is_demo_path(url.path):
            if not self.server.demo:
                raise not_found(f"Not found: {url.path} (the demo is off: --demo=false)")
            return demo_site.handle_get(url.path, url.query, self.server.service)
        match = _GET.fullmatch(url.path)
        if not match:
            self._malformed()
        name, version, label, resource = match.groups()
        if not name:
            raise invalid("Missing model name in request.")
        target = _target(name, version, label)
        service = self.server.service
        if resource and resource.lower() == MODEL_CARD:
            return service.metadata(target, [MODEL_CARD]).card.to_dict()
        if resource:
            metadata = service.metadata(target, [SIGNATURE_DEF])
            signature_defs = signature_map(metadata.signature_defs)
            return {
                "model_spec": {
                    "name": metadata.name,
                    "signature_name": "",
                    "version": str(metadata.version),
                },
                "metadata": {
                    SIGNATURE_DEF: json_format.MessageToDict(
                        signature_defs, preserving_proto_field_name=True
                    )
                },
            }
        return json_format.MessageToDict(
            status_response(service.status(target.name, target.version)),
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )

    def _content_length(self) -> int:
        length = self.headers.get("Content-Length")
        if length is None:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "Missing Content-Length header.", http_status=411
            )
        length = length.strip()
        if not _LENGTH.fullmatch(length):
            self.close_connection = True
            if length.isascii() and length.isdigit():
                self._refuse_body(None)
            raise invalid(f"Content-Length {length[:20]!r} is not a number of bytes.")
        return int(length)

    def _refuse_body(self, length: int | None) -> NoReturn:
        """Raises 413 for a body over the limit (read first, within the body timeout, if small
        enough, so the client sees the answer rather than a reset)."""
        limit = self.server.service.limits.max_message_bytes
        self.reader.start("body", self.server.limits.body_timeout_ms / 1000)
        remaining = length if length is not None and length <= limit + _DRAIN_BYTES else 0
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
        except DeadlineExpired:
            pass
        self.close_connection = True
        size = f"{length} bytes" if length is not None else "more than 18 digits of bytes"
        raise ServingError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Request body of {size} is larger than the maximum of {limit} bytes "
            "(--max_message_bytes).",
            http_status=413,
        )

    def _read_body(self) -> bytes:
        """The body, read within `body_timeout_ms` (408 past it, 400 if the client stops)."""
        length = self._content_length()
        if length > self.server.service.limits.max_message_bytes:
            self._refuse_body(length)
        timeout_ms = self.server.limits.body_timeout_ms
        self.reader.start("body", timeout_ms / 1000)
        try:
            data = self.rfile.read(length)
        except DeadlineExpired:
            self.close_connection = True
            raise ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"The request body ({length} bytes) was not received within {timeout_ms} ms "
                "(--rest_api_body_timeout_in_ms).",
                http_status=408,
            ) from None
        if len(data) < length:
            self.close_connection = True
            raise invalid(f"The request body ended after {len(data)} of its {length} bytes.")
        return data

    def _post(self) -> dict:
        match = _POST.fullmatch(urllib.parse.urlsplit(self.path).path)
        if not match:
            self._malformed()
        name, version, label, verb = match.groups()
        deadline, reason = self.server.service.timeouts.rest()
        target = _target(name, version, label)
        data = self._read_body()
        with self.server.decoding(deadline):
            body = json_codec.parse(data)
        del data
        check_deadline(deadline, "the request")
        signature_name = json_codec.signature_name_of(body)
        verb = verb.lower()
        cancellation = Cancellation(reason)
        return self._run(verb, target, signature_name, body, deadline, cancellation)

    def _run(self, verb, target, signature_name, body, deadline, cancellation) -> dict:
        service = self.server.service
        if verb == "classify":
            with self.server.decoding(deadline):
                examples = json_codec.decode_examples(body, service.limits)
            result = service.classify(target, signature_name, examples, deadline, cancellation)
            return json_codec.encode_classify(result.outputs["scores"])
        if verb == "regress":
            raise ServingError(
                grpc.StatusCode.UNIMPLEMENTED,
                "Regress is not served: the signatures take tensors, not tf.Example; use predict.",
            )
        row_format = []

        def decode(spec):
            with self.server.decoding(deadline):
                arrays, rows = json_codec.decode_predict(body, spec, service.limits)
            row_format.append(rows)
            return validation.check_arrays(spec, arrays, service.limits)

        result = service.predict(target, signature_name, decode, (), deadline, cancellation)
        return json_codec.encode_predict(result.outputs, row_format[0])


def build_server(
    service: Service,
    host: str,
    port: int,
    demo: bool = True,
    metrics_path: str | None = None,
    limits: RestLimits = DEFAULT_LIMITS,
) -> RestServer:
    """A REST server bound to `host:port`, serving in a background thread (and the browser demo
    at `/demo/` if `demo`, Prometheus metrics at `metrics_path` if given). Requests get the
    deadline of `service.timeouts.rest()`; `limits` bound connections and reads, and the Host
    header may also name `host`."""
    server = RestServer((host, port), service, demo, metrics_path, limits.with_host(host))
    server.serve_in_thread()
    return server
