"""`python -m serving.server`: TensorFlow Serving's model server for keras-reptile SavedModels.

Flags mirror `tensorflow_model_server` (`--port`, `--rest_api_port`, `--model_name`,
`--model_base_path`, `--model_config_file`, `--file_system_poll_wait_seconds`, ...). With no model
flags, every folder of `saved_models/` is served under its folder's name. Binds to 127.0.0.1
unless `--host` says otherwise. SIGTERM (or Ctrl-C) stops it gracefully.

Example:
    python -m serving.server --model_name=omniglot_5w5s --model_base_path=saved_models/omniglot_5w5s
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from absl import app, flags, logging

from keras_reptile.training.strategy import set_threads
from serving import grpc_service, model_config, rest, tls
from serving.adaptation_cache import AdaptationCache
from serving.admission import Admission
from serving.batching import BatchingParameters, TaskBatcher
from serving.cancellation import Timeouts
from serving.config_protos import Monitoring
from serving.cost import DEFAULT_MAX_GFLOP, DEFAULT_MAX_MEMORY_MB, CostLimits
from serving.errors import ServingError
from serving.metrics import ServingMetrics
from serving.model_config import ModelServerConfig
from serving.model_manager import ModelManager
from serving.rest_limits import RestLimits
from serving.service import Service
from serving.validation import Limits

ZOO_DIR = "saved_models"

FLAGS = flags.FLAGS
flags.DEFINE_integer("port", 8500, "Port to listen on for gRPC.")
flags.DEFINE_integer("rest_api_port", 8501, "Port to listen on for the REST API; 0 turns it off.")
flags.DEFINE_integer("rest_api_timeout_in_ms", 30000, "Timeout of a REST request, in ms.")
flags.DEFINE_integer(
    "request_timeout_in_ms", 30000, "Deadline of a gRPC request that sets none, in ms."
)
flags.DEFINE_integer(
    "max_request_timeout_in_ms",
    60000,
    "Longest any request may run, in ms: later gRPC deadlines and a longer REST timeout are cut "
    "to it. The work of a request stops when its deadline passes.",
)
flags.DEFINE_string("model_name", "default", "Name of the model (with --model_base_path).")
flags.DEFINE_string("model_base_path", "", "Folder of the model's integer version folders.")
flags.DEFINE_string(
    "model_config_file", "", "A text-format ModelServerConfig; overrides the two flags above."
)
flags.DEFINE_float(
    "model_config_file_poll_wait_seconds",
    0.0,
    "Seconds between reads of --model_config_file; a changed file is applied as a reload "
    "request would (0: read once, at startup).",
)
flags.DEFINE_float(
    "file_system_poll_wait_seconds",
    1.0,
    "Seconds between polls of the model folders for new versions; 0 polls once, at startup.",
)
flags.DEFINE_bool(
    "allow_version_labels_for_unavailable_models",
    False,
    "Allow the config's version labels to name versions that are not loaded.",
)
flags.DEFINE_integer(
    "adaptation_cache_bytes",
    256 << 20,
    "Bytes of adapted weights kept across requests, for all models together (default 256 MiB: "
    "about 590 tasks of a 5-way Omniglot model): an adapt_and_predict or adapt request whose "
    "model version, support set and settings were seen before reuses them (0: off). Cached "
    "requests run as adapt + predict_adapted, each batched when task batching is on.",
)
flags.DEFINE_bool(
    "allow_reload_config_rpc",
    True,
    "Serve HandleReloadConfigRequest (any client of the gRPC port may then replace the served "
    "models); false answers it PERMISSION_DENIED.",
)
flags.DEFINE_list(
    "model_base_path_roots",
    [],
    "Folders every model base path must lie in, at start and in every reload or config file "
    "change (comma-separated; empty: anywhere).",
)
flags.DEFINE_string("host", "127.0.0.1", "Address to bind both ports to (0.0.0.0: every one).")
flags.DEFINE_integer("max_support", 500, "Most support examples of a task.")
flags.DEFINE_integer("max_queries", 500, "Most query (or serving_default) examples of a task.")
flags.DEFINE_integer("max_tasks", 64, "Most tasks in one adapt_and_predict_tasks request.")
flags.DEFINE_integer("max_inner_steps", 1000, "Largest inner_steps a request may ask for.")
flags.DEFINE_float(
    "max_request_gflop",
    DEFAULT_MAX_GFLOP,
    "Most floating-point work one request may need, in GFLOP, estimated from its shapes and "
    "settings before it runs (0: no limit); more is RESOURCE_EXHAUSTED.",
)
flags.DEFINE_float(
    "max_request_memory_mb",
    DEFAULT_MAX_MEMORY_MB,
    "Most memory one request may need, in MiB, estimated before it runs (0: no limit).",
)
flags.DEFINE_integer("max_message_bytes", 64 * 2**20, "Largest gRPC message or REST body.")
flags.DEFINE_integer("grpc_workers", 16, "gRPC worker threads (requests run in parallel).")
flags.DEFINE_integer(
    "max_concurrent_computations",
    4,
    "Signature runs (or task batches) computing at once, over gRPC and REST together.",
)
flags.DEFINE_integer(
    "max_queued_computations",
    8,
    "Requests that may wait for a computation slot; past that they are refused (UNAVAILABLE).",
)
# TF Serving's names. One thread per kernel: concurrent requests then share the cores instead of
# each splitting small kernels across them (benchmarks/serving_load.py).
flags.DEFINE_integer(
    "tensorflow_intra_op_parallelism", 1, "Threads per TensorFlow kernel (0: TensorFlow's default)."
)
flags.DEFINE_integer(
    "tensorflow_inter_op_parallelism", 0, "Kernels run at once (0: TensorFlow's default)."
)
flags.DEFINE_float("shutdown_grace_seconds", 30.0, "On SIGTERM, time given to requests in flight.")
flags.DEFINE_bool(
    "enable_batching",
    False,
    "Run concurrent adapt_and_predict requests of one model version with equal shapes and inner "
    "settings as one multi-task adaptation (task batching).",
)
flags.DEFINE_string(
    "batching_parameters_file",
    "",
    "A text-format BatchingParameters (max_batch_size counts tasks, batch_timeout_micros, "
    "num_batch_threads, max_enqueued_batches); the defaults otherwise. Needs --enable_batching.",
)
flags.DEFINE_string(
    "ssl_config_file",
    "",
    "A text-format SSLConfig (server_key, server_cert, custom_ca, client_verify; PEM text): gRPC "
    "over TLS, with client certificates when client_verify is true.",
)
flags.DEFINE_string(
    "monitoring_config_file",
    "",
    "A text-format MonitoringConfig; prometheus_config { enable: true } serves TF Serving's "
    "metrics at its path (/monitoring/prometheus/metrics) on the REST port.",
)
flags.DEFINE_bool(
    "demo", True, "Serve the browser demo at /demo/ on the REST port (serving/demo/)."
)
flags.DEFINE_integer(
    "rest_api_num_threads",
    16,
    "REST worker threads; each serves one connection at a time (TF Serving's flag name).",
)
flags.DEFINE_integer(
    "rest_api_max_connections",
    64,
    "Most open REST connections (served or waiting for a thread, >= --rest_api_num_threads); "
    "one more is answered 503 and closed.",
)
flags.DEFINE_integer(
    "rest_api_header_timeout_in_ms",
    10000,
    "Total time, in ms, a REST client has to send its request line and headers (and an open "
    "connection to start its request); past it the answer is 408.",
)
flags.DEFINE_integer(
    "rest_api_body_timeout_in_ms",
    60000,
    "Total time, in ms, a REST client has to send a request body (and to take its answer); "
    "past it the answer is 408.",
)
flags.DEFINE_integer(
    "rest_api_max_concurrent_decodes",
    2,
    "REST JSON bodies decoded at once; others wait until their deadline, then get 503.",
)
flags.DEFINE_list(
    "rest_api_allowed_hosts",
    [],
    "Host header names the REST port accepts besides localhost, 127.0.0.1, [::1] and --host "
    "(comma-separated, no port; * accepts any); others are answered 403.",
)


def _check_flags() -> None:
    for name in ("port", "rest_api_port"):
        low = 1 if name == "port" else 0
        if not low <= FLAGS[name].value <= 65535:
            raise app.UsageError(
                f"--{name} must be in [{low}, 65535]. Received: {FLAGS[name].value}"
            )
    for name in (
        "max_support",
        "max_queries",
        "max_tasks",
        "max_message_bytes",
        "grpc_workers",
        "max_concurrent_computations",
        "rest_api_timeout_in_ms",
        "request_timeout_in_ms",
        "max_request_timeout_in_ms",
        "rest_api_num_threads",
        "rest_api_max_connections",
        "rest_api_header_timeout_in_ms",
        "rest_api_body_timeout_in_ms",
        "rest_api_max_concurrent_decodes",
    ):
        if FLAGS[name].value < 1:
            raise app.UsageError(f"--{name} must be >= 1. Received: {FLAGS[name].value}")
    for name in (
        "adaptation_cache_bytes",
        "max_queued_computations",
        "max_request_gflop",
        "max_request_memory_mb",
        "max_inner_steps",
        "tensorflow_intra_op_parallelism",
        "tensorflow_inter_op_parallelism",
    ):
        if FLAGS[name].value < 0:
            raise app.UsageError(f"--{name} must be >= 0. Received: {FLAGS[name].value}")
    computations = FLAGS.max_concurrent_computations + FLAGS.max_queued_computations
    if FLAGS.grpc_workers <= computations:
        raise app.UsageError(
            "--grpc_workers must exceed --max_concurrent_computations + --max_queued_computations, "
            "so that status and metadata requests always find a thread. Received: "
            f"grpc_workers={FLAGS.grpc_workers}, "
            f"max_concurrent_computations={FLAGS.max_concurrent_computations}, "
            f"max_queued_computations={FLAGS.max_queued_computations}"
        )
    if FLAGS.rest_api_max_connections < FLAGS.rest_api_num_threads:
        raise app.UsageError(
            "--rest_api_max_connections must be >= --rest_api_num_threads. Received: "
            f"rest_api_max_connections={FLAGS.rest_api_max_connections}, "
            f"rest_api_num_threads={FLAGS.rest_api_num_threads}"
        )
    if FLAGS.batching_parameters_file and not FLAGS.enable_batching:
        raise app.UsageError("--batching_parameters_file needs --enable_batching.")
    if FLAGS["model_name"].present and not (FLAGS.model_base_path or FLAGS.model_config_file):
        raise app.UsageError("--model_name needs --model_base_path (or use --model_config_file).")


def build_manager(
    limits: Limits, metrics: ServingMetrics | None
) -> tuple[ModelManager, ModelServerConfig | None]:
    """The ModelManager the model flags describe (config file, one model, or the zoo), and the
    config file's contents (None without one)."""
    options = dict(
        poll_seconds=FLAGS.file_system_poll_wait_seconds,
        allow_unavailable_labels=FLAGS.allow_version_labels_for_unavailable_models,
        metrics=metrics,
        base_path_roots=tuple(FLAGS.model_base_path_roots),
    )
    if FLAGS.model_config_file:
        config = model_config.read_config_file(FLAGS.model_config_file)
        return ModelManager(model_config.sources_from_config(config), limits, **options), config
    if FLAGS.model_base_path:
        config = model_config.config_from_flags(FLAGS.model_name, FLAGS.model_base_path)
        return ModelManager(model_config.sources_from_config(config), limits, **options), None
    root = os.path.abspath(ZOO_DIR)
    if not os.path.isdir(root):
        raise ValueError(
            f"No model flags and no {ZOO_DIR}/ folder in {os.getcwd()}: pass --model_base_path "
            "(with --model_name) or --model_config_file, or run where saved_models/ is."
        )
    return ModelManager([], limits, zoo_root=root, **options), None


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    _check_flags()
    set_threads(FLAGS.tensorflow_intra_op_parallelism, FLAGS.tensorflow_inter_op_parallelism)
    limits = Limits(
        FLAGS.max_support,
        FLAGS.max_queries,
        FLAGS.max_inner_steps,
        FLAGS.max_message_bytes,
        FLAGS.max_tasks,
    )
    try:
        monitoring = Monitoring.read(FLAGS.monitoring_config_file)
        credentials = (
            tls.server_credentials(FLAGS.ssl_config_file) if FLAGS.ssl_config_file else None
        )
    except ValueError as e:
        sys.exit(f"serving.server: {e}")
    if monitoring.prometheus and not FLAGS.rest_api_port:
        raise app.UsageError("Prometheus metrics (--monitoring_config_file) need --rest_api_port.")
    metrics = ServingMetrics() if monitoring.prometheus else None
    admission = Admission(
        FLAGS.max_concurrent_computations,
        FLAGS.max_queued_computations,
        on_wait=metrics.computation_wait if metrics is not None else None,
    )
    try:
        batcher = None
        if FLAGS.enable_batching:
            params = (
                BatchingParameters.read(FLAGS.batching_parameters_file)
                if FLAGS.batching_parameters_file
                else BatchingParameters()
            )
            batcher = TaskBatcher(params, admission, metrics)
            logging.info("Task batching on: %s", params)
        manager, config = build_manager(limits, metrics)
        manager.start()
        if config is not None and FLAGS.model_config_file_poll_wait_seconds > 0:
            manager.watch_config_file(
                FLAGS.model_config_file, FLAGS.model_config_file_poll_wait_seconds, config
            )
    except (ValueError, ServingError) as e:
        sys.exit(f"serving.server: {getattr(e, 'message', e)}")
    timeouts = Timeouts(
        FLAGS.request_timeout_in_ms, FLAGS.max_request_timeout_in_ms, FLAGS.rest_api_timeout_in_ms
    )
    service = Service(
        manager,
        limits,
        batcher,
        timeouts=timeouts,
        admission=admission,
        metrics=metrics,
        cost_limits=CostLimits(FLAGS.max_request_gflop, FLAGS.max_request_memory_mb),
        allow_reload=FLAGS.allow_reload_config_rpc,
        cache=AdaptationCache(FLAGS.adaptation_cache_bytes),
    )
    try:
        grpc_server, port, health = grpc_service.build_server(
            service,
            FLAGS.host,
            FLAGS.port,
            FLAGS.grpc_workers,
            FLAGS.max_message_bytes,
            credentials,
        )
        rest_server = None
        if FLAGS.rest_api_port:
            metrics_path = monitoring.path if monitoring.prometheus else None
            rest_limits = RestLimits(
                threads=FLAGS.rest_api_num_threads,
                max_connections=FLAGS.rest_api_max_connections,
                header_timeout_ms=FLAGS.rest_api_header_timeout_in_ms,
                body_timeout_ms=FLAGS.rest_api_body_timeout_in_ms,
                max_concurrent_decodes=FLAGS.rest_api_max_concurrent_decodes,
                allowed_hosts=tuple(FLAGS.rest_api_allowed_hosts),
            )
            rest_server = rest.build_server(
                service, FLAGS.host, FLAGS.rest_api_port, FLAGS.demo, metrics_path, rest_limits
            )
    except OSError as e:
        manager.stop()
        sys.exit(f"serving.server: {e}")
    logging.info("Serving models %s", manager.model_names())
    logging.info(
        "Running gRPC ModelServer at %s:%d%s ...",
        FLAGS.host,
        port,
        " (TLS)" if credentials is not None else "",
    )
    if rest_server is not None:
        logging.info("Exporting HTTP/REST API at:%s:%d ...", FLAGS.host, FLAGS.rest_api_port)
        if FLAGS.demo:
            logging.info("Demo page at http://%s:%d/demo/", FLAGS.host, FLAGS.rest_api_port)
        if monitoring.prometheus:
            logging.info("Prometheus metrics at %s", monitoring.path)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    _shutdown(grpc_server, rest_server, health, service, FLAGS.shutdown_grace_seconds)


def _shutdown(grpc_server, rest_server, health, service: Service, grace: float) -> None:
    """Refuses new requests, gives those in flight `grace` seconds, then unloads the models.

    REST connections stop being read at once (a body still arriving is cut off); after `grace`
    the connections left are shut, and their daemon threads do not hold the process.
    """
    logging.info("Shutting down: finishing requests in flight (up to %.0f s)", grace)
    health.enter_graceful_shutdown()
    grpc_done = grpc_server.stop(grace)
    closer = None
    if rest_server is not None:
        rest_server.shutdown()
        closer = threading.Thread(target=rest_server.close, args=(grace,), daemon=True)
        closer.start()
    grpc_done.wait(grace + 1)
    if closer is not None:
        closer.join(grace + 1)
    if service.batcher is not None:
        service.batcher.stop()
    service.manager.stop()
    logging.info("Server stopped")


if __name__ == "__main__":
    app.run(main)
