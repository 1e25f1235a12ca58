"""adapt_and_predict under load: latency (p50, p99) and throughput, task batching off and on.

    python benchmarks/serving_load.py                        # a fresh untrained omniglot_5w model
    python benchmarks/serving_load.py --export_dir=saved_models/omniglot_5w \
        --data_dir=../shared/data/omniglot

Starts the real server (`python -m serving.server`) on free loopback ports, once without and once
with `--enable_batching`, and for 5-way 1-shot and 5-way 5-shot tasks (one query per class, 50
inner steps, the default non-transductive answer) measures one client alone, then `--clients`
clients, each with its own task, sending requests at once. For reference, in the same run: the
FLOP floor of one 5-way 5-shot request (its forward and backward work over the measured peak
matmul rate of the machine) and, with `--data_dir`, a training meta-iteration's time
(`benchmarks/meta_step.py`, the same 3.99 GFLOP of inner steps). With `--in_process`, the same
clients also call the signature in a process of their own, as the server runs a decoded request
(`in_process_*`): the difference is what the server adds. Two in-process probes bound what the
server could change: the clients' tasks as one multi-task call (`in_process_stacking_speedup_5w5s`:
the most task batching can gain on this machine) and the same requests with half the inner steps
of twice the batch (`in_process_half_steps_speedup_5w5s`: what the protocol's step count costs
against a training meta-iteration's form). Prints one JSON object as its last line; exits 1 if any
request failed.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from keras_reptile.export import signatures as sig  # noqa: E402
from keras_reptile.export.saved_model import version_dir  # noqa: E402
from keras_reptile.training.strategy import set_threads  # noqa: E402
from serving.errors import ServingError  # noqa: E402
from serving.launcher import ServerProcess  # noqa: E402
from serving.servable import Servable  # noqa: E402
from serving.validation import Limits  # noqa: E402

PRESET = "omniglot_5w5s"
TASK_INPUTS = (sig.SUPPORT_IMAGES, sig.SUPPORT_LABELS, sig.QUERY_IMAGES)


def export_untrained(base_dir: str) -> str:
    """An untrained omniglot_5w-shaped export (the 5-shot preset's evaluation settings)."""
    from keras_reptile.algorithms import InnerOptimizer
    from keras_reptile.export.model_card import ModelCard
    from keras_reptile.export.saved_model import ServingModule, export_saved_model
    from keras_reptile.presets import get_preset
    from keras_reptile.run import build_stacked_model

    preset = get_preset(PRESET)
    model = build_stacked_model(preset.recipe, (28, 28, 1))
    weights = [w.numpy() for w in model.initial_weights()]
    zeros = [np.zeros_like(w) for w in weights]
    module = ServingModule(
        model, weights, InnerOptimizer("adam"), 0.0, zeros, protocol=preset.protocol, ways=5
    )
    card = ModelCard(preset.model_name, preset.recipe, preset.protocol, (28, 28, 1), 0)
    return os.path.dirname(export_saved_model(module, os.path.join(base_dir, PRESET), card))


def make_request(
    model: str,
    ways: int,
    shots: int,
    steps: int,
    seed: int,
    batch: int = 0,
    queries: int = 0,
    query_seed: int | None = None,
):
    """An adapt_and_predict request of one random task; `batch` > 0 sets its inner batch size.

    The support set comes from `seed`; `queries` (default: one per class) random query images
    from `query_seed` (default: `seed`), so requests of one support set can ask new queries.
    """
    rng = np.random.default_rng(seed)
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, sig.ADAPT_AND_PREDICT
    support = (rng.random((ways * shots, 28, 28, 1)) > 0.5).astype(np.float32)
    query_rng = rng if query_seed is None else np.random.default_rng([seed, query_seed])
    arrays = {
        sig.SUPPORT_IMAGES: support,
        sig.SUPPORT_LABELS: np.repeat(np.arange(ways, dtype=np.int32), shots),
        sig.QUERY_IMAGES: (query_rng.random((queries or ways, 28, 28, 1)) > 0.5).astype(np.float32),
        sig.INNER_STEPS: np.int32(steps),
    }
    if batch:
        arrays[sig.INNER_BATCH_SIZE] = np.int32(batch)
    for key, value in arrays.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def grpc_sender(target: str, timeout: float):
    """Per client: its own channel to the server; sending raises grpc.RpcError on failure."""

    @contextlib.contextmanager
    def connect():
        with grpc.insecure_channel(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            yield lambda request: stub.Predict(request, timeout=timeout)

    return connect


def in_process_sender(servable):
    """Per client: the request run by `Servable.run` in this process, as the server runs it
    once a request is decoded and validated (no gRPC, no queue)."""

    limits = Limits()

    def send(request):
        name = request.model_spec.signature_name
        arrays = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        servable.run(name, servable.prepare(name, arrays, limits))

    return lambda: contextlib.nullcontext(send)


def run_clients(connect, requests, clients: int, per_client: int) -> dict:
    """`clients` threads, each connected with `connect()` and sending its own task
    (`requests[i]`) `per_client` times in a row; a list `requests[i]` is sent in turn, its
    first request once more before timing starts (to connect and warm up, or to enroll)."""
    latencies, errors, lock = [], [], threading.Lock()
    barrier = threading.Barrier(clients)

    def client(own):
        own = own if isinstance(own, list) else [own]
        with connect() as send:
            send(own[0])  # not timed
            barrier.wait()
            for i in range(per_client):
                start = time.perf_counter()
                try:
                    send(own[i % len(own)])
                    with lock:
                        latencies.append(time.perf_counter() - start)
                except grpc.RpcError as e:
                    with lock:
                        errors.append(f"{e.code().name}: {e.details()}")
                except ServingError as e:
                    with lock:
                        errors.append(f"{e.code.name}: {e.message}")

    threads = [threading.Thread(target=client, args=(requests[i],)) for i in range(clients)]
    for t in threads:
        t.start()
    start_all = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start_all
    ms = sorted(1000 * x for x in latencies)
    return {
        "clients": clients,
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": round(statistics.median(ms), 1) if ms else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if ms else None,
        "throughput_rps": round(len(latencies) / wall, 2),
    }


def request_floor_ms(inner_steps: int, shots: int, peak_gflops: float) -> tuple[float, float]:
    """(GFLOP, ms at the peak rate) of one 5-way request: the inner steps' forward and backward
    passes on batches of the preset's 5, and one forward pass per query on support + query."""
    from keras_reptile.models import build_model
    from keras_reptile.models.cost import ModelCost

    cost = ModelCost.of(build_model("omniglot_cnn", 5, (28, 28, 1)))
    gflop = (cost.training_flops(inner_steps * 5) + cost.forward_flops * 5 * (5 * shots + 1)) / 1e9
    return gflop, 1000 * gflop / peak_gflops


def request_kernels_ms() -> float:
    """The convolution kernels on the dependency chain of a 5-way 5-shot request's inner steps
    (`meta_step.conv_critical_path_ms`), with the server's threads per kernel, in a subprocess:
    no adaptation on these kernels can answer faster."""
    result = subprocess.run(
        [sys.executable, *sys.argv, "--kernels_only"], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_cases(label: str, connect, model: str, args, results: dict) -> None:
    """5-way 1-shot and 5-shot, one client alone then `args.clients` at once, each sending
    through `connect`; adds `{label}_5w{shots}s_{clients}_clients` to `results`."""
    for shots in (1, 5):
        requests = [
            make_request(model, 5, shots, args.inner_steps, seed=10 * shots + i)
            for i in range(args.clients)
        ]
        for clients in (1, args.clients):
            per_client = args.requests if clients > 1 else 2 * args.requests
            r = run_clients(connect, requests, clients, per_client)
            results[f"{label}_5w{shots}s_{clients}_clients"] = r
            print(
                f"{label}, 5-way {shots}-shot, {clients} client(s): p50 {r['p50_ms']} ms, p99 "
                f"{r['p99_ms']} ms, {r['throughput_rps']} requests/s, {r['errors']} errors of "
                f"{r['requests']}",
                flush=True,
            )


def measure_enrolled(label: str, connect, model: str, args, results: dict) -> None:
    """The enrolled case: `args.clients` clients, each with its own fixed 5-way 5-shot support
    set, every request one new query image (`{label}_enrolled_5w5s_{n}_clients`); and one client
    alone repeating one request with a query per class (`{label}_repeated_5w5s_1_clients`).
    Against a server with the adaptation cache these reuse their adaptation; without, they
    adapt every time."""
    n, per_client = args.clients, args.enrolled_requests
    streams = [
        [
            make_request(model, 5, 5, args.inner_steps, seed=70 + i, queries=1, query_seed=q)
            for q in range(per_client)
        ]
        for i in range(n)
    ]
    r = results[f"{label}_enrolled_5w5s_{n}_clients"] = run_clients(connect, streams, n, per_client)
    repeated = [make_request(model, 5, 5, args.inner_steps, seed=90)]
    lone = results[f"{label}_repeated_5w5s_1_clients"] = run_clients(
        connect, repeated, 1, 2 * args.requests
    )
    print(
        f"{label}, {n} enrolled 5-way 5-shot clients, one new query a request: p50 "
        f"{r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['throughput_rps']} requests/s, "
        f"{r['errors']} errors of {r['requests']}; one client repeating a request: p50 "
        f"{lone['p50_ms']} ms",
        flush=True,
    )


def stacking_probes(servable, model: str, args, results: dict) -> None:
    """What task batching and the request's step count can change, in-process (no server).

    `in_process_5w5s_{n}_tasks_one_call`: the `--clients` clients' 5-way 5-shot tasks as one
    adapt_and_predict_tasks call, as the server's batching runs them; its tasks/s over the
    `{n}`-client requests/s is the most batching can gain here. `..._half_steps`: the clients'
    requests with half the inner steps of twice the batch (a training meta-iteration's form: the
    same images through the network in fewer, larger steps).
    """
    n, limits = args.clients, Limits()
    requests = [make_request(model, 5, 5, args.inner_steps, seed=50 + i) for i in range(n)]
    each = [{k: tf.make_ndarray(v) for k, v in r.inputs.items()} for r in requests]
    stacked = {k: np.stack([a[k] for a in each]) for k in TASK_INPUTS}
    stacked[sig.INNER_STEPS] = np.int32(args.inner_steps)
    prepared = servable.prepare(sig.ADAPT_AND_PREDICT_TASKS, stacked, limits)
    servable.run(sig.ADAPT_AND_PREDICT_TASKS, prepared)  # warm up, not timed
    ms = []
    for _ in range(args.requests):
        start = time.perf_counter()
        servable.run(sig.ADAPT_AND_PREDICT_TASKS, prepared)
        ms.append(1000 * (time.perf_counter() - start))
    one_call = results[f"in_process_5w5s_{n}_tasks_one_call"] = {
        "tasks": n,
        "calls": len(ms),
        "errors": 0,  # a failed call raises
        "p50_ms": round(statistics.median(ms), 1),
        "tasks_per_s": round(1000 * n * len(ms) / sum(ms), 2),
    }
    batch = 2 * int(servable.defaults[sig.ADAPT_AND_PREDICT][sig.INNER_BATCH_SIZE])
    half = [
        make_request(model, 5, 5, args.inner_steps // 2, seed=50 + i, batch=batch) for i in range(n)
    ]
    r = run_clients(in_process_sender(servable), half, n, args.requests)
    results[f"in_process_5w5s_{n}_clients_half_steps"] = r
    print(
        f"in_process, 5-way 5-shot, {n} tasks in one call: {one_call['tasks_per_s']} tasks/s; "
        f"{n} clients with {args.inner_steps // 2} steps of batch {batch}: {r['throughput_rps']} "
        "requests/s",
        flush=True,
    )


def in_process_results(base: str, model: str, args) -> dict:
    """The `in_process_*` cases, in a subprocess (TensorFlow's threads are set before it runs)."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--in_process_only",
        f"--export_dir={base}",
        f"--model={model}",
        f"--clients={args.clients}",
        f"--requests={args.requests}",
        f"--inner_steps={args.inner_steps}",
        f"--intra_op_threads={args.intra_op_threads}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    lines = result.stdout.strip().splitlines()
    print("\n".join(lines[:-1]), flush=True)
    return json.loads(lines[-1])


def training_ms(data_dir: str) -> float:
    """A warm omniglot_5w5s meta-iteration of the trainer (benchmarks/meta_step.py)."""
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(HERE, "meta_step.py"),
            "--preset=omniglot_5w5s",
            f"--data_dir={data_dir}",
            "--iterations=50",
            "--reference_iterations=1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["ms_per_meta_iteration"]


def cache_bytes_per_task(rest_url: str) -> int:
    """The server's adapted-weight cache bytes over its entries (its misses: nothing is evicted
    in this benchmark), read from its Prometheus metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{rest_url}/metrics", timeout=30) as response:
        text = response.read().decode()
    size = misses = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == ":keras_reptile:serving:adaptation_cache_bytes":
                size += sample.value
            elif sample.name.endswith("adaptation_cache_total") and (
                sample.labels.get("result") == "miss"
            ):
                misses += sample.value
    return round(size / misses) if misses else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export_dir", help="a model's base folder (integer version folders)")
    parser.add_argument("--data_dir", default=os.environ.get("KERAS_REPTILE_DATA_DIR"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--inner_steps", type=int, default=50)
    parser.add_argument(
        "--enrolled_requests", type=int, default=24, help="requests per enrolled client"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline of each request")
    parser.add_argument(
        "--intra_op_threads", type=int, default=1, help="the server's threads per kernel"
    )
    parser.add_argument(
        "--batching_parameters_file", help="for the batched run (default: the server's defaults)"
    )
    parser.add_argument("--batching", choices=("both", "off", "on"), default="both")
    parser.add_argument(
        "--in_process",
        action="store_true",
        help="also call the signature in a process of its own, with the server's threads but "
        "without the server (gRPC, queues, batching)",
    )
    parser.add_argument("--kernels_only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--in_process_only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    from meta_step import conv_critical_path_ms, machine_peak_gflops

    from keras_reptile.models import build_model

    if args.in_process_only:
        set_threads(args.intra_op_threads, 0)
        path = version_dir(args.export_dir)
        servable = Servable.load(args.model, int(os.path.basename(path)), path)
        results = {}
        measure_cases("in_process", in_process_sender(servable), args.model, args, results)
        stacking_probes(servable, args.model, args, results)
        print(json.dumps(results))
        return
    if args.kernels_only:
        set_threads(args.intra_op_threads, 1)
        model = build_model("omniglot_cnn", 5, (28, 28, 1))
        print(json.dumps(conv_critical_path_ms(model, 5, args.inner_steps)))
        return
    peak = machine_peak_gflops()
    gflop, floor = request_floor_ms(args.inner_steps, 5, peak)
    kernels = request_kernels_ms()
    results = {
        "cpu_count": os.cpu_count(),
        "inner_steps": args.inner_steps,
        "intra_op_threads": args.intra_op_threads,
        "peak_matmul_gflops": round(peak, 1),
        "gflop_per_5w5s_request": round(gflop, 2),
        "flop_floor_5w5s_ms": round(floor, 1),
        "conv_critical_path_5w5s_ms": round(kernels, 1),
        "conv_critical_path_over_floor": round(kernels / floor, 2),
    }
    with tempfile.TemporaryDirectory() as scratch:
        base = os.path.abspath(args.export_dir) if args.export_dir else export_untrained(scratch)
        model = os.path.basename(base.rstrip("/"))
        results["model"] = model
        flags = [
            f"--model_name={model}",
            f"--model_base_path={base}",
            f"--tensorflow_intra_op_parallelism={args.intra_op_threads}",
        ]
        monitoring = os.path.join(scratch, "monitoring.config")
        with open(monitoring, "w") as f:
            f.write('prometheus_config { enable: true, path: "/metrics" }\n')
        modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.batching]
        for batching in modes:
            extra = []
            if batching:
                extra = ["--enable_batching"]
                if args.batching_parameters_file:
                    extra.append(f"--batching_parameters_file={args.batching_parameters_file}")
            label = "batching" if batching else "no_batching"
            with ServerProcess([*flags, *extra, "--adaptation_cache_bytes=0"], rest=False) as s:
                connect = grpc_sender(s.grpc_target, args.timeout)
                measure_cases(label, connect, model, args, results)
                measure_enrolled(label, connect, model, args, results)
            with ServerProcess([*flags, *extra, f"--monitoring_config_file={monitoring}"]) as s:
                measure_enrolled(
                    f"{label}_cached", grpc_sender(s.grpc_target, args.timeout), model, args,
                    results,
                )  # fmt: skip
                results[f"{label}_cached_bytes_per_task"] = cache_bytes_per_task(s.rest_url)
        if args.in_process:
            results.update(in_process_results(base, model, args))
    if args.data_dir:
        results["training_meta_iteration_ms"] = training_ms(args.data_dir)
    n = args.clients
    for label in ("no_batching", "batching", "in_process"):
        many = results.get(f"{label}_5w5s_{n}_clients")
        if many and many["throughput_rps"]:
            results[f"{label}_machine_ms_per_5w5s_request"] = round(
                1000 / many["throughput_rps"], 1
            )
    if "batching_5w5s_1_clients" in results and "no_batching_5w5s_1_clients" in results:
        on, off = results[f"batching_5w5s_{n}_clients"], results[f"no_batching_5w5s_{n}_clients"]
        results["batching_speedup_5w5s"] = round(on["throughput_rps"] / off["throughput_rps"], 2)
    concurrent = results.get(f"in_process_5w5s_{n}_clients")
    if concurrent and concurrent["throughput_rps"]:
        one_call = results[f"in_process_5w5s_{n}_tasks_one_call"]["tasks_per_s"]
        half = results[f"in_process_5w5s_{n}_clients_half_steps"]["throughput_rps"]
        results["in_process_stacking_speedup_5w5s"] = round(
            one_call / concurrent["throughput_rps"], 2
        )
        results["in_process_half_steps_speedup_5w5s"] = round(
            half / concurrent["throughput_rps"], 2
        )
    for label in ("no_batching", "batching"):
        cached = results.get(f"{label}_cached_enrolled_5w5s_{n}_clients")
        if cached:
            adapting = results[f"{label}_enrolled_5w5s_{n}_clients"]
            results[f"{label}_enrolled_speedup_5w5s"] = round(
                cached["throughput_rps"] / adapting["throughput_rps"], 2
            )
            repeated = results[f"{label}_cached_repeated_5w5s_1_clients"]["p50_ms"]
            full = results[f"{label}_repeated_5w5s_1_clients"]["p50_ms"]
            results[f"{label}_cached_repeated_p50_over_full"] = round(repeated / full, 3)
    alone = results.get("no_batching_5w5s_1_clients")
    if alone:
        results["lone_request_p50_over_floor"] = round(alone["p50_ms"] / floor, 2)
    errors = sum(v["errors"] for v in results.values() if isinstance(v, dict))
    results["errors"] = errors
    print(json.dumps(results))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
