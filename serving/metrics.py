"""Prometheus metrics under TensorFlow Serving's names, labels and units, plus the project's own.

TensorFlow Serving exports its monitoring counters and samplers as `:tensorflow:serving:...`
families: counters without prometheus_client's `_total` suffix, histograms in microseconds with
buckets 10 x 1.8^i (33 of them), and no `_created` series. `prometheus_client` writes the text
exposition; the values are kept here so that each family comes out under exactly those names.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

DEFAULT_PATH = "/monitoring/prometheus/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# TensorFlow Serving's latency buckets, in microseconds: Buckets::Exponential(10, 1.8, 33).
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))
# Sizes: tasks per batch, powers of two up to 1024.
SIZE_BUCKETS = tuple(float(2**i) for i in range(11))


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    doc: str
    labels: tuple[str, ...]
    kind: str  # "counter" or "histogram"
    buckets: tuple[float, ...] = ()


REQUEST_COUNT = Family(
    ":tensorflow:serving:request_count",
    "The total number of requests.",
    ("model_name", "status"),
    "counter",
)
REQUEST_LATENCY = Family(
    ":tensorflow:serving:request_latency",
    "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
    ("model_name", "API", "entrypoint"),
    "histogram",
    LATENCY_BUCKETS_US,
)
RUNTIME_LATENCY = Family(
    ":tensorflow:serving:runtime_latency",
    "Distribution of wall time (in microseconds) for Tensorflow runtime.",
    ("model_name", "API", "runtime"),
    "histogram",
    LATENCY_BUCKETS_US,
)
LOAD_ATTEMPT_COUNT = Family(
    ":tensorflow:cc:saved_model:load_attempt_count",
    "The number of times a SavedModel was successfully loaded.",
    ("model_path", "status"),
    "counter",
)
LOAD_LATENCY = Family(
    ":tensorflow:cc:saved_model:load_latency",
    "Latency in microseconds for SavedModels that were successfully loaded.",
    ("model_path",),
    "counter",
)
WARMUP_LATENCY = Family(
    ":tensorflow:serving:model_warmup_latency",
    "Distribution of wall time (in microseconds) for warming up the model.",
    ("model_path",),
    "histogram",
    LATENCY_BUCKETS_US,
)
QUEUING_LATENCY = Family(
    ":tensorflow:serving:batching_session:queuing_latency",
    "Distribution of wall time spent (in microseconds) in queuing",
    ("thread_pool_name",),
    "histogram",
    LATENCY_BUCKETS_US,
)
PROCESSED_BATCH_SIZE = Family(
    ":tensorflow:serving:batching_session:processed_batch_size",
    "Tracks the batch size distribution on processing by model_name (if available).",
    ("model_name", "thread_pool_name"),
    "histogram",
    SIZE_BUCKETS,
)
TASKS_ADAPTED = Family(
    ":keras_reptile:serving:tasks_adapted",
    "Tasks fine-tuned on a support set.",
    ("model_name",),
    "counter",
)
INNER_STEPS = Family(
    ":keras_reptile:serving:inner_steps",
    "Inner-loop steps run, summed over the adapted tasks.",
    ("model_name",),
    "counter",
)
ADAPTATION_CACHE = Family(
    ":keras_reptile:serving:adaptation_cache",
    "Adapted-weight cache lookups by result (hit: the adaptation was reused; miss: it ran).",
    ("model_name", "result"),
    "counter",
)
ADAPTATION_CACHE_EVICTIONS = Family(
    ":keras_reptile:serving:adaptation_cache_evictions",
    "Adapted weights evicted to stay within --adaptation_cache_bytes.",
    (),
    "counter",
)
ADAPTATION_CACHE_BYTES = Family(
    ":keras_reptile:serving:adaptation_cache_bytes",
    "Bytes of adapted weights held by the cache.",
    (),
    "gauge",
)
FAMILIES = (
    REQUEST_COUNT,
    REQUEST_LATENCY,
    RUNTIME_LATENCY,
    LOAD_ATTEMPT_COUNT,
    LOAD_LATENCY,
    WARMUP_LATENCY,
    QUEUING_LATENCY,
    PROCESSED_BATCH_SIZE,
    TASKS_ADAPTED,
    INNER_STEPS,
    ADAPTATION_CACHE,
    ADAPTATION_CACHE_EVICTIONS,
    ADAPTATION_CACHE_BYTES,
)


class _Histogram:
    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last is +Inf
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        total, out = 0, []
        for bound, count in zip((*self.buckets, float("inf")), self.counts):
            total += count
            out.append(("+Inf" if bound == float("inf") else f"{bound:.10g}", total))
        return out


class ServingMetrics:
    """The server's metrics: thread-safe recording, and the Prometheus text exposition."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict[Family, dict[tuple[str, ...], object]] = {f: {} for f in FAMILIES}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def _check(self, family: Family, labels: tuple) -> tuple[str, ...]:
        if len(labels) != len(family.labels):
            raise ValueError(
                f"{family.name} takes the labels {family.labels}. Received: labels={labels}"
            )
        return tuple(str(v) for v in labels)

    def increment(self, family: Family, *labels, by: float = 1) -> None:
        """Adds `by` to a counter."""
        key = self._check(family, labels)
        with self._lock:
            cells = self._values[family]
            cells[key] = cells.get(key, 0) + by

    def set(self, family: Family, value: float, *labels) -> None:
        """Sets a gauge."""
        key = self._check(family, labels)
        with self._lock:
            self._values[family][key] = value

    def record_cache(self, model_name: str, hit: bool, stats) -> None:
        """One adapted-weight cache lookup, and the cache's evictions and bytes after it."""
        self.increment(ADAPTATION_CACHE, model_name, "hit" if hit else "miss")
        with self._lock:
            self._values[ADAPTATION_CACHE_EVICTIONS][()] = stats.evictions
            self._values[ADAPTATION_CACHE_BYTES][()] = stats.bytes

    def observe(self, family: Family, value: float, *labels) -> None:
        """Adds a sample to a histogram."""
        key = self._check(family, labels)
        with self._lock:
            cells = self._values[family]
            if key not in cells:
                cells[key] = _Histogram(family.buckets)
            cells[key].add(float(value))

    def record_request(
        self, model_name: str, api: str, entrypoint: str, status: str, seconds: float
    ) -> None:
        """One answered request: its status (a TF Serving code name such as "OK") and wall time."""
        self.increment(REQUEST_COUNT, model_name, status)
        self.observe(REQUEST_LATENCY, seconds * 1e6, model_name, api, entrypoint)

    def record_runtime(self, model_name: str, api: str, seconds: float, tasks: int, steps: int):
        """One signature run: its wall time, the tasks it adapted and their inner steps."""
        self.observe(RUNTIME_LATENCY, seconds * 1e6, model_name, api, "TF1")
        if tasks:
            self.increment(TASKS_ADAPTED, model_name, by=tasks)
            self.increment(INNER_STEPS, model_name, by=tasks * steps)

    def computation_wait(self, seconds: float) -> None:
        """A computation's wait for its slot (admission control), as a queuing latency."""
        self.observe(QUEUING_LATENCY, seconds * 1e6, "computations")

    def record_load(self, model_path: str, ok: bool, seconds: float) -> None:
        """One attempt to load a SavedModel version."""
        self.increment(LOAD_ATTEMPT_COUNT, model_path, "success" if ok else "fail")
        if ok:
            self.increment(LOAD_LATENCY, model_path, by=int(seconds * 1e6))

    def collect(self):
        """prometheus_client's collector protocol: one family per metric, as TF Serving names."""
        with self._lock:
            snapshot = {
                f: {
                    k: (v.cumulative(), v.sum) if isinstance(v, _Histogram) else v
                    for k, v in cells.items()
                }
                for f, cells in self._values.items()
            }
        for family, cells in snapshot.items():
            if family.kind == "gauge":
                gauge = GaugeMetricFamily(family.name, family.doc, labels=family.labels)
                for key, value in sorted(cells.items()):
                    gauge.add_metric(key, value)
                yield gauge
            elif family.kind == "counter":
                metric = CounterMetricFamily(family.name, family.doc, labels=family.labels)
                for key, value in sorted(cells.items()):
                    metric.add_metric(key, value)
                yield _without_total(metric)
            else:
                metric = HistogramMetricFamily(family.name, family.doc, labels=family.labels)
                for key, (buckets, total) in sorted(cells.items()):
                    metric.add_metric(key, buckets, total)
                yield metric

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        text = generate_latest(self._registry).decode()
        # prometheus_client names a counter family `<name>_total` in its HELP and TYPE lines;
        # TensorFlow Serving's families keep their own names there as in their samples.
        for family in FAMILIES:
            if family.kind == "counter":
                for line in ("# HELP", "# TYPE"):
                    text = text.replace(f"{line} {family.name}_total ", f"{line} {family.name} ")
        return text.encode()


def _without_total(metric: CounterMetricFamily) -> Metric:
    """A counter family whose samples keep the family's own name, as TF Serving writes them."""
    out = Metric(metric.name, metric.documentation, "counter")
    for sample in metric.samples:
        out.add_sample(metric.name, sample.labels, sample.value)
    return out
