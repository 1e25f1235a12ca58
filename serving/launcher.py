"""Runs `python -m serving.server` as a subprocess on free loopback ports (tests, benchmarks).

Example:
    with ServerProcess(["--model_name=m", "--model_base_path=/abs/m"]) as server:
        channel = grpc.insecure_channel(server.grpc_target)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """The real server in a subprocess, on free ports, ready once its health check says SERVING.

    Args:
        args: list of str. Flags besides `--port` and `--rest_api_port`.
        cwd: str or None. Working directory (where `saved_models/` is looked for).
        rest: bool. Whether to open the REST port.
        startup_timeout: float. Seconds to wait for SERVING.
        channel_credentials: grpc.ChannelCredentials or None. How the health check connects to
            a server given `--ssl_config_file`.
    """

    def __init__(
        self,
        args,
        *,
        cwd=None,
        rest: bool = True,
        startup_timeout: float = 180.0,
        channel_credentials: grpc.ChannelCredentials | None = None,
    ):
        self.channel_credentials = channel_credentials
        self.port = free_port()
        self.rest_port = free_port() if rest else 0
        self.args = [f"--port={self.port}", f"--rest_api_port={self.rest_port}", *args]
        self.cwd, self.startup_timeout = cwd, startup_timeout
        self.process: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="serving-", suffix=".log", delete=False)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        with open(self._log.name, errors="replace") as f:
            return f.read()

    def start(self) -> ServerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.server", *self.args],
            cwd=self.cwd or REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_serving()
        return self

    def wait_serving(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        if self.channel_credentials is None:
            channel = grpc.insecure_channel(self.grpc_target)
        else:
            channel = grpc.secure_channel(self.grpc_target, self.channel_credentials)
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"serving.server exited with code {self.process.returncode}:\n"
                        f"{self.log()[-4000:]}"
                    )
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        self.stop(signal.SIGKILL)
        raise TimeoutError(
            f"serving.server not SERVING after {self.startup_timeout} s:\n{self.log()[-4000:]}"
        )

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Sends `signum` and waits for the exit code (SIGKILL if it takes too long)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def close(self) -> None:
        """Stops the server (if running) and deletes its log."""
        self.stop()
        self._log.close()
        if os.path.exists(self._log.name):
            os.unlink(self._log.name)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
