"""The Flow under concurrent load, with a writer checking every acknowledgement; optionally a fault.

    .venv/bin/python benchmarks/bench_load.py                                  # flow.yml
    .venv/bin/python benchmarks/bench_load.py --searches 2000 --max-seconds 120
    .venv/bin/python benchmarks/bench_load.py --fault --searches 2000 --max-seconds 120
    .venv/bin/python benchmarks/bench_load.py --flow flow.scaled.yml

Starts `jina flow --uses FLOW` on the committed base model (127.0.0.1, free ports), indexes
`--docs` documents with precomputed random unit embeddings (no encoding: the cores are left to
the searches), then runs at the same time:

- `--http-searchers` + `--grpc-searchers` threads, each with its own `SearchClient`, sending
  text queries and timing them;
- one writer thread that, per document: indexes it with a fresh random embedding, searches by
  that exact embedding (limit 1) and expects it as the top hit with score > 0.999 (otherwise a
  lost acknowledgement), sometimes updates its text and tags and checks they are served, and
  mostly deletes it and checks that a search by its embedding no longer returns it (otherwise a
  stale or deleted result). The documents it keeps stay acknowledged for the fault check.

Everything is bounded: `--searches` in total across the searchers and `--max-seconds` of wall
time, whichever comes first; every client call has a timeout.

`--fault`: once about half of the searches (or of the time) are done, the indexer process is
killed with SIGKILL (found as the member of the Flow's process group with files under
WORKSPACE/HNSWIndexer/N open; with shards, the last shard's, so the others keep serving), the
clients keep going for `--outage-seconds` and their errors are
counted apart, then the clients pause, the whole Flow is killed and started again on the same
workspace, and every document acknowledged as stored (and not acknowledged as deleted) is
looked up by its exact embedding: "acknowledged documents lost" counts those not found; deleted
documents returned after the restart are counted too. The clients then resume until the bounds.

Prints a markdown table and the command, and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from results import command_line, machine, save_json
from timing import Stopwatch, percentile

from client.api import SearchClient
from demo import BASE_MODEL_DIR
from demo.served_flow import ServedFlow, flow_env, open_files

QUERIES = [
    "a red square",
    "a blue circle",
    "a green triangle",
    "a small yellow star",
    "a large black dog",
    "a white cat on a sofa",
    "a car at night",
    "a tree on a beach",
]
# a hit on its own exact embedding scores 1 up to float rounding and the HNSW graph's recall
EXACT_SCORE = 0.999
# client timeout: long enough for a loaded 2-core machine, short enough that a dead executor
# shows as an error within the outage window instead of hanging a thread
CLIENT_TIMEOUT_S = 10.0
# the phases errors are counted in
NORMAL, OUTAGE, AFTER_RESTART = "normal", "outage", "after restart"


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def embedding_dim(run_dir: Path) -> int:
    """The towers' embedding size, from the run folder's config."""
    config = json.loads((run_dir / "config.json").read_text())
    return int(config["model_cfg"]["embed_dim"])


def top_hit(client: SearchClient, vec: np.ndarray) -> dict[str, Any] | None:
    """The best match of an exact-embedding search (limit 1), or None when there is none."""
    [answer] = client.post("/search", [{"embedding": vec.tolist()}], {"limit": 1})
    if answer.get("error"):
        raise RuntimeError(f"search by embedding failed: {answer['error']}")
    matches = answer.get("matches") or []
    return matches[0] if matches else None


def write(client: SearchClient, endpoint: str, doc: dict[str, Any]) -> None:
    """One document to /index, /update or /delete; raises unless it was acknowledged."""
    [outcome] = client.post(endpoint, [doc])
    if outcome.get("error"):
        raise RuntimeError(f"{endpoint} {doc['id']}: {outcome['error']}")


# --- the Flow and its indexer process -----------------------------------------------------------


def shard_pids(flow: ServedFlow, workspace: Path) -> tuple[int, list[int]]:
    """The last index shard (0 for flow.yml) and the Flow's processes holding files in its
    workspace folder WORKSPACE/HNSWIndexer/N (its store's lock)."""
    shard = max(int(p.name) for p in (workspace / "HNSWIndexer").iterdir() if p.name.isdigit())
    prefix = str((workspace / "HNSWIndexer" / str(shard)).resolve()) + os.sep
    return shard, [
        pid for pid in flow.members() if any(f.startswith(prefix) for f in open_files(pid))
    ]


# --- the load -----------------------------------------------------------------------------------


@dataclass
class Shared:
    """What the threads share: the search budget, the pause gate and what they recorded."""

    searches: int
    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    running: threading.Event = field(default_factory=threading.Event)  # cleared: pause
    phase: str = NORMAL
    generation: int = 0  # bumped on a restart: clients reconnect
    started: int = 0
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter = field(default_factory=Counter)  # (protocol, phase) -> count
    error_samples: dict[str, str] = field(default_factory=dict)

    def claim(self) -> bool:
        """One search from the budget; False once the budget or the time is spent."""
        with self.lock:
            if self.stop.is_set() or self.started >= self.searches:
                return False
            if time.monotonic() >= self.deadline:
                return False
            self.started += 1
            return True

    def error(self, who: str, e: Exception) -> None:
        with self.lock:
            self.errors[(who, self.phase)] += 1
            self.error_samples.setdefault(f"{who} / {self.phase}", f"{type(e).__name__}: {e}"[:300])

    def wait_running(self) -> bool:
        """Block while paused (bounded by the deadline); False when it is time to stop."""
        while not self.running.wait(0.2):
            if self.stop.is_set() or time.monotonic() >= self.deadline:
                return False
        return True


def searcher(shared: Shared, host: str, protocol: str, seed: int) -> None:
    rng = random.Random(seed)
    client, generation = SearchClient(host, timeout=CLIENT_TIMEOUT_S), shared.generation
    try:
        while shared.wait_running() and shared.claim():
            if generation != shared.generation:
                client.close()  # a new Flow behind the same ports: a fresh connection
                generation = shared.generation
            phase = shared.phase
            try:
                with Stopwatch() as watch:
                    hits = client.search(text=rng.choice(QUERIES), limit=10)
                if not hits:
                    raise RuntimeError("no hits on a non-empty index")
            except Exception as e:  # every failure is a result to count
                shared.error(protocol, e)
                if phase != NORMAL:
                    time.sleep(0.05)  # an outage fails fast: do not spin through the budget
                continue
            with shared.lock:
                shared.latency_ms[protocol].append(watch.seconds * 1000)
    finally:
        client.close()


@dataclass
class Ledger:
    """What the writer was told: documents acknowledged as stored, or as deleted."""

    stored: dict[str, np.ndarray] = field(default_factory=dict)
    deleted: dict[str, np.ndarray] = field(default_factory=dict)
    uncertain: set[str] = field(default_factory=set)  # a write that failed without an answer
    ops: Counter = field(default_factory=Counter)
    lost_acks: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def writer(shared: Shared, host: str, ledger: Ledger, dim: int, keep: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    client, generation = SearchClient(host, timeout=CLIENT_TIMEOUT_S), shared.generation
    n = 0
    try:
        while shared.wait_running() and not shared.stop.is_set():
            if time.monotonic() >= shared.deadline or shared.started >= shared.searches:
                break  # the searchers are done: the load is over
            if generation != shared.generation:
                client.close()
                generation = shared.generation
            doc_id, vec = f"w-{seed}-{n}", unit_vectors(rng, 1, dim)[0]
            n += 1
            step = "index"
            try:
                write(client, "/index", {"id": doc_id, "embedding": vec.tolist(), "text": doc_id})
                with ledger.lock:
                    ledger.stored[doc_id] = vec
                    ledger.ops["index"] += 1
                step = "search after index"
                hit = top_hit(client, vec)
                if hit is None or hit["id"] != doc_id or hit["score"] <= EXACT_SCORE:
                    ledger.lost_acks.append(f"{doc_id}: after /index, top hit {hit}")
                if pick.random() < 0.3:
                    step = "update"
                    text, tags = f"{doc_id} updated", {"rev": n, "colour": pick.choice(QUERIES)}
                    # the embedding goes along: the encoders would otherwise embed the new text
                    write(
                        client,
                        "/update",
                        {"id": doc_id, "embedding": vec.tolist(), "text": text, "tags": tags},
                    )
                    ledger.ops["update"] += 1
                    step = "search after update"
                    hit = top_hit(client, vec)
                    if (
                        hit is None
                        or hit["id"] != doc_id
                        or hit.get("text") != text
                        or hit.get("tags") != tags
                    ):
                        ledger.stale.append(f"{doc_id}: after /update, top hit {hit}")
                if pick.random() < keep:
                    continue
                step = "delete"
                with ledger.lock:
                    ledger.uncertain.add(doc_id)  # until the answer says which
                write(client, "/delete", {"id": doc_id})
                with ledger.lock:
                    ledger.uncertain.discard(doc_id)
                    ledger.deleted[doc_id] = ledger.stored.pop(doc_id)
                    ledger.ops["delete"] += 1
                step = "search after delete"
                hit = top_hit(client, vec)
                if hit is not None and hit["id"] == doc_id:
                    ledger.stale.append(f"{doc_id}: returned after /delete, score {hit['score']}")
            except Exception as e:  # counted by phase; the loop goes on to a new document
                shared.error(f"writer ({step})", e)
                time.sleep(0.05)
    finally:
        client.close()


def verify(host: str, ledger: Ledger) -> dict[str, Any]:
    """Every acknowledged, not deleted document found by its exact embedding; none deleted."""
    lost, resurrected, failed = [], [], []
    with SearchClient(host, timeout=CLIENT_TIMEOUT_S) as client:
        for doc_id, vec in list(ledger.stored.items()):
            if doc_id in ledger.uncertain:
                continue  # its delete may have been applied without an answer
            try:
                hit = top_hit(client, vec)
            except Exception as e:
                failed.append(f"{doc_id}: {type(e).__name__}: {e}"[:200])
                continue
            if hit is None or hit["id"] != doc_id or hit["score"] <= EXACT_SCORE:
                lost.append(doc_id)
        for doc_id, vec in list(ledger.deleted.items()):
            try:
                hit = top_hit(client, vec)
            except Exception as e:
                failed.append(f"{doc_id}: {type(e).__name__}: {e}"[:200])
                continue
            if hit is not None and hit["id"] == doc_id:
                resurrected.append(doc_id)
    return {
        "checked_stored": len(ledger.stored) - len(ledger.uncertain & set(ledger.stored)),
        "checked_deleted": len(ledger.deleted),
        "acknowledged_lost": lost,
        "deleted_returned": resurrected,
        "lookups_failed": failed,
    }


def fault(
    shared: Shared, flow: ServedFlow, workspace: Path, ledger: Ledger, outage_s: float
) -> dict[str, Any]:
    """Kill the indexer (the last shard), let the clients fail for `outage_s`, restart the
    Flow, verify."""
    shard, pids = shard_pids(flow, workspace)
    if len(pids) != 1:
        raise RuntimeError(f"expected one process for index shard {shard}, found {pids}")
    with shared.lock:
        shared.phase = OUTAGE
    killed_at = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)
    print(f"killed index shard {shard} (pid {pids[0]}) with SIGKILL", file=sys.stderr)
    time.sleep(outage_s)
    shared.running.clear()  # the clients pause while the Flow restarts
    flow.kill()
    restart_start = time.monotonic()
    flow.start()
    restart_s = time.monotonic() - restart_start
    print(f"Flow restarted in {restart_s:.1f} s; verifying", file=sys.stderr)
    result = verify(flow.grpc, ledger)
    result.update(
        {
            "indexer_pid": pids[0],
            "shard": shard,
            "outage_s": time.monotonic() - killed_at,
            "restart_s": restart_s,
        }
    )
    with shared.lock:
        shared.generation += 1
        shared.phase = AFTER_RESTART
        # the outage and the restart are not the clients' time: give it back to the bound
        shared.deadline += time.monotonic() - killed_at
    shared.running.set()
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flow", default="flow.yml", help="flow.yml or flow.scaled.yml")
    p.add_argument("--tower", default=str(BASE_MODEL_DIR), help="run folder (both towers)")
    p.add_argument("--docs", type=int, default=200, help="documents indexed before the load")
    p.add_argument("--http-searchers", type=int, default=8)
    p.add_argument("--grpc-searchers", type=int, default=4)
    p.add_argument("--searches", type=int, default=10_000, help="across all searchers")
    p.add_argument("--max-seconds", type=float, default=300.0, help="wall limit of the load")
    p.add_argument("--keep", type=float, default=0.3, help="share of writer docs not deleted")
    p.add_argument(
        "--fault", action="store_true", help="kill -9 the indexer (its last shard) mid-run"
    )
    p.add_argument("--outage-seconds", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="runs/bench/bench_load.json")
    args = p.parse_args(argv)
    command = command_line(__file__, argv)

    rng = np.random.default_rng(args.seed)
    dim = embedding_dim(Path(args.tower))
    ledger = Ledger()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        workspace = tmp / "ws"
        env = flow_env(args.tower, workspace, image_root="", torch_threads=1)
        flow = ServedFlow(args.flow, env, tmp / "flow.log", start_timeout_s=300)
        print(f"starting {args.flow} ...", file=sys.stderr)
        flow.start()
        try:
            result = run(args, flow, workspace, ledger, dim, rng)
        except BaseException:
            print(flow.log_tail(), file=sys.stderr)
            raise
        finally:
            flow.kill()
    result["config"] = {**vars(args), "dim": dim, "command": command, **machine()}
    print_table(result, command)
    save_json(result, args.json)
    return result


def run(
    args: argparse.Namespace,
    flow: ServedFlow,
    workspace: Path,
    ledger: Ledger,
    dim: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    vecs = unit_vectors(rng, args.docs, dim)
    with SearchClient(flow.grpc, timeout=60) as client:
        for first in range(0, args.docs, 100):
            batch = [
                {"id": f"pre-{i}", "embedding": vecs[i].tolist(), "text": f"document {i}"}
                for i in range(first, min(first + 100, args.docs))
            ]
            failed = [d for d in client.post("/index", batch) if d.get("error")]
            if failed:
                raise RuntimeError(f"pre-indexing failed: {failed[:3]}")
            ledger.stored.update({d["id"]: vecs[int(d["id"][4:])] for d in batch})
        served_dim = client.status().get("dim")
        if served_dim not in (None, dim):
            raise RuntimeError(f"the index has dim {served_dim}, the towers' config says {dim}")

    shared = Shared(args.searches, time.monotonic() + args.max_seconds)
    shared.running.set()
    threads = [
        threading.Thread(target=searcher, args=(shared, flow.http, "http", i), daemon=True)
        for i in range(args.http_searchers)
    ] + [
        threading.Thread(target=searcher, args=(shared, flow.grpc, "grpc", 100 + i), daemon=True)
        for i in range(args.grpc_searchers)
    ]
    threads.append(
        threading.Thread(
            target=writer, args=(shared, flow.grpc, ledger, dim, args.keep, 7), daemon=True
        )
    )
    start = time.monotonic()
    for t in threads:
        t.start()
    fault_result = None
    try:
        if args.fault:
            # halfway through the budget of searches or of time, whichever comes first
            while time.monotonic() < shared.deadline and not shared.stop.is_set():
                if shared.started >= args.searches // 2:
                    break
                if time.monotonic() - start >= args.max_seconds / 2:
                    break
                time.sleep(0.1)
            fault_result = fault(shared, flow, workspace, ledger, args.outage_seconds)
        for t in threads:
            t.join(timeout=max(1.0, shared.deadline - time.monotonic() + CLIENT_TIMEOUT_S + 5))
    finally:
        shared.stop.set()
        shared.running.set()
        for t in threads:
            t.join(timeout=CLIENT_TIMEOUT_S + 5)
    elapsed = time.monotonic() - start
    if fault_result:
        elapsed -= fault_result["outage_s"]  # the clients' own time, as the deadline counts it

    done = sum(len(v) for v in shared.latency_ms.values())
    protocols = {}
    for protocol in ("http", "grpc", "writer"):
        errors = {phase: n for (who, phase), n in shared.errors.items() if who.startswith(protocol)}
        ms = shared.latency_ms.get(protocol, [])
        protocols[protocol] = {
            "searches": len(ms),
            "p50_ms": percentile(ms, 0.5) if ms else None,
            "p99_ms": percentile(ms, 0.99) if ms else None,
            "errors": errors,
        }
    return {
        "searches_ok": done,
        "searches_started": shared.started,
        "elapsed_s": elapsed,
        "qps": done / elapsed if elapsed > 0 else 0.0,
        "protocols": protocols,
        "error_samples": shared.error_samples,
        "writer": {
            "ops": dict(ledger.ops),
            "lost_acknowledgements": ledger.lost_acks,
            "stale_or_deleted_results": ledger.stale,
            "kept": len([k for k in ledger.stored if k.startswith("w-")]),
        },
        "fault": fault_result,
    }


def print_table(r: dict[str, Any], command: str) -> None:
    c = r["config"]
    print(
        f"\nLoad on {c['flow']} ({c['docs']} pre-indexed docs, dim {c['dim']}, "
        f"{c['http_searchers']} HTTP + {c['grpc_searchers']} gRPC searchers, 1 writer; "
        f"{r['searches_ok']} searches answered in {r['elapsed_s']:.1f} s: "
        f"{r['qps']:.1f} QPS in total"
        + ("; the time from the kill to the restart left out" if r["fault"] else "")
        + ")\n"
    )

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    def errs(e: dict[str, int]) -> str:
        return ", ".join(f"{n} {phase}" for phase, n in sorted(e.items())) or "0"

    print("| client | searches | p50 ms | p99 ms | errors (by phase) |")
    print("|---|---:|---:|---:|---|")
    for name in ("http", "grpc"):
        s = r["protocols"][name]
        print(
            f"| {name} | {s['searches']} | {fmt(s['p50_ms'])} | {fmt(s['p99_ms'])} "
            f"| {errs(s['errors'])} |"
        )
    w = r["writer"]
    ops = ", ".join(f"{n} {op}" for op, n in sorted(w["ops"].items()))
    print(f"| writer | {ops or '0'} | - | - | {errs(r['protocols']['writer']['errors'])} |")
    print(f"\n- lost acknowledgements: {len(w['lost_acknowledgements'])}")
    print(f"- stale or deleted results returned: {len(w['stale_or_deleted_results'])}")
    for line in (w["lost_acknowledgements"] + w["stale_or_deleted_results"])[:5]:
        print(f"  - {line}")
    f = r["fault"]
    if f:
        print(
            f"- fault: index shard {f['shard']} (pid {f['indexer_pid']}) killed with SIGKILL; "
            f"Flow restarted in {f['restart_s']:.1f} s ({f['outage_s']:.1f} s from the kill to "
            "clients resuming)"
        )
        print(
            f"- acknowledged documents lost: {len(f['acknowledged_lost'])} "
            f"(of {f['checked_stored']} checked)"
        )
        print(
            f"- deleted documents returned after the restart: {len(f['deleted_returned'])} "
            f"(of {f['checked_deleted']} checked)"
        )
        if f["lookups_failed"]:
            print(f"- lookups that failed after the restart: {len(f['lookups_failed'])}")
    for where, sample in sorted(r["error_samples"].items()):
        print(f"- first error, {where}: {sample}")
    print(f"\n```\n{command}\n```")


if __name__ == "__main__":
    main()
