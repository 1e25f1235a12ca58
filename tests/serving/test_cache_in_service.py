"""The adapted-weight cache inside the service: reuse, identical answers, counting, version drop."""

import threading

import numpy as np
import pytest

from keras_reptile.export import signatures as sig
from serving.adaptation_cache import AdaptationCache
from serving.batching import BatchingParameters, TaskBatcher
from serving.metrics import ServingMetrics
from serving.service import Service, Target
from serving.validation import Limits
from tests.serving import in_process
from tests.serving.helpers import export, install, sine_task, task

LIMITS = Limits()


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    with in_process.omni_manager(tmp_path_factory.mktemp("models"), LIMITS) as manager:
        yield manager


def _predict(service, signature, arrays, model="omni"):
    result = service.predict(Target(model), signature, lambda spec: dict(arrays))
    return result.outputs


@pytest.mark.parametrize("transductive", [False, True])
def test_a_repeated_support_set_reuses_its_adaptation_with_identical_answers(manager, transductive):
    metrics = ServingMetrics()
    cached = Service(manager, LIMITS, cache=AdaptationCache(2**24), metrics=metrics)
    plain = Service(manager, LIMITS)
    inputs = {**task(3, shots=2), sig.TRANSDUCTIVE: np.asarray(transductive)}
    expected = _predict(plain, sig.ADAPT_AND_PREDICT, inputs)
    first = _predict(cached, sig.ADAPT_AND_PREDICT, inputs)
    other_queries = {**inputs, sig.QUERY_IMAGES: task(9)[sig.QUERY_IMAGES]}
    second = _predict(cached, sig.ADAPT_AND_PREDICT, other_queries)
    third = _predict(cached, sig.ADAPT_AND_PREDICT, inputs)
    for got in (first, third):
        for key in (sig.LOGITS, sig.PROBABILITIES, sig.CLASSES):
            np.testing.assert_array_equal(got[key], expected[key])
    np.testing.assert_array_equal(
        second[sig.CLASSES], _predict(plain, sig.ADAPT_AND_PREDICT, other_queries)[sig.CLASSES]
    )
    stats = cached.cache.stats()
    assert (stats.misses, stats.hits, stats.entries) == (1, 2, 1)
    text = metrics.exposition().decode()
    assert ':keras_reptile:serving:adaptation_cache{model_name="omni",result="hit"} 2.0' in text
    assert ":keras_reptile:serving:adaptation_cache_bytes " in text
    # Only the miss ran inner steps.
    assert ':keras_reptile:serving:tasks_adapted{model_name="omni"} 1.0' in text


def test_other_settings_adapt_again_and_an_adapt_request_fills_the_cache(manager):
    service = Service(manager, LIMITS, cache=AdaptationCache(2**24))
    inputs = task(4)
    support = {k: inputs[k] for k in (sig.SUPPORT_IMAGES, sig.SUPPORT_LABELS)}
    weights = _predict(service, sig.ADAPT, support)[sig.ADAPTED_WEIGHTS]
    assert service.cache.stats().misses == 1
    _predict(service, sig.ADAPT_AND_PREDICT, inputs)  # enrolled: a hit
    assert service.cache.stats().hits == 1
    _predict(service, sig.ADAPT_AND_PREDICT, {**inputs, sig.INNER_STEPS: np.int32(3)})
    assert service.cache.stats().misses == 2  # another number of steps: another adaptation
    plain = _predict(Service(manager, LIMITS), sig.ADAPT, support)[sig.ADAPTED_WEIGHTS]
    np.testing.assert_array_equal(weights, plain)


def test_identical_requests_in_flight_adapt_once(manager):
    service = Service(manager, LIMITS, cache=AdaptationCache(2**24))
    inputs = task(5, shots=3)
    answers = []

    def ask():
        answers.append(_predict(service, sig.ADAPT_AND_PREDICT, inputs))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert service.cache.stats().misses == 1 and service.cache.stats().hits == 3
    for a in answers[1:]:
        np.testing.assert_array_equal(a[sig.PROBABILITIES], answers[0][sig.PROBABILITIES])


def test_concurrent_misses_adapt_as_one_batch_with_the_same_answers(manager):
    params = BatchingParameters.from_text(
        "max_batch_size { value: 3 } batch_timeout_micros { value: 2000000 }"
    )
    metrics = ServingMetrics()
    batcher = TaskBatcher(params, None, metrics)
    service = Service(manager, LIMITS, batcher, cache=AdaptationCache(2**24))
    tasks = [task(20 + i) for i in range(3)]
    plain = Service(manager, LIMITS)
    expected = [_predict(plain, sig.ADAPT_AND_PREDICT, t) for t in tasks]
    answers = [None] * 3

    def ask(i):
        answers[i] = _predict(service, sig.ADAPT_AND_PREDICT, tasks[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(answers, expected):
        np.testing.assert_array_equal(got[sig.CLASSES], want[sig.CLASSES])
        np.testing.assert_allclose(got[sig.PROBABILITIES], want[sig.PROBABILITIES], atol=1e-6)
    text = metrics.exposition().decode()
    assert "processed_batch_size_bucket" in text
    assert service.cache.stats().misses == 3


def test_works_with_task_batching_on(manager):
    batcher = TaskBatcher(BatchingParameters(), None, None)
    service = Service(manager, LIMITS, batcher, cache=AdaptationCache(2**24))
    inputs = task(6)
    expected = _predict(Service(manager, LIMITS, batcher), sig.ADAPT_AND_PREDICT, inputs)
    for _ in range(2):
        got = _predict(service, sig.ADAPT_AND_PREDICT, inputs)
        np.testing.assert_array_equal(got[sig.CLASSES], expected[sig.CLASSES])
        np.testing.assert_allclose(got[sig.PROBABILITIES], expected[sig.PROBABILITIES], atol=1e-6)
    assert service.cache.stats().hits == 1


def test_a_version_unloaded_drops_its_entries(tmp_path):
    install(export("sine", 1), tmp_path / "sine", 1)
    manager = in_process.manager("sine", tmp_path / "sine", LIMITS)
    service = Service(manager, LIMITS, cache=AdaptationCache(2**24))
    _predict(service, sig.ADAPT_AND_PREDICT, sine_task(1), model="sine")
    assert service.cache.stats().entries == 1
    manager.stop()  # unloads every version
    assert service.cache.stats().entries == 0


def test_a_zero_capacity_turns_the_cache_off(manager):
    service = Service(manager, LIMITS, cache=AdaptationCache(0))
    _predict(service, sig.ADAPT_AND_PREDICT, task(7))
    assert service.cache.stats().misses == 0
