"""jina's snapshot and restore RPCs against every gRPC port of a running Flow (issue 18, item 3).

Every jina executor serves `JinaExecutorRestore/restore`, whose handler removes the file the
caller names once the Executor's `restore` hook returns or raises (jina 3.34:
jina/serve/executors/__init__.py, `_run_restore`), and `JinaExecutorSnapshot/snapshot`. This
asks each port of a Flow to restore from each index shard's store files and from a victim file
outside the workspace, and to take a snapshot, then reports what each port answered and which
files are gone. Run as a script, it does so on flow.yml and flow.scaled.yml (on the project's
base model, with API_TOKEN set), and restarts each Flow to count what survived:

    PYTHONPATH=. .venv/bin/python tests/restore_attack.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.empty_pb2 import Empty
from jina.proto import jina_pb2, jina_pb2_grpc

from client.api import SearchClient
from demo import BASE_MODEL_DIR
from demo.served_flow import ServedFlow, flow_env

TOKEN = "restore-attack-token"
DOCS = [{"id": f"doc-{i}", "text": f"a caption number {i}"} for i in range(6)]
LATE_DOC = {"id": "doc-late", "text": "a caption written after the attack"}
RPC_TIMEOUT_S = 10


@dataclass
class PortReport:
    """What one port answered and which of the files named to it are gone afterwards."""

    runtime: str
    port: int
    restore: list[str] = field(default_factory=list)  # one status per file named
    snapshot: str = ""
    deleted: list[str] = field(default_factory=list)

    def line(self) -> str:
        restores = sorted(set(self.restore))
        restore = ", ".join(f"{s} x{self.restore.count(s)}" for s in restores)
        deleted = ", ".join(self.deleted) or "none"
        return (
            f"  {self.runtime:<28} 127.0.0.1:{self.port:<5}  restore: {restore:<16} "
            f"snapshot: {self.snapshot:<13} deleted: {deleted}"
        )


def store_files(workspace: Path) -> list[Path]:
    """Every index shard's SQLite files under the Flow's workspace."""
    return sorted(workspace.glob("HNSWIndexer/*/store.sqlite*"))


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _status(call, progress, rpc_id, name_of) -> str:
    """Start `call`, then poll `progress(rpc_id(answer))` until it is no longer RUNNING."""
    try:
        answer = call()
        deadline = time.monotonic() + RPC_TIMEOUT_S
        while True:
            status = progress(rpc_id(answer.id.value), timeout=RPC_TIMEOUT_S).status
            if name_of(status) != "RUNNING" or time.monotonic() > deadline:
                return name_of(status)
            time.sleep(0.05)
    except grpc.RpcError as e:
        return e.code().name


def attack_port(runtime: str, port: int, files: dict[Path, str]) -> PortReport:
    """Ask 127.0.0.1:`port` to restore from each of `files` (path -> the name to report; one
    after the other: jina runs one restore at a time), then to snapshot; report which files
    are gone or replaced."""
    report = PortReport(runtime, port)
    before = {path: _inode(path) for path in files}
    restore_status = jina_pb2.RestoreSnapshotStatusProto.Status.Name
    snapshot_status = jina_pb2.SnapshotStatusProto.Status.Name
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        restore = jina_pb2_grpc.JinaExecutorRestoreStub(channel).restore
        restore_progress = jina_pb2_grpc.JinaExecutorRestoreProgressStub(channel).restore_status
        for path in files:
            command = jina_pb2.RestoreSnapshotCommand(snapshot_file=str(path))
            report.restore.append(
                _status(
                    lambda command=command: restore(command, timeout=RPC_TIMEOUT_S),
                    restore_progress,
                    lambda value: jina_pb2.RestoreId(value=value),
                    restore_status,
                )
            )
        report.snapshot = _status(
            lambda: jina_pb2_grpc.JinaExecutorSnapshotStub(channel).snapshot(
                Empty(), timeout=RPC_TIMEOUT_S
            ),
            jina_pb2_grpc.JinaExecutorSnapshotProgressStub(channel).snapshot_status,
            lambda value: jina_pb2.SnapshotId(value=value),
            snapshot_status,
        )
    report.deleted = [files[path] for path, inode in before.items() if inode != _inode(path)]
    return report


def attack_flow(served: ServedFlow, workspace: Path, victim: Path) -> list[PortReport]:
    """Every gRPC port of `served` (its HTTP port aside) named each shard's store files and
    `victim`, which is written anew before each port so that every port gets its chance."""
    http_port = int(served.env["HTTP_PORT"])
    files = {path: str(path.relative_to(workspace)) for path in store_files(workspace)}
    files[victim] = victim.name
    reports = []
    for runtime, ports in sorted(served.ports_by_runtime().items()):
        for port in ports:
            if port != http_port:
                victim.write_text("not the service's to delete\n")
                reports.append(attack_port(runtime, port, files))
    return reports


def index_docs(served: ServedFlow, docs: list[dict]) -> None:
    with SearchClient(served.grpc, token=TOKEN) as client:
        errors = [answer.get("error") for answer in client.post("/index", docs)]
    if any(errors):
        raise RuntimeError(f"indexing failed: {errors}")


def searchable(served: ServedFlow, docs: list[dict]) -> tuple[int, list[str]]:
    """The index's count and the ids of `docs` that a search does not find."""
    with SearchClient(served.grpc) as client:
        found = {hit.id for hit in client.search(text="a caption", limit=100)}
        return client.status()["count"], [d["id"] for d in docs if d["id"] not in found]


def run(yml: str, tmp: Path) -> list[str]:
    """The report on `yml`: indexed, attacked on every port, written to, then restarted."""
    workspace, victim = tmp / "ws", tmp / "victim.txt"
    env = flow_env(BASE_MODEL_DIR, workspace, tmp, torch_threads=1)
    env["API_TOKEN"] = TOKEN
    served = ServedFlow(yml, env, tmp / "flow.log")
    lines = []
    with served:
        index_docs(served, DOCS)
        store = store_files(workspace)
        names = ", ".join(str(p.relative_to(workspace)) for p in store)
        lines.append(f"{yml} (API_TOKEN set): {len(DOCS)} documents indexed; store: {names}")
        lines += [report.line() for report in attack_flow(served, workspace, victim)]
        gone = [str(p.relative_to(workspace)) for p in store if not p.exists()]
        index_docs(served, [LATE_DOC])
        count, missing = searchable(served, [*DOCS, LATE_DOC])
        lines.append(f"  store files gone: {', '.join(gone) or 'none'}")
        lines.append(
            f"  after the attack, {LATE_DOC['id']} indexed (acknowledged): count {count}, "
            f"not found by search: {missing or 'none'}"
        )
    with served:  # restarted on the same workspace
        count, missing = searchable(served, [*DOCS, LATE_DOC])
        lines.append(f"  after a restart: count {count}, not found by search: {missing or 'none'}")
    return lines


def main() -> int:
    os.environ.pop("SEARCH_TOKEN", None)  # the client's default token: reads send none
    with tempfile.TemporaryDirectory() as tmp:
        for yml in ("flow.yml", "flow.scaled.yml"):
            folder = Path(tmp, yml)
            folder.mkdir()
            print("\n".join(run(yml, folder)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
