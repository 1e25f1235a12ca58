"""absl_main.py as a user runs it: usage errors, SIGKILL then resume, the sine default."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.export.model_card import ModelCard
from keras_reptile.run import recorded_results
from tests.conftest import OMNIGLOT_DIR, REPO_ROOT, needs_omniglot
from tests.export.helpers import LoadedWithDefaults

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT))


def main_command(*flags):
    return [sys.executable, str(REPO_ROOT / "absl_main.py"), *flags]


def run_main(*flags, cwd=None, timeout=600):
    return subprocess.run(
        main_command(*flags),
        cwd=cwd or REPO_ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--preset=omniglot_3w"], "omniglot_5w1s"),  # lists the valid presets
        (["--strategy=tpu"], "mirrored"),
        (["--mode=serve"], "train"),
        (["--foml_tail=2"], "pass --foml too"),
        (["--inner_adam=sequential"], "SGD carries none"),  # the sine preset trains with SGD
        (["--inner_adam=serial"], "parallel"),
        (["--meta_batch=0"], "Received: meta_batch=0"),
        (["--learning_rate=-1"], "Received: learning_rate=-1"),
        (["--preset=omniglot_5w1s"], "needs --data_dir"),
        (["--preset=omniglot_5w1s", "--data_dir=/nonexistent"], "/nonexistent"),
        (["stray"], "Unexpected arguments: stray"),
        (["--mode=evaluate", "--model_dir=/tmp/keras_reptile_no_such_run"], "No checkpoint"),
        (["--warm_start_from=/nonexistent"], "Expected a keras-reptile SavedModel"),
        (
            [f"--warm_start_from={REPO_ROOT / 'saved_models/omniglot_5w'}"],
            "dataset='omniglot'; this run cannot start from it. Received: dataset='sine'",
        ),
        # Your own data.
        (["--dataset=folder"], "--dataset=folder needs --data_dir"),
        (["--dataset=folder", "--data_dir=/nonexistent"], "Received: path=/nonexistent"),
        (["--dataset=folder", "--data_dir=."], "No class folders found"),
        (["--dataset=imagenet"], "or tfds:<name>"),
        (["--dataset=tfds:"], "Received: dataset='tfds:'"),
        (["--dataset=tfds:mnist", "--data_dir=."], "not prepared in data_dir"),
        (["--dataset=tfds:mnist"], "needs --data_dir"),
        (["--dataset=folder", "--channels=2"], "Received: channels=2"),
        (["--dataset=folder", "--test_fraction=1.5"], "Received: test_fraction=1.5"),
        (["--dataset=folder", "--image_size=0"], "Received: image_size=0"),
        (["--dataset=folder", "--test_classes=a,a"], "lists a class twice"),
        (["--dataset=folder", "--test_classes=a", "--test_fraction=0.5"], "pass one"),
        (["--image_size=32"], "applies to your own data only"),
        (["--rotations"], "Received: rotations=True, dataset='sine'"),
        (["--model=resnet"], "omniglot_cnn"),
        (["--model=omniglot_cnn"], "Received: model='omniglot_cnn', input_shape=(1,)"),
        (["--dataset=omniglot"], "pass --preset (omniglot_20w1s"),
        (["--ways=0"], "Received: classes=0"),
        (["--dataset=folder", "--data_source=tfds", "--data_dir=."], "--dataset=tfds:<name>"),
    ],
)
def test_bad_flags_give_usage_errors_not_tracebacks(flags, expected, tmp_path):
    result = run_main(*flags, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_dataset_folder_trains_resumes_evaluates_and_exports_like_any_run(tmp_path):
    from tests.data.test_folder_source import write_class_folders

    write_class_folders(tmp_path / "birds", classes=8, per_class=4)
    flags = [
        "--dataset=folder", "--data_dir=birds", "--ways=3", "--shots=1", "--train_shots=2",
        "--meta_batch=2", "--inner_iters=1", "--eval_samples=4", "--eval_interval=0",
        "--checkpoint_interval=2", "--image_size=12", "--channels=1", "--model=omniglot_cnn",
        "--test_fraction=0.4", "--rotations",
    ]  # fmt: skip
    env = dict(ENV, KERAS_REPTILE_CACHE_DIR=str(tmp_path / "cache"))

    def main(*more):
        return subprocess.run(
            main_command(*more), cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip

    first = main(*flags, "--meta_iters=2", "--mode=train")
    assert first.returncode == 0, first.stderr[-3000:]
    model_dir = tmp_path / "runs/birds_3w"  # named after the folder and the ways
    assert latest_step(model_dir) == 2
    resumed = main(*flags, "--meta_iters=4")  # all: train on, evaluate, export
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from checkpoint at step 2" in resumed.stdout
    assert latest_step(model_dir) == 4
    card = ModelCard.read(str(tmp_path / "saved_models/birds_3w/1"))
    assert card.recipe.dataset == "folder" and card.recipe.rotations
    assert (card.recipe.image_size, card.recipe.channels, card.recipe.classes) == (12, 1, 3)
    assert card.input_shape == (12, 12, 1) and card.meta_iterations == 4
    assert {m.split for m in card.results} == {"train", "test"}
    # The run folder alone exports again (no data read) and evaluates from the recorded data.
    exported = main("--mode=export", "--model_dir=runs/birds_3w")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "saved_models/birds_3w/2/saved_model.pb").exists()
    evaluated = main("--mode=evaluate", "--model_dir=runs/birds_3w", "--eval_samples=2")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    # Another split of the same folder is another run: refused in this run folder.
    other = main(*flags[:-2], "--test_fraction=0.5", "--meta_iters=4", "--mode=train")
    assert other.returncode == 2 and "Received: test_fraction=0.5" in other.stderr


@needs_omniglot
def test_tfds_omniglot_from_the_projects_zips_says_what_to_do_instead(tmp_path):
    result = run_main(
        "--preset=omniglot_5w1s", "--data_source=tfds", f"--tfds_manual_dir={OMNIGLOT_DIR}",
        "--data_dir=tfds", cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "use the default reader (--data_source=local" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def latest_step(model_dir) -> int:
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_from_the_checkpoint(tmp_path):
    model_dir = str(tmp_path / "run")
    flags = [
        "--meta_iters=2500",
        "--checkpoint_interval=100",
        "--eval_interval=0",
        "--mode=train",
        f"--model_dir={model_dir}",
    ]
    proc = subprocess.Popen(
        main_command(*flags),
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while latest_step(model_dir) < 300 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        killed_at = latest_step(model_dir)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert 300 <= killed_at < 2500
    resumed = run_main(*flags, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step = int(re.search(r"Resuming from checkpoint at step (\d+)", resumed.stdout).group(1))
    assert step >= killed_at
    assert latest_step(model_dir) == 2500
    again = run_main(*flags, cwd=tmp_path)
    assert "Already trained to step 2500" in again.stdout


@pytest.mark.slow
def test_sine_default_runs_end_to_end(tmp_path):
    # The README's main job with fewer iterations: train, evaluate, plot, export.
    result = run_main("--meta_iters=1500", "--eval_samples=300", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = {m.split: m for m in recorded_results(str(tmp_path / "runs/sine"))}
    meta, random_init = results["test"].mean, results["test_from_random_init"].mean
    assert meta < random_init / 3, (meta, random_init)
    assert re.search(r"test\s+mse: MSE", result.stdout)
    assert (tmp_path / "runs/sine/sine_adaptation.png").stat().st_size > 10_000
    export = tmp_path / "saved_models/sine/1"
    card = ModelCard.read(str(export))
    assert card.find(split="test").mean == meta and card.meta_iterations == 1500
    loaded = LoadedWithDefaults(export)
    x = np.linspace(-4, 4, 10, dtype=np.float32)[:, None]
    adapt = loaded.signatures["adapt_and_predict"]
    y = 2 * np.sin(x + 1)
    out = adapt(
        support_inputs=x, support_targets=y, query_inputs=x, inner_steps=32, learning_rate=0.02
    )["predictions"]
    before = adapt(
        support_inputs=x, support_targets=y, query_inputs=x, inner_steps=0, learning_rate=0.02
    )["predictions"]
    assert out.shape == (10, 1) and np.all(np.isfinite(out))
    assert np.mean((out - y) ** 2) < np.mean((before - y) ** 2)  # adaptation helped
    # TF Serving fills left-out optional inputs from the SignatureDef's defaults.
    from tests.export.helpers import meta_graph

    graph = meta_graph(export)
    defaults = graph.signature_def["adapt_and_predict"].defaults
    assert defaults["inner_steps"].int_val == [32]
    # A second run exports the next version; the first is left as it was.
    again = run_main("--meta_iters=1500", "--eval_samples=300", "--mode=export", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "saved_models/sine/2/saved_model.pb").exists()
    assert ModelCard.read(str(tmp_path / "saved_models/sine/2")).results == card.results
    # The run folder is enough: no flags but its folder to export (and no data), and another
    # protocol's defaults on request; the card keeps each result with the protocol it was
    # measured with.
    other = run_main(
        "--model_dir=runs/sine", "--shots=5", "--mode=export", "--export_dir=other", cwd=tmp_path
    )
    assert other.returncode == 0, other.stderr[-3000:]
    other_card = ModelCard.read(str(tmp_path / "other/1"))
    assert other_card.default_protocol.shots == 5
    assert other_card.results == card.results and card.results[0].protocol.shots == 10
