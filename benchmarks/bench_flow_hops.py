"""Where a text search's time goes in the Flow, hop by hop, next to jina alone and in-process.

    .venv/bin/python benchmarks/bench_flow_hops.py
    .venv/bin/python benchmarks/bench_flow_hops.py --queries 300 --rounds 5

`bench_flow.py` measures the Flow's overhead over in-process encode + knn as a whole; this
splits it. jina's gateway times each executor's part of a request and returns the times in
the reply (`routes`: when it sent the request on, and when the answer was back), so each query
through `flow.yml` (committed base model or `--tower`, 1 torch thread per encoder) splits into:

- client <-> gateway: the client's wall time minus the gateway's span (the client's gRPC
  call, the loopback network, the gateway's own reading and writing of the request);
- the gateway's own work between hops: its span minus the executors' spans;
- each executor's round trip as the gateway sees it: the gRPC call, the executor's jina
  runtime, its handler, and the documents' (de)serialisation on both ends.

At the same moments (all paths take turns in blocks of `--block` queries), the same split of
jina alone (two do-nothing executors, the second answering `--limit` canned matches:
`jina_floor.py`), and the Flow's real work done in-process (`TextTower.encode`,
`HNSWStore.search`), one query after the other and with 5 ms idle before each query: an
executor of the Flow idles while the others take their turn, and on this VM that alone makes
the same work slower (the idle row). Medians over queries per round, then over rounds; the
medians of the parts need not add up to the median of the whole.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script from anywhere

from bench_flow import InProcess, Served, make_images, queries  # noqa: E402
from jina_floor import start_passthrough  # noqa: E402
from results import machine, save_json  # noqa: E402
from taking_turns import in_blocks_ms  # noqa: E402

from demo import BASE_MODEL_DIR  # noqa: E402
from demo.served_flow import ServedFlow  # noqa: E402

FLOWS = {"ours": "flow.yml", "jina": "jina alone (2 do-nothing executors)"}
IN_PROCESS = {
    "encode": "text encode (TextTower.encode)",
    "encode_idle": "text encode, 5 ms idle before",
    "knn": "knn (HNSWStore.search)",
    "knn_idle": "knn, 5 ms idle before",
}
IDLE_S = 0.005


def split_ms(reply, total_ms: float) -> dict[str, float]:
    """A reply's `routes` as parts of the query's `total_ms`: client <-> gateway, the gateway's
    own work, and each executor the gateway timed (in order; skipped ones are untimed)."""
    spans = [
        (r.executor, r.start_time.ToNanoseconds(), r.end_time.ToNanoseconds()) for r in reply.routes
    ]
    (_, g_start, g_end), executors = spans[0], spans[1:]
    hops = {name: (end - start) / 1e6 for name, start, end in executors if 0 < start <= end}
    gateway_ms = (g_end - g_start) / 1e6
    return {
        "client <-> gateway": total_ms - gateway_ms,
        "gateway's own work": gateway_ms - sum(hops.values()),
        **{f"hop {i + 1}: {name}": ms for i, (name, ms) in enumerate(hops.items())},
        "whole query": total_ms,
    }


def flow_search(flow: ServedFlow, limit: int, parts: list[dict]) -> tuple[Callable, Callable]:
    """One text query through `flow` on a kept-open channel, its split appended to `parts`."""
    from docarray import DocList

    from client.grpc_transport import GrpcTransport
    from client.wire import SearchDoc

    transport = GrpcTransport(flow.grpc.removeprefix("grpc://"))

    def search(text: str) -> None:
        query = DocList[SearchDoc]([SearchDoc(text=text)])
        start = time.perf_counter()
        reply = transport.reply("/search", query, {"limit": limit})
        parts.append(split_ms(reply, (time.perf_counter() - start) * 1000))

    return search, transport.close


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tower", default=str(BASE_MODEL_DIR), help="run folder (both towers)")
    p.add_argument("--images", type=int, default=64, help="images in the index")
    p.add_argument("--queries", type=int, default=200, help="queries per round and path")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--block", type=int, default=20, help="queries per path before the next")
    p.add_argument("--json", default="runs/bench/bench_flow_hops.json")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    rounds: dict[str, list[dict[str, float]]] = {k: [] for k in (*FLOWS, *IN_PROCESS)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "images", args.images, 256)
        texts = queries(args.queries)
        local = InProcess(args.tower, tmp / "store", threads=1)
        print("starting the Flow and jina alone ...", file=sys.stderr)
        flows = {
            "ours": Served(args.tower, tmp / "ws", 1, tmp / "flow.log"),
            "jina": start_passthrough(2, args.limit, tmp=tmp),
        }
        parts: dict[str, list[dict]] = {name: [] for name in flows}
        searchers, closers = {}, []
        try:
            flows["ours"].index(paths, 32, prefix="")
            local.index_batches(paths, 32, store=True)
            vectors = {t: local.encode(t) for t in texts}
            for name, flow in flows.items():
                searchers[name], close = flow_search(flow, args.limit, parts[name])
                closers.append(close)
            searchers["encode"] = searchers["encode_idle"] = local.encode
            searchers["knn"] = searchers["knn_idle"] = lambda t: local.store.search(
                vectors[t], limit=args.limit
            )
            idle = {"encode_idle": IDLE_S, "knn_idle": IDLE_S}
            in_blocks_ms(searchers, texts[:20], args.block, random.Random(-1), idle)  # warm-up
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
                for split in parts.values():
                    split.clear()
                ms = in_blocks_ms(searchers, texts, args.block, random.Random(r), idle)
                for name in FLOWS:
                    rounds[name].append(
                        {k: float(np.median([q[k] for q in parts[name]])) for k in parts[name][0]}
                    )
                for name in IN_PROCESS:
                    rounds[name].append({"p50": float(np.median(ms[name]))})
        finally:
            for close in closers:
                close()
            for flow in flows.values():
                flow.stop()
            local.store.close()

    def med(name: str) -> dict[str, float]:
        return {k: statistics.median(r[k] for r in rounds[name]) for k in rounds[name][0]}

    result = {
        "config": {**vars(args), **machine()},
        "rounds": rounds,
        **{name: med(name) for name in rounds},
    }
    print_tables(result)
    save_json(result, args.json)
    return result


def print_tables(r: dict) -> None:
    c, ours, jina = r["config"], r["ours"], r["jina"]
    print(
        f"\nA text search's parts, p50 ms ({c['queries']} queries x {c['rounds']} rounds per "
        f"path, medians over rounds)\n"
    )
    print(f"| part | {FLOWS['ours']} | {FLOWS['jina']} | difference |")
    print("|---|---:|---:|---:|")
    hops_ours = [k for k in ours if k.startswith("hop ")]
    hops_jina = [k for k in jina if k.startswith("hop ")]
    rows = [("client <-> gateway",) * 2, ("gateway's own work",) * 2]
    rows += list(zip(hops_ours, hops_jina, strict=True)) + [("whole query",) * 2]
    for a, b in rows:
        name = a if a == b else f"{a} / {b.split(': ')[1]}"
        print(f"| {name} | {ours[a]:.2f} | {jina[b]:.2f} | {ours[a] - jina[b]:+.2f} |")
    print("\nThe Flow's work in-process, at the same moments\n")
    print("| work | p50 ms |")
    print("|---|---:|")
    for key, name in IN_PROCESS.items():
        print(f"| {name} | {r[key]['p50']:.2f} |")


if __name__ == "__main__":
    main()
