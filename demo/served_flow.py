"""Run `jina flow --uses YML` as a child process group: start, wait until ready, stop or kill.

Used by the demo, the tests and the benchmarks. A separate process rather than
`Flow.start()` inside the caller: jina forks its executors, and forking a process that already
runs torch threads or gRPC clients can hang or crash the children.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from demo import REPO
from executors.flow_env import FLOW_ENV_DEFAULTS

JINA = str(Path(sys.executable).with_name("jina"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flow_env(
    run_dir: str | os.PathLike,
    workspace: str | os.PathLike,
    image_root: str | os.PathLike,
    torch_threads: int | None = None,
    runtime: str = "torch",
) -> dict[str, str]:
    """Environment for a Flow on 127.0.0.1 and free ports, serving the towers of `run_dir`
    on `runtime` (torch, onnx, onnx-int8)."""
    env = {
        "GRPC_PORT": str(free_port()),
        "HTTP_PORT": str(free_port()),
        "HOST": "127.0.0.1",
        "WORKSPACE": str(workspace),
        "TEXT_TOWER": str(Path(run_dir) / "clip-text"),
        "VISION_TOWER": str(Path(run_dir) / "clip-vision"),
        "IMAGE_ROOTS": str(image_root),
        "ENCODER_RUNTIME": runtime,
    }
    if torch_threads:
        env["TORCH_THREADS"] = str(torch_threads)
    return env


class ServedFlow:
    """A Flow in its own process group, so that it can be stopped or killed whole."""

    def __init__(
        self,
        yml: str,
        env: dict[str, str],
        log: str | os.PathLike,
        start_timeout_s: float = 180,
        cwd: str | os.PathLike = REPO,
    ):
        """`cwd`: the checkout the Flow runs from (its YAML and executor modules)."""
        self.yml, self.env, self.log, self.proc = yml, env, Path(log), None
        self.start_timeout_s, self.cwd = start_timeout_s, Path(cwd)
        self.http = f"http://127.0.0.1:{env['HTTP_PORT']}"
        self.grpc = f"grpc://127.0.0.1:{env['GRPC_PORT']}"

    def start(self) -> ServedFlow:
        """Start and wait until the gateway answers `/status`; raises RuntimeError if not."""
        env = {k: v for k, v in os.environ.items() if k not in FLOW_ENV_DEFAULTS}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [JINA, "flow", "--uses", self.yml],
                cwd=self.cwd,
                env={**env, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"jina flow exited with {code}:\n{self.log_tail()}")
            try:
                if requests.post(f"{self.http}/status", json={"data": []}, timeout=5).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(
            f"jina flow not ready after {self.start_timeout_s} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        self.kill(signal.SIGINT)  # jina closes its executors (and their stores) on SIGINT

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 60) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # the executors are children in the same process group: wait until none is left
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        self.proc = None

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def __enter__(self) -> ServedFlow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
