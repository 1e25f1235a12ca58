import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.config_protos import Monitoring
from serving.metrics import REQUEST_COUNT, ServingMetrics


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
