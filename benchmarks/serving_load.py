"""adapt_and_predict under load: latency (p50, p99) and throughput of concurrent gRPC clients.

    python benchmarks/serving_load.py                        # a fresh untrained omniglot_5w5s model
    python benchmarks/serving_load.py --export_dir=saved_models/omniglot_5w --clients=8

Starts the real server (`python -m serving.server`) on free loopback ports, then for 5-way 1-shot
and 5-way 5-shot tasks (one query per class, 50 inner steps, the default non-transductive answer)
measures one client alone, then `--clients` clients sending requests at once. Prints one JSON
object as its last line; exits 1 if any request failed.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from keras_reptile.export import signatures as sig  # noqa: E402
from serving.launcher import ServerProcess  # noqa: E402

PRESET = "omniglot_5w5s"


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


def make_request(model: str, ways: int, shots: int, steps: int, seed: int):
    rng = np.random.default_rng(seed)
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, sig.ADAPT_AND_PREDICT
    arrays = {
        sig.SUPPORT_IMAGES: (rng.random((ways * shots, 28, 28, 1)) > 0.5).astype(np.float32),
        sig.SUPPORT_LABELS: np.repeat(np.arange(ways, dtype=np.int32), shots),
        sig.QUERY_IMAGES: (rng.random((ways, 28, 28, 1)) > 0.5).astype(np.float32),
        sig.INNER_STEPS: np.int32(steps),
    }
    for key, value in arrays.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def run_clients(target: str, request, clients: int, per_client: int, timeout: float) -> dict:
    """`clients` threads, each with its own channel, sending `per_client` requests in a row."""
    latencies, errors, lock = [], [], threading.Lock()
    barrier = threading.Barrier(clients)

    def client():
        with grpc.insecure_channel(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(request, timeout=timeout)  # connect and warm up, not timed
            barrier.wait()
            for _ in range(per_client):
                start = time.perf_counter()
                try:
                    stub.Predict(request, timeout=timeout)
                    with lock:
                        latencies.append(time.perf_counter() - start)
                except grpc.RpcError as e:
                    with lock:
                        errors.append(f"{e.code().name}: {e.details()}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export_dir", help="a model's base folder (integer version folders)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--inner_steps", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline of each request")
    parser.add_argument(
        "--intra_op_threads", type=int, default=1, help="the server's threads per kernel"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        base = os.path.abspath(args.export_dir) if args.export_dir else export_untrained(scratch)
        model = os.path.basename(base.rstrip("/"))
        flags = [
            f"--model_name={model}",
            f"--model_base_path={base}",
            f"--tensorflow_intra_op_parallelism={args.intra_op_threads}",
        ]
        results = {
            "model": model,
            "cpu_count": os.cpu_count(),
            "inner_steps": args.inner_steps,
            "intra_op_threads": args.intra_op_threads,
        }
        with ServerProcess(flags, rest=False) as server:
            for shots in (1, 5):
                request = make_request(model, 5, shots, args.inner_steps, seed=shots)
                for clients in (1, args.clients):
                    per_client = args.requests if clients > 1 else 2 * args.requests
                    r = run_clients(server.grpc_target, request, clients, per_client, args.timeout)
                    results[f"5w{shots}s_{clients}_clients"] = r
                    print(
                        f"5-way {shots}-shot, {clients} client(s): p50 {r['p50_ms']} ms, "
                        f"p99 {r['p99_ms']} ms, {r['throughput_rps']} requests/s, "
                        f"{r['errors']} errors of {r['requests']}",
                        flush=True,
                    )
    errors = sum(v["errors"] for v in results.values() if isinstance(v, dict))
    results["errors"] = errors
    print(json.dumps(results))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
