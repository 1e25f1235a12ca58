"""TensorFlow Serving's REST API on `--rest_api_port`: its paths, its JSON, its error bodies.

- `GET /v1/models/<name>[/versions/<v>|/labels/<l>]`: model status.
- `GET /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata`: signature defs.
- `GET /v1/models/<name>[/versions/<v>|/labels/<l>]/model_card`: the version's model card JSON
  (`ModelCard.to_dict()`; NOT_FOUND if it has none), an extension TF Serving does not have.
- `POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict` (and `:classify`).
- `GET /demo/...`: the browser demo (`serving.demo.site`), unless turned off (then NOT_FOUND).
- `GET <prometheus_config.path>`: the Prometheus metrics, with `--monitoring_config_file`.
Errors are `{"error": "<message>"}` with the HTTP status of the TF Serving code.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from absl import logging
from google.protobuf import json_format

from serving import json_codec, metrics, validation
from serving.cancellation import Cancellation
from serving.demo import site as demo_site
from serving.errors import ServingError, invalid, not_found
from serving.grpc_service import signature_map, status_response
from serving.service import MODEL_CARD, SIGNATURE_DEF, Service, Target, check_deadline

# http_rest_api_util.cc
_POST = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
_GET = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata|model_card))?"  # model_card: this server's extension
)


_DRAIN_BYTES = 64 << 20  # an oversized body up to this much more is read before answering


def _target(name: str, version: str | None, label: str | None) -> Target:
    return Target(
        urllib.parse.unquote(name),
        int(version) if version else None,
        urllib.parse.unquote(label) if label else None,
    )


class RestServer(ThreadingHTTPServer):
    """A thread per request; `server_close` waits for the requests in flight."""

    daemon_threads = False
    block_on_close = True

    def __init__(
        self,
        address: tuple[str, int],
        service: Service,
        demo: bool = True,
        metrics_path: str | None = None,
    ):
        if metrics_path is not None and service.metrics is None:
            raise ValueError(
                f"Serving metrics at a path needs a Service with metrics. "
                f"Received: metrics_path={metrics_path!r}"
            )
        self.service, self.demo, self.metrics_path = service, demo, metrics_path
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="rest", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: RestServer
    server_version = "keras-reptile-serving"
    timeout = 60  # seconds a client may take to send its request

    def log_message(self, format, *args):  # the base class's signature
        logging.debug("REST %s - " + format, self.client_address[0], *args)

    def _send(self, status: int, body: dict | demo_site.Response) -> None:
        headers = {}
        if isinstance(body, demo_site.Response):  # a file of the demo: not TF Serving's JSON
            status, content_type, data = body.status, body.content_type, body.body
            headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
            if body.location is not None:
                headers["Location"] = body.location
        else:
            content_type, data = "application/json", json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str, fn) -> None:
        start, code = time.monotonic(), grpc.StatusCode.OK
        try:
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
        except OSError:
            logging.info("REST client went away before its answer was sent")

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
        raise invalid(f"Malformed request: {self.command} {self.path}")

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

    def _read_json(self):
        limit = self.server.service.limits.max_message_bytes
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "Missing Content-Length header.", http_status=411
            )
        length = int(length)
        if length > limit:
            remaining = length if length <= limit + _DRAIN_BYTES else 0
            while remaining > 0:  # read it, so the client sees the answer, not a reset
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
            self.close_connection = True
            raise ServingError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Request body of {length} bytes is larger than the maximum of {limit} bytes "
                "(--max_message_bytes).",
                http_status=413,
            )
        try:
            return json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError) as e:
            raise invalid(f"JSON Parse error: {e}") from None

    def _post(self) -> dict:
        match = _POST.fullmatch(urllib.parse.urlsplit(self.path).path)
        if not match:
            self._malformed()
        name, version, label, verb = match.groups()
        deadline, reason = self.server.service.timeouts.rest()
        target = _target(name, version, label)
        body = self._read_json()
        check_deadline(deadline, "the request")
        signature_name = json_codec.signature_name_of(body)
        verb = verb.lower()
        cancellation = Cancellation(reason)
        return self._run(verb, target, signature_name, body, deadline, cancellation)

    def _run(self, verb, target, signature_name, body, deadline, cancellation) -> dict:
        service = self.server.service
        if verb == "classify":
            examples = json_codec.decode_examples(body)
            result = service.classify(target, signature_name, examples, deadline, cancellation)
            return json_codec.encode_classify(result.outputs["scores"])
        if verb == "regress":
            raise ServingError(
                grpc.StatusCode.UNIMPLEMENTED,
                "Regress is not served: the signatures take tensors, not tf.Example; use predict.",
            )
        row_format = []

        def decode(spec):
            arrays, rows = json_codec.decode_predict(body, spec)
            row_format.append(rows)
            return validation.check_arrays(spec, arrays, service.limits)

        result = service.predict(target, signature_name, decode, (), deadline, cancellation)
        return json_codec.encode_predict(result.outputs, row_format[0])


def build_server(
    service: Service, host: str, port: int, demo: bool = True, metrics_path: str | None = None
) -> RestServer:
    """A REST server bound to `host:port`, serving in a background thread (and the browser demo
    at `/demo/` if `demo`, Prometheus metrics at `metrics_path` if given). Requests get the
    deadline of `service.timeouts.rest()`."""
    server = RestServer((host, port), service, demo, metrics_path)
    server.serve_in_thread()
    return server
