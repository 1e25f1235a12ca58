import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_workers_on_loopback_end_with_identical_weights(tmp_path):
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    procs = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
        env["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.training.multi_worker_worker",
                    str(tmp_path / "run"),
                    str(tmp_path / f"worker{index}.npz"),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=300)[0])
        finally:
            proc.kill()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    w0, w1 = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    assert int(w0["replicas"]) == 2
    arrays = [k for k in w0.files if k.startswith("arr_")]
    assert arrays
    for key in arrays:
        np.testing.assert_array_equal(w0[key], w1[key])
    # Only the chief wrote the real checkpoints; the other worker used a scratch folder.
    assert (tmp_path / "run" / "checkpoints").is_dir()
