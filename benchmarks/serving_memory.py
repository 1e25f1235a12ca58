"""The server's peak memory and time for the largest REST body its limits accept.

    python benchmarks/serving_memory.py                          # the default limits (64 MiB)
    python benchmarks/serving_memory.py --max_message_bytes=2000000   # a quick check

Starts the real server (`python -m serving.server`, an untrained omniglot_5w-shaped export unless
`--export_dir`) with `--max_message_bytes` and otherwise default flags, then sends one columnar
`adapt_and_predict_tasks` body as large as that limit allows: support and query images of
`--max_support` and `--max_queries` examples per task, as many tasks as fit, written as compactly
as JSON allows (`[0]` per value: the most Python objects per byte that the shape checks let
through), `transductive` and one inner step so the computation stays small. Prints one JSON object:
the body's size and shape, the answer's status (a refusal by the cost limits comes after the body
was decoded, so it is measured all the same), the seconds until the answer, and the server
process's peak resident memory (VmHWM of /proc/<pid>/status) before and after, in MiB.

With `--grpc`, instead: each request of a small table (the non-transductive query pass of wide
tasks, a large inner batch, many tasks in one call), sent over gRPC to a server of its own, with
the cost estimate the server checks against `--max_request_memory_mb` and the growth of the
server's peak resident memory that it caused, so the estimate is measured against the process.
"""

import argparse
import http.client
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_reptile.export import signatures as sig  # noqa: E402
from serving.launcher import ServerProcess  # noqa: E402

SIDE = 28  # omniglot's images: 28 x 28 x 1
FLOAT_BYTES = 4


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise ValueError(f"No VmHWM in /proc/{pid}/status. Received: pid={pid}")


def _list(item: str, count: int) -> str:
    return "[" + ",".join([item] * count) + "]"


