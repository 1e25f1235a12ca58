"""Task batching: parameters, the batcher on a recording servable, and the real server."""

import threading
import time

import grpc
import numpy as np
import pytest

from keras_reptile.export import signatures as sig
from serving.batching import QUEUE_FULL, BatchingParameters, TaskBatcher
from serving.errors import ServingError
from serving.launcher import ServerProcess
from tests.serving.helpers import export, install, outputs, predict_request, stubs, task

# Parameters.


def test_parameters_read_tf_servings_text_format(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text(
        "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 500 }\n"
        "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 3 }\n"
    )
    assert BatchingParameters.read(str(path)) == BatchingParameters(4, 500, 2, 3)
    assert BatchingParameters.from_text("") == BatchingParameters()


@pytest.mark.parametrize(
    "text, match",
    [
        ("max_batch_size { value: 0 }", "max_batch_size must be an integer >= 1"),
        ("max_batch_size: 4", "not a text-format BatchingParameters"),
        ("batch_size { value: 4 }", "not a text-format BatchingParameters"),
        ("allowed_batch_sizes: 4", "Received: allowed_batch_sizes"),
        ("pad_variable_length_inputs: true", "Received: pad_variable_length_inputs"),
    ],
)
def test_bad_parameters_say_what_is_wrong(text, match):
    with pytest.raises(ValueError, match=match):
        BatchingParameters.from_text(text)


def test_a_missing_parameters_file_is_named():
    with pytest.raises(ValueError, match="Received: batching_parameters_file='/nonexistent'"):
        BatchingParameters.read("/nonexistent")


# The batcher on a servable that records its batches.


class RecordingServable:
    """Answers each task with its support's sum; records the task counts of its batches."""

    specs = {sig.ADAPT_AND_PREDICT: None, sig.ADAPT_AND_PREDICT_TASKS: None}

    def __init__(self, delay=0.0):
        self.batches, self.delay = [], delay

    def run(self, signature_name, arrays, deadline=None, check_outputs=True):
        one = signature_name == sig.ADAPT_AND_PREDICT  # a batch of one task
        assert one or signature_name == sig.ADAPT_AND_PREDICT_TASKS
        support = arrays[sig.SUPPORT_IMAGES][None] if one else arrays[sig.SUPPORT_IMAGES]
        self.batches.append(len(support))
        time.sleep(self.delay)
        with np.errstate(divide="ignore"):  # an all-zero task answers -inf on purpose
            logits = np.log(support.sum(axis=(1, 2, 3, 4)))[:, None] * np.ones((1, 3))
        return {sig.LOGITS: logits[0] if one else logits}

    def check_outputs(self, signature_name, outputs):
        if not np.all(np.isfinite(outputs[sig.LOGITS])):
            raise ServingError(grpc.StatusCode.INTERNAL, "non-finite")


def request(value, steps=5, shape=(2, 4, 4, 1)):
    return {
        sig.SUPPORT_IMAGES: np.full(shape, value, np.float32),
        sig.SUPPORT_LABELS: np.zeros(shape[0], np.int32),
        sig.QUERY_IMAGES: np.zeros((3, *shape[1:]), np.float32),
        sig.INNER_STEPS: np.int32(steps),
    }


def concurrently(batcher, servable, requests, **kwargs):
    results = [None] * len(requests)

    def one(i):
        try:
            results[i] = batcher.submit(servable, requests[i], **kwargs)
        except ServingError as e:
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_equal_requests_run_as_one_batch_and_each_gets_its_own_answer():
    batcher = TaskBatcher(BatchingParameters(max_batch_size=4, batch_timeout_micros=200_000))
    servable = RecordingServable()
    results = concurrently(batcher, servable, [request(v) for v in (1, 2, 3, 4)])
    assert servable.batches == [4]
    for value, result in zip((1, 2, 3, 4), results):
        np.testing.assert_allclose(result[sig.LOGITS], np.log(32.0 * value) * np.ones(3))
    batcher.stop()


def test_other_shapes_or_settings_never_share_a_batch():
    batcher = TaskBatcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=50_000))
    servable = RecordingServable()
    requests = [request(1), request(1, steps=6), request(1, shape=(3, 4, 4, 1)), request(1)]
    concurrently(batcher, servable, requests)
    assert sorted(servable.batches) == [1, 1, 2]
    batcher.stop()


