import grpc
import pytest

from keras_reptile.models import build_model
from keras_reptile.models.cost import ModelCost
from serving.cost import CostLimits, RequestShape, estimate
from serving.errors import ServingError

OMNIGLOT = ModelCost.of(build_model("omniglot_cnn", 5, (28, 28, 1)))


def shape(**changes):
    base = dict(tasks=1, support=25, queries=5, inner_steps=50, inner_batch=5,
                transductive=False, input_floats=784)  # fmt: skip
    return RequestShape(**{**base, **changes})


def test_a_5_way_5_shot_request_costs_its_passes():
    cost = estimate(OMNIGLOT, shape())
    # 50 steps of 5 images forward and backward, then 5 queries each with the 25 support images.
    expected = (3 * OMNIGLOT.forward_flops * 250 + OMNIGLOT.forward_flops * 5 * 26) / 1e9
    assert cost.gflop == pytest.approx(expected)
    assert cost.gflop == pytest.approx(4.68, abs=0.01)
    assert cost.memory_bytes < 64 * 2**20


def test_memory_grows_with_queries_times_support_unless_transductive():
    big = estimate(OMNIGLOT, shape(support=500, queries=500, inner_steps=0))
    assert big.memory_bytes > 12 * 2**30  # the pass holds 500 x 501 first-layer activations
    together = estimate(OMNIGLOT, shape(support=500, queries=500, inner_steps=0, transductive=True))
    assert together.memory_bytes < 200 * 2**20
    four = estimate(OMNIGLOT, shape(tasks=8, concurrent_tasks=4))
    assert four.memory_bytes == 4 * estimate(OMNIGLOT, shape()).memory_bytes
    assert four.gflop == pytest.approx(8 * estimate(OMNIGLOT, shape()).gflop)


def test_limits_refuse_with_the_estimate_and_the_flag():
    limits = CostLimits(max_gflop=100, max_memory_mb=2048)
    limits.check(estimate(OMNIGLOT, shape()))
    with pytest.raises(ServingError, match="--max_request_gflop") as error:
        limits.check(estimate(OMNIGLOT, shape(inner_steps=1000, inner_batch=500)))
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(ServingError, match=r"about \d+ MiB.*--max_request_memory_mb"):
        wide = shape(support=200, queries=200, inner_steps=0)
        CostLimits(max_gflop=0, max_memory_mb=2048).check(estimate(OMNIGLOT, wide))
    CostLimits(0, 0).check(estimate(OMNIGLOT, shape(support=500, queries=500)))  # no limits