def worst_body(max_bytes: int, support: int, queries: int, max_tasks: int) -> tuple[bytes, dict]:
    """The largest `adapt_and_predict_tasks` body (and its shape) under `max_bytes`."""
    image = _list(_list("[0]", SIDE), SIDE)
    per_task = (support + queries) * (len(image) + 1) + 2 * support + 8
    tasks = min(max_tasks, (max_bytes - 1000) // per_task)
    for count in (support, queries):  # each input's decoded size is bounded too
        tasks = min(tasks, max_bytes // (count * SIDE * SIDE * FLOAT_BYTES))
    if tasks < 1:
        raise ValueError(
            f"Not one task of {support} support and {queries} query images fits in "
            f"{max_bytes} bytes. Received: max_bytes={max_bytes}"
        )
    images = {n: _list(_list(image, n), tasks) for n in (support, queries)}
    inputs = (
        f'"{sig.SUPPORT_IMAGES}":{images[support]},'
        f'"{sig.SUPPORT_LABELS}":{_list(_list("0", support), tasks)},'
        f'"{sig.QUERY_IMAGES}":{images[queries]},'
        f'"{sig.INNER_STEPS}":1,"{sig.TRANSDUCTIVE}":true'
    )
    body = f'{{"signature_name":"{sig.ADAPT_AND_PREDICT_TASKS}","inputs":{{{inputs}}}}}'
    return body.encode(), {"tasks": tasks, "support": support, "queries": queries}


# (name, tasks or None for adapt_and_predict, support, queries, inner_steps, inner_batch,
# transductive): requests the default limits accept
GRPC_CASES = (
    ("non_transductive_200x200", None, 200, 200, 0, 5, False),
    ("non_transductive_500x500", None, 500, 500, 0, 5, False),
    ("inner_batch_500", None, 500, 5, 1, 500, True),
    ("64_tasks_5w5s", 64, 25, 5, 5, 5, False),
)


def grpc_case(base: str, case: tuple) -> dict:
    """One request of `GRPC_CASES` on a fresh server: its estimate and measured peak growth."""
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from keras_reptile.models import build_model
    from keras_reptile.models.cost import ModelCost
    from serving.cost import PARALLEL_TASKS, RequestShape, estimate

    name, tasks, support, queries, steps, batch, transductive = case
    lead = () if tasks is None else (tasks,)
    arrays = {
        sig.SUPPORT_IMAGES: np.zeros((*lead, support, SIDE, SIDE, 1), np.float32),
        sig.SUPPORT_LABELS: np.zeros((*lead, support), np.int32),
        sig.QUERY_IMAGES: np.zeros((*lead, queries, SIDE, SIDE, 1), np.float32),
        sig.INNER_STEPS: np.int32(steps),
        sig.INNER_BATCH_SIZE: np.int32(batch),
        sig.TRANSDUCTIVE: np.bool_(transductive),
    }
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.model_spec.signature_name = (
        sig.ADAPT_AND_PREDICT if tasks is None else sig.ADAPT_AND_PREDICT_TASKS
    )
    for key, value in arrays.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    shape = RequestShape(
        tasks or 1, support, queries, steps, batch, transductive, SIDE * SIDE, PARALLEL_TASKS
    )
    cost = estimate(ModelCost.of(build_model("omniglot_cnn", 5, (SIDE, SIDE, 1))), shape)
    flags = ["--model_name=m", f"--model_base_path={os.path.abspath(base)}", "--max_tasks=64"]
    with ServerProcess(flags, rest=False) as server:
        before = peak_rss_mib(server.process.pid)
        with grpc.insecure_channel(
            server.grpc_target,
            options=[("grpc.max_send_message_length", 256 << 20)],
        ) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            start = time.monotonic()
            try:
                stub.Predict(request, timeout=600)
                status = "OK"
            except grpc.RpcError as error:
                status = f"{error.code().name}: {error.details()[:160]}"
            seconds = time.monotonic() - start
        after = peak_rss_mib(server.process.pid)
    return {
        "case": name,
        "status": status,
        "seconds": round(seconds, 2),
        "estimated_gflop": round(cost.gflop, 1),
        "estimated_mib": round(cost.memory_bytes / 2**20, 1),
        "server_peak_growth_mib": round(after - before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export_dir", default="", help="a model folder of integer versions")
    parser.add_argument("--max_message_bytes", type=int, default=64 * 2**20)
    parser.add_argument("--max_support", type=int, default=500)
    parser.add_argument("--max_queries", type=int, default=500)
    parser.add_argument("--max_tasks", type=int, default=64)
    parser.add_argument(
        "--grpc", action="store_true", help="the estimate against the server, per request"
    )
    parser.add_argument("--cases", help="with --grpc: comma-separated case names (default: all)")
    args = parser.parse_args()
    if args.grpc:
        wanted = set(args.cases.split(",")) if args.cases else None
        with tempfile.TemporaryDirectory() as scratch:
            from serving_load import export_untrained

            base = args.export_dir or export_untrained(scratch)
            results = [
                grpc_case(base, case) for case in GRPC_CASES if wanted is None or case[0] in wanted
            ]
        for r in results:
            print(r, flush=True)
        print(json.dumps({"grpc_cases": results}))
        return
    body, shape = worst_body(
        args.max_message_bytes, args.max_support, args.max_queries, args.max_tasks
    )
    with tempfile.TemporaryDirectory() as scratch:
        base = args.export_dir
        if not base:
            from serving_load import export_untrained

            base = export_untrained(scratch)
        flags = [
            "--model_name=m",
            f"--model_base_path={os.path.abspath(base)}",
            f"--max_message_bytes={args.max_message_bytes}",
            f"--max_support={args.max_support}",
            f"--max_queries={args.max_queries}",
            f"--max_tasks={args.max_tasks}",
        ]
        with ServerProcess(flags) as server:
            before = peak_rss_mib(server.process.pid)
            connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=600)
            start = time.monotonic()
            connection.request("POST", "/v1/models/m:predict", body)
            response = connection.getresponse()
            answer = json.loads(response.read())
            seconds = time.monotonic() - start
            after = peak_rss_mib(server.process.pid)
    result = {
        "body_bytes": len(body),
        **shape,
        "status": response.status,
        "error": answer.get("error", "")[:200],
        "seconds": round(seconds, 2),
        "server_peak_rss_mib_before": round(before, 1),
        "server_peak_rss_mib_after": round(after, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
