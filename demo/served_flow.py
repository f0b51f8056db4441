"""Run `jina flow --uses YML` as a child process group: start, wait until ready, stop or kill.

Used by the demo, the tests and the benchmarks. A separate process rather than
`Flow.start()` inside the caller: jina forks its executors, and forking a process that already
runs torch threads or gRPC clients can hang or crash the children.
"""

from __future__ import annotations

import ipaddress
import os
import re
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
# What jina logs when an executor of the Flow could not start (the process does not exit).
ABORTED = "Flow is aborted due to"


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
            if ABORTED in self.log_tail(n=20_000):  # jina logs it and keeps running
                self.kill()
                raise RuntimeError(f"jina aborted the Flow:\n{self.log_tail()}")
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

    def members(self) -> list[int]:
        """The pids of the Flow's processes (its process group), read from /proc."""
        return group_members(self.proc.pid) if self.proc is not None else []

    def pid_of(self, runtime: str) -> int:
        """The pid of one executor process, by its jina runtime name (`indexer/shard-1/rep-0`),
        as its log lines name it (`NAME@PID`)."""
        found = re.findall(rf"{re.escape(runtime)}@(\d+)", self.log_tail(n=10**7))
        if not found:
            raise LookupError(f"{runtime}: not in the Flow's log {self.log}")
        return int(found[-1])

    def listening(self) -> list[tuple[str, int]]:
        """(address, port) of every socket the Flow's processes listen on (TCP, from /proc)."""
        inodes = {inode for pid in self.members() for inode in socket_inodes(pid)}
        return [addr for inode, addr in listening_sockets().items() if inode in inodes]

    def ports_by_runtime(self) -> dict[str, list[int]]:
        """The ports each process of the Flow listens on, by its jina runtime name as its log
        lines name it (`indexer/shard-1/rep-0`, `indexer/head`, `gateway/rep-0`, ...)."""
        names = {
            int(pid): name for name, pid in re.findall(r"([\w/.-]+)@(\d+)", self.log_tail(n=10**7))
        }
        sockets = listening_sockets()
        found = {}
        for pid in self.members():
            ports = sorted(sockets[inode][1] for inode in socket_inodes(pid) if inode in sockets)
            if ports:
                found[names.get(pid, f"pid {pid}")] = ports
        return found

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def __enter__(self) -> ServedFlow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def group_members(pgid: int) -> list[int]:
    """The pids of a process group, read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the fields after the command name (which may hold spaces) start with state, ppid, pgrp
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def open_files(pid: int) -> list[str]:
    """What a process's file descriptors point to (paths, `socket:[INODE]`, ...); none when
    it is gone or not ours to read."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return []
    targets = []
    for fd in fds:
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue
    return targets


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets a process holds open."""
    return {t[len("socket:[") : -1] for t in open_files(pid) if t.startswith("socket:[")}


def listening_sockets() -> dict[str, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket of this machine."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            # little-endian 32-bit words, one (IPv4) or four (IPv6)
            raw = b"".join(
                bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)
            )
            ip = ipaddress.ip_address(raw)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            found[fields[9]] = (str(ip), int(port, 16))
    return found