def test_a_lone_request_runs_once_its_timeout_passes():
    batcher = TaskBatcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=30_000))
    servable = RecordingServable()
    start = time.monotonic()
    batcher.submit(servable, request(1))
    assert 0.03 <= time.monotonic() - start < 1.0 and servable.batches == [1]
    batcher.stop()


def test_a_request_past_its_deadline_leaves_its_batch():
    batcher = TaskBatcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=300_000))
    servable = RecordingServable()
    deadline = time.monotonic() + 0.05
    with pytest.raises(ServingError) as error:
        batcher.submit(servable, request(1), deadline=deadline)
    assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    batcher.stop()
    assert servable.batches == []  # it had left before the batch ran


def test_a_full_queue_answers_unavailable_in_tf_servings_words():
    params = BatchingParameters(max_batch_size=1, num_batch_threads=1, max_enqueued_batches=2)
    batcher = TaskBatcher(params)
    servable = RecordingServable(delay=0.3)
    results = concurrently(batcher, servable, [request(v) for v in range(1, 7)])
    refused = [r for r in results if isinstance(r, ServingError)]
    assert refused and all(r.code == grpc.StatusCode.UNAVAILABLE for r in refused)
    assert all(QUEUE_FULL in r.message for r in refused)
    assert len(servable.batches) == 6 - len(refused)
    batcher.stop()


def test_a_non_finite_answer_fails_only_its_own_request():
    batcher = TaskBatcher(BatchingParameters(max_batch_size=2, batch_timeout_micros=200_000))
    servable = RecordingServable()
    results = concurrently(batcher, servable, [request(0), request(1)])  # log(0) = -inf
    assert isinstance(results[0], ServingError) and results[0].code == grpc.StatusCode.INTERNAL
    assert np.all(np.isfinite(results[1][sig.LOGITS]))
    batcher.stop()


# The real server.


@pytest.mark.slow
def test_batched_server_answers_as_the_unbatched_one(tmp_path):
    base = tmp_path / "omni"
    install(export("omni", 1), base, 1)
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 4 }\nbatch_timeout_micros { value: 100000 }\n")
    flags = ["--model_name=omni", f"--model_base_path={base}"]
    requests = [predict_request("omni", sig.ADAPT_AND_PREDICT, task(seed)) for seed in range(8)]
    with ServerProcess(flags, rest=False) as server:
        api = stubs(server.grpc_target)
        alone = [outputs(api.prediction.Predict(r, timeout=60)) for r in requests]
    batched_flags = [*flags, "--enable_batching", f"--batching_parameters_file={params}"]
    with ServerProcess(batched_flags, rest=False) as server:
        api = stubs(server.grpc_target)
        results = [None] * len(requests)

        def one(i):
            results[i] = outputs(api.prediction.Predict(requests[i], timeout=60))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log = server.log()
    assert "Task batching on" in log
    for a, b in zip(alone, results):
        np.testing.assert_array_equal(a[sig.CLASSES], b[sig.CLASSES])
        np.testing.assert_allclose(a[sig.PROBABILITIES], b[sig.PROBABILITIES], atol=1e-5)


def test_batching_parameters_without_enable_batching_is_a_usage_error(tmp_path):
    import subprocess
    import sys

    from serving.launcher import REPO_ROOT

    result = subprocess.run(
        [sys.executable, "-m", "serving.server", "--batching_parameters_file=x"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "needs --enable_batching" in result.stderr
