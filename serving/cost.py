"""A request's cost, known from its shapes and settings before any work starts, and its limits.

The estimate follows what the served signatures compute: per task, `inner_steps` forward and
backward passes on mini-batches of `inner_batch_size`, then the query pass, which for the
non-transductive answer runs every query in a batch of its own with the whole support set.
Memory is bounded above by every layer's activations of the largest pass held at once, plus the
copies of the support set and weights that pass makes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import grpc
import numpy as np

from keras_reptile.algorithms.inner_loop import query_pass_chunk
from keras_reptile.export import signatures as sig
from keras_reptile.models.cost import ModelCost
from serving.errors import ServingError

FLOAT_BYTES = 4
# Tasks an `adapt_and_predict_tasks` call adapts at once (the export's map_fn runs this many side
# by side); memory is that many tasks' peak.
PARALLEL_TASKS = 4
# The flags' defaults: every zoo protocol passes, even --max_tasks (64) tasks of 20-way 5-shot
# in one request (about 1,200 GFLOP and 1,650 MiB); 500 support examples adapted for 1,000 steps
# of 500 (about 8,000 GFLOP) and 200 queries answered non-transductively with 200 support
# examples (about 8,000 MiB) are refused.
DEFAULT_MAX_GFLOP = 2000.0
DEFAULT_MAX_MEMORY_MB = 4096.0


@dataclasses.dataclass(frozen=True)
class RequestShape:
    """What a request asks of a model.

    Args:
        tasks: int. Tasks adapted (1 for `adapt_and_predict`).
        support: int. Support examples per task.
        queries: int. Query examples per task.
        inner_steps: int. Inner steps per task.
        inner_batch: int. Inner mini-batch size.
        transductive: bool. All queries in one batch (else one pass per query with the support).
        input_floats: int. Values per example.
        concurrent_tasks: int. Tasks the signature adapts at once (its memory multiplies).
    """

    tasks: int
    support: int
    queries: int
    inner_steps: int
    inner_batch: int
    transductive: bool
    input_floats: int
    concurrent_tasks: int = 1


@dataclasses.dataclass(frozen=True)
class RequestCost:
    gflop: float
    memory_bytes: int

    def __str__(self) -> str:
        return f"{self.gflop:.1f} GFLOP and {self.memory_bytes / 2**20:.0f} MiB"


def request_shape(
    spec: sig.SignatureSpec, arrays: Mapping[str, np.ndarray], input_shape: tuple[int, ...]
) -> RequestShape:
    """What a prepared request (its optional inputs filled in) asks of the model: the support
    and query sets of each task and the inner settings, read from the arrays' shapes."""
    multi = any(i.tasks for i in spec.inputs)
    lead = 1 if multi else 0

    def count(*keys) -> int:
        found = [arrays[k] for k in keys if k in arrays]
        return int(found[0].shape[lead]) if found else 0

    support = count(sig.SUPPORT_IMAGES, sig.SUPPORT_INPUTS)
    queries = count(sig.QUERY_IMAGES, sig.QUERY_INPUTS, sig.IMAGES, sig.INPUTS)
    tasks = 1
    if multi:
        tasks = int(
            next(arrays[i.key] for i in spec.inputs if i.tasks and i.key in arrays).shape[0]
        )

    def scalar(key, default):
        return np.asarray(arrays[key]).item() if key in arrays else default

    return RequestShape(
        tasks=tasks,
        support=support,
        queries=queries,
        inner_steps=int(scalar(sig.INNER_STEPS, 0)) if support else 0,
        inner_batch=int(scalar(sig.INNER_BATCH_SIZE, 0)) if support else 0,
        transductive=bool(scalar(sig.TRANSDUCTIVE, True)) or not support,
        input_floats=int(np.prod(input_shape)),
        concurrent_tasks=PARALLEL_TASKS,
    )


def estimate(model: ModelCost, r: RequestShape) -> RequestCost:
    """The floating-point work and the peak memory of one request."""
    per_task_flops = model.training_flops(r.inner_steps * r.inner_batch)
    adapt_floats = r.inner_batch * model.activation_floats * 3  # forward, gradients, BatchNorm
    if r.transductive:
        query_examples = r.queries
        query_floats = query_examples * model.activation_floats
    else:
        query_examples = r.queries * (r.support + 1)
        # The pass runs its (task, query) networks a chunk at a time, each with a copy of the
        # support set and of the weights.
        chunk = int(query_pass_chunk(model.activation_floats, r.support))
        # Per task (the graph maps tasks one at a time); never fewer than two networks.
        networks = min(max(2, r.queries), chunk)
        per_network = (r.support + 1) * (model.activation_floats + r.input_floats)
        query_floats = networks * (per_network + model.weight_floats)
    per_task_flops += model.forward_flops * query_examples
    state_floats = 4 * model.weight_floats + (r.support + r.queries) * r.input_floats
    peak_per_task = max(adapt_floats, query_floats) + state_floats
    concurrent = max(1, min(r.tasks, r.concurrent_tasks))
    return RequestCost(
        gflop=r.tasks * per_task_flops / 1e9,
        memory_bytes=concurrent * peak_per_task * FLOAT_BYTES,
    )


@dataclasses.dataclass(frozen=True)
class CostLimits:
    """The most one request may cost (0 = no limit), with the flags that set them.

    Args:
        max_gflop: float. `--max_request_gflop`.
        max_memory_mb: float. `--max_request_memory_mb`.
    """

    max_gflop: float
    max_memory_mb: float

    def check(self, cost: RequestCost) -> None:
        """Raises RESOURCE_EXHAUSTED naming the estimate, the limit and the flag to change."""
        if self.max_gflop and cost.gflop > self.max_gflop:
            raise ServingError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"The request needs about {cost.gflop:.1f} GFLOP of computation, more than this "
                f"server allows per request ({self.max_gflop:g} GFLOP, --max_request_gflop); "
                "send fewer tasks, support or query examples, or fewer inner steps.",
            )
        if self.max_memory_mb and cost.memory_bytes > self.max_memory_mb * 2**20:
            raise ServingError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"The request needs about {cost.memory_bytes / 2**20:.0f} MiB of memory, more "
                f"than this server allows per request ({self.max_memory_mb:g} MiB, "
                "--max_request_memory_mb); send fewer support or query examples per request "
                "(or transductive=true, which passes the queries together).",
            )
