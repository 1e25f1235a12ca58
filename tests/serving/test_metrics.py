import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keras_reptile.export import signatures as sig
from serving.admission import Admission
from serving.batching import BatchingParameters, TaskBatcher
from serving.config_protos import Monitoring
from serving.metrics import CONTENT_TYPE, DEFAULT_PATH, REQUEST_COUNT, ServingMetrics
from serving.service import Service
from serving.validation import Limits
from tests.serving import in_process
from tests.serving.helpers import STEPS, columnar, export, http, install, predict_request, task


def families(metrics: ServingMetrics) -> dict:
    text = metrics.exposition().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def test_counters_and_histograms_use_tensorflow_servings_names_labels_and_units():
    metrics = ServingMetrics()
    metrics.record_request("omniglot_5w", "Predict", "GRPC", "OK", 0.08)
    metrics.record_request("omniglot_5w", "Predict", "REST", "INVALID_ARGUMENT", 0.001)
    metrics.record_runtime("omniglot_5w", "Predict", 0.07, tasks=2, steps=50)
    metrics.record_load("saved_models/omniglot_5w/4", ok=True, seconds=1.5)
    parsed, text = families(metrics)
    # TF Serving's counters carry no _total suffix and no _created series.
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert '\n:tensorflow:serving:request_count{model_name="omniglot_5w",status="OK"} 1.0' in text
    assert "_created" not in text and "request_count_total" not in text
    latency = {
        (s.name, s.labels.get("le")): s.value
        for s in parsed[":tensorflow:serving:request_latency"].samples
        if s.labels["entrypoint"] == "GRPC"
    }
    assert latency[":tensorflow:serving:request_latency_sum", None] == pytest.approx(80000.0)
    assert latency[":tensorflow:serving:request_latency_bucket", "+Inf"] == 1
    assert latency[":tensorflow:serving:request_latency_bucket", "10"] == 0  # microseconds
    assert ':keras_reptile:serving:inner_steps{model_name="omniglot_5w"} 100.0' in text
    assert ':keras_reptile:serving:tasks_adapted{model_name="omniglot_5w"} 2.0' in text
    assert (
        ':tensorflow:cc:saved_model:load_latency{model_path="saved_models/omniglot_5w/4"}' in text
    )


def test_wrong_label_count_is_refused():
    with pytest.raises(ValueError, match="takes the labels"):
        ServingMetrics().increment(REQUEST_COUNT, "only_a_model_name")


def test_monitoring_config_is_tensorflow_servings_text_proto(tmp_path):
    path = tmp_path / "monitoring.config"
    path.write_text('prometheus_config {\n  enable: true,\n  path: "/metrics"\n}\n')
    assert Monitoring.read(str(path)) == Monitoring(prometheus=True, path="/metrics")
    path.write_text("prometheus_config { enable: true }")
    assert Monitoring.read(str(path)).path == "/monitoring/prometheus/metrics"
    assert Monitoring.read(None) == Monitoring()
    path.write_text("prometheus_config { enabel: true }")
    with pytest.raises(ValueError, match='no field named "enabel"'):
        Monitoring.read(str(path))
    path.write_text('prometheus_config { enable: true, path: "metrics" }')
    with pytest.raises(ValueError, match="must start with '/'"):
        Monitoring.read(str(path))
    with pytest.raises(ValueError, match="Cannot read"):
        Monitoring.read(str(tmp_path / "missing"))


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    """A manager recording its loads in a ServingMetrics."""
    base = tmp_path_factory.mktemp("models") / "omni"
    install(export("omni", 1), base, 1)
    metrics = ServingMetrics()
    manager = in_process.manager("omni", base, Limits(), metrics=metrics)
    yield manager, metrics, str(base / "1")
    manager.stop()


@pytest.mark.slow
def test_the_rest_port_serves_the_metrics_of_requests_loads_and_batches(monitored):
    manager, metrics, version_path = monitored
    admission = Admission(2, 4, on_wait=metrics.computation_wait)
    batcher = TaskBatcher(BatchingParameters(), admission, metrics)
    service = Service(manager, Limits(), batcher, admission=admission, metrics=metrics)
    try:
        with in_process.serve(service, metrics_path=DEFAULT_PATH) as running:
            request = predict_request("omni", sig.ADAPT_AND_PREDICT, task())
            running.api.prediction.Predict(request, timeout=30)
            bad = predict_request(
                "omni", sig.ADAPT_AND_PREDICT, dict(task(), inner_steps=np.int32(-1))
            )
            with pytest.raises(grpc.RpcError):
                running.api.prediction.Predict(bad, timeout=30)
            url = f"{running.rest_url}/v1/models/omni:predict"
            images = {sig.IMAGES: task()[sig.QUERY_IMAGES]}
            assert http("POST", url, columnar(sig.SERVING_DEFAULT, images))[0] == 200
            with urllib.request.urlopen(running.rest_url + DEFAULT_PATH, timeout=10) as answer:
                content_type, text = answer.headers["Content-Type"], answer.read().decode()
    finally:
        batcher.stop()
    assert content_type == CONTENT_TYPE
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(name, **labels):
        # The parser adds _total to counters; the text has TF Serving's own names (above).
        found = [
            s.value for s in samples if s.name.removesuffix("_total") == name and s.labels == labels
        ]
        assert len(found) == 1, (name, labels)
        return found[0]

    assert '\n:tensorflow:serving:request_count{model_name="omni",status="OK"} 2.0' in text
    serving = ":tensorflow:serving:"
    assert value(REQUEST_COUNT.name, model_name="omni", status="OK") == 2  # gRPC and REST
    assert value(REQUEST_COUNT.name, model_name="omni", status="INVALID_ARGUMENT") == 1
    for entrypoint, requests in (("GRPC", 2), ("REST", 1)):
        latency = serving + "request_latency_count"
        assert value(latency, model_name="omni", API="Predict", entrypoint=entrypoint) == requests
    load = ":tensorflow:cc:saved_model:load_attempt_count"
    assert value(load, model_path=version_path, status="success") == 1
    assert value(serving + "model_warmup_latency_count", model_path=version_path) == 1
    assert (
        value(serving + "runtime_latency_count", model_name="omni", API="Predict", runtime="TF1")
        == 2
    )
    assert value(":keras_reptile:serving:tasks_adapted", model_name="omni") == 1
    assert value(":keras_reptile:serving:inner_steps", model_name="omni") == STEPS
    batching = serving + "batching_session:"
    size = batching + "processed_batch_size_count"
    assert value(size, model_name="omni", thread_pool_name="task_batching") == 1
    for pool in ("task_batching", "computations"):
        assert value(batching + "queuing_latency_count", thread_pool_name=pool) >= 1
