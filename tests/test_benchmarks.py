"""The benchmark scripts run and print the JSON the README quotes (tiny settings, no timing)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import OMNIGLOT_DIR, REPO_ROOT, needs_omniglot
from tests.fakes import write_fake_miniimagenet
from tests.test_absl_main import ENV


def last_json(*args) -> dict:
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@needs_omniglot
def test_meta_step_prints_the_trainer_the_reference_and_the_floor():
    out = last_json(
        "benchmarks/meta_step.py",
        "--preset=omniglot_5w5s",
        f"--data_dir={OMNIGLOT_DIR}",
        "--iterations=10",
        "--reference_iterations=1",
    )
    for key in ("ms_per_meta_iteration", "reference_eager_ms", "flop_floor_ms", "conv_kernels_ms"):
        assert out[key] > 0, (key, out)
    assert out["conv_kernels_over_floor"] == pytest.approx(
        out["conv_kernels_ms"] / out["flop_floor_ms"], abs=0.01
    )
    assert out["gflop_per_meta_iteration"] == pytest.approx(3.99, abs=0.01)
    assert out["estimated_training_minutes"] == pytest.approx(
        out["ms_per_meta_iteration"] * 100_000 / 60e3, rel=0.01
    )


@pytest.mark.slow
def test_serving_load_prints_latencies_and_no_errors():
    out = last_json(
        "benchmarks/serving_load.py",
        "--clients=2",
        "--requests=1",
        "--inner_steps=2",
        "--enrolled_requests=2",
        "--in_process",
    )
    assert out["errors"] == 0
    for label in ("no_batching", "batching"):
        for case in ("enrolled_5w5s_2_clients", "repeated_5w5s_1_clients"):
            for server in (label, f"{label}_cached"):
                r = out[f"{server}_{case}"]
                assert r["errors"] == 0 and r["p50_ms"] > 0, (server, case, r)
        assert out[f"{label}_enrolled_speedup_5w5s"] > 0
        assert out[f"{label}_cached_repeated_p50_over_full"] > 0
        # one cached task is the 5-way Omniglot network's 113,221 float32 weights
        assert out[f"{label}_cached_bytes_per_task"] == 113_221 * 4
    for label in ("no_batching", "batching", "in_process"):
        for task in ("5w1s_1_clients", "5w1s_2_clients", "5w5s_1_clients", "5w5s_2_clients"):
            r = out[f"{label}_{task}"]
            assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["throughput_rps"] > 0, r
    assert out["flop_floor_5w5s_ms"] > 0 and out["batching_speedup_5w5s"] > 0
    assert out["conv_critical_path_5w5s_ms"] > 0
    one_call = out["in_process_5w5s_2_tasks_one_call"]
    assert one_call["tasks"] == 2 and one_call["calls"] == 1 and one_call["tasks_per_s"] > 0
    half = out["in_process_5w5s_2_clients_half_steps"]
    assert half["errors"] == 0 and half["requests"] == 2
    concurrent = out["in_process_5w5s_2_clients"]["throughput_rps"]
    assert out["in_process_stacking_speedup_5w5s"] == pytest.approx(
        one_call["tasks_per_s"] / concurrent, abs=0.01
    )
    assert out["in_process_half_steps_speedup_5w5s"] == pytest.approx(
        half["throughput_rps"] / concurrent, abs=0.01
    )


def test_miniimagenet_loading_prints_first_and_cached_loads(tmp_path):
    write_fake_miniimagenet(tmp_path / "data", per_class=2)
    out = last_json(
        "benchmarks/miniimagenet_loading.py",
        f"--data_dir={tmp_path / 'data'}",
        f"--cache_dir={tmp_path / 'cache'}",
        "--images_per_class=2",
    )
    assert out["images"] == 200
    classes = {"train": 64, "val": 16, "test": 20}
    assert out["array_shapes"] == {split: [n, 2, 84, 84, 3] for split, n in classes.items()}
    assert out["array_mb"]["train"] == pytest.approx(64 * 2 * 84 * 84 * 3 / 1e6, abs=0.1)
    for key in ("first_load_s", "cached_load_s", "peak_rss_after_first_load_mb"):
        assert out[key] > 0, (key, out)
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "cache").glob("*.npy")) == [
        "test",
        "train",
        "val",
    ]


def test_the_kernel_bounds_count_every_convolution_of_an_inner_step():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from meta_step import inner_step_convolutions

    from keras_reptile.models import build_model

    kernels = inner_step_convolutions(build_model("omniglot_cnn", 5, (28, 28, 1)))
    # Each layer's forward pass and filter gradient; no input gradient for the images.
    assert sorted(kernels) == sorted(
        [("forward", i) for i in range(4)]
        + [("filter", i) for i in range(4)]
        + [("input", i) for i in (1, 2, 3)]
    )


@pytest.mark.slow
@needs_omniglot
def test_evaluation_prints_the_time_per_task():
    out = last_json(
        "benchmarks/evaluation.py", "--preset=omniglot_5w1s", f"--data_dir={OMNIGLOT_DIR}",
        "--tasks=20",
    )  # fmt: skip
    assert out["tasks"] == 20 and out["ms_per_task"] > 0
    assert out["minutes_for_10000_tasks"] == pytest.approx(
        out["ms_per_task"] * 10_000 / 60e3, rel=0.02
    )


@pytest.mark.slow
def test_serving_memory_prints_the_peak_and_the_estimates():
    out = last_json(
        "benchmarks/serving_memory.py",
        "--max_message_bytes=1500000",
        "--max_support=100",
        "--max_queries=100",
    )
    assert out["status"] == 200 and out["body_bytes"] <= 1_500_000 and out["tasks"] >= 1, out
    assert out["server_peak_rss_mib_after"] >= out["server_peak_rss_mib_before"] > 0
    out = last_json("benchmarks/serving_memory.py", "--grpc", "--cases=inner_batch_500")
    (case,) = out["grpc_cases"]
    assert case["status"] == "OK" and case["estimated_mib"] > 0, case
    assert case["server_peak_growth_mib"] >= 0


@pytest.mark.slow
@needs_omniglot
def test_fit_driver_runs_both_drivers_to_the_same_weights():
    out = last_json(
        "benchmarks/fit_driver.py",
        f"--data_dir={OMNIGLOT_DIR}",
        "--iterations=4",
        "--rounds=1",
        "--summary_interval=2",
    )
    assert out["same_weights"] is True, out
    assert out["reptile_fit_ms"][0] > 0 and out["keras_model_fit_ms"][0] > 0
