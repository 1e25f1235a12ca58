import threading
import time

import numpy as np
import pytest

from serving.adaptation_cache import AdaptationCache, adaptation_key

SUPPORT = {"support_images": np.zeros((5, 28, 28, 1), np.float32), "support_labels": np.arange(5)}
PROTOCOL = {"inner_steps": 50, "inner_batch_size": 5, "learning_rate": np.float32(0.001)}


def test_key_changes_with_every_input_that_decides_the_adaptation():
    base = adaptation_key("m", 1, SUPPORT, PROTOCOL)
    assert base == adaptation_key("m", 1, dict(SUPPORT), dict(PROTOCOL))

    def key(support=SUPPORT, protocol=PROTOCOL, model="m", version=1):
        return adaptation_key(model, version, support, protocol)

    changed = [
        key(model="n"),
        key(version=2),
        key({**SUPPORT, "support_labels": np.arange(5)[::-1]}),
        key({**SUPPORT, "support_labels": np.arange(5, dtype=np.int8)}),
        key({**SUPPORT, "support_images": np.zeros((5, 784, 1, 1), np.float32)}),
        key(protocol={**PROTOCOL, "inner_steps": 49}),
        key(protocol={**PROTOCOL, "learning_rate": np.float32(0.002)}),
    ]
    assert len({base, *changed}) == len(changed) + 1
    assert len(base) == 64  # hex SHA-256


def test_hits_return_the_same_weights_and_lru_evicts_by_bytes():
    cache = AdaptationCache(capacity_bytes=3 * 400)
    calls = []

    def adapt(i):
        return lambda: calls.append(i) or np.full(100, i, np.float32)  # 400 bytes

    for i in range(3):
        cache.get_or_adapt(f"k{i}", ("m", 1), adapt(i))
    weights, hit = cache.get_or_adapt("k0", ("m", 1), adapt(99))  # k0 is now the newest
    assert hit and weights[0] == 0 and not weights.flags.writeable
    cache.get_or_adapt("k3", ("m", 1), adapt(3))  # evicts k1, the least recently used
    assert cache.get_or_adapt("k1", ("m", 1), adapt(1))[1] is False
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions) == (1, 5, 2)
    assert stats.entries == 3 and stats.bytes == 1200 and stats.capacity_bytes == 1200
    assert calls == [0, 1, 2, 3, 1]


def test_identical_requests_in_flight_adapt_once():
    cache = AdaptationCache(capacity_bytes=10_000)
    started, calls = threading.Event(), []

    def slow():
        calls.append(1)
        started.set()
        time.sleep(0.2)
        return np.ones(10, np.float32)

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_adapt("k", ("m", 1), slow)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(calls) == 1 and len(results) == 4
    assert sorted(hit for _, hit in results) == [False, True, True, True]


def test_a_waiter_stops_waiting_at_its_own_deadline():
    cache = AdaptationCache(capacity_bytes=10_000)
    started, release = threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(5)
        return np.ones(10, np.float32)

    leader = threading.Thread(target=lambda: cache.get_or_adapt("k", ("m", 1), slow))
    leader.start()
    started.wait(5)
    begin = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within 0.05 s"):
        cache.get_or_adapt("k", ("m", 1), slow, wait_seconds=0.05)
    assert time.monotonic() - begin < 2
    release.set()
    leader.join(5)
    assert cache.get_or_adapt("k", ("m", 1), slow)[1] is True  # the leader's result was kept


def test_errors_are_shared_by_waiters_and_not_cached():
    cache = AdaptationCache(capacity_bytes=10_000)

    def fail():
        raise RuntimeError("adaptation failed")

    with pytest.raises(RuntimeError):
        cache.get_or_adapt("k", ("m", 1), fail)
    assert cache.get_or_adapt("k", ("m", 1), lambda: np.ones(2))[1] is False


def test_drop_removes_a_versions_entries_and_zero_capacity_keeps_nothing():
    cache = AdaptationCache(capacity_bytes=10_000)
    cache.get_or_adapt("a", ("m", 1), lambda: np.ones(10))
    cache.get_or_adapt("b", ("m", 2), lambda: np.ones(10))
    cache.get_or_adapt("c", ("n", 1), lambda: np.ones(10))
    assert cache.drop("m", 1) == 1 and cache.stats().entries == 2
    assert cache.drop("m") == 1 and cache.stats().bytes == 80
    off = AdaptationCache(capacity_bytes=0)
    off.get_or_adapt("a", ("m", 1), lambda: np.ones(10))
    assert off.get_or_adapt("a", ("m", 1), lambda: np.ones(10))[1] is False
    with pytest.raises(ValueError, match="Received: capacity_bytes=-1"):
        AdaptationCache(-1)
