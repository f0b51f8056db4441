"""What jina itself costs per executor hop: the floor under the Flow's search latency.

    .venv/bin/python benchmarks/bench_jina_hops.py                 # 1, 2 and 3 hops
    .venv/bin/python benchmarks/bench_jina_hops.py --hops 1,2 --queries 500 --rounds 5

Starts Flows (same gateway settings as flow.yml: gRPC + HTTP) of N do-nothing executors
(`passthrough_executor.PassThrough`; the last one attaches `--limit` canned matches, so the
answer is as large as a real search's) and sends one text query at a time over the project's
gRPC client transport (one kept-open channel), like `bench_flow.py`'s main path. Reported:
p50 / p99 per N, in rounds that take turns between the Flows, medians of the rounds. The
difference from `bench_flow.py`'s Flow-vs-in-process overhead is what our executors add on top
of jina (their handlers' work and the documents' (de)serialisation).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script from anywhere

from client.served_flow import ServedFlow, free_port  # noqa: E402


def flow_yaml(hops: int, matches: int) -> dict:
    executors = [
        {
            "name": f"hop{i}",
            "uses": "PassThrough",
            "py_modules": ["benchmarks/passthrough_executor.py"],
            "uses_with": {"matches": matches if i == hops - 1 else 0},
        }
        for i in range(hops)
    ]
    return {"jtype": "Flow", "with": {"protocol": ["grpc", "http"]}, "executors": executors}


def start(hops: int, matches: int, tmp: Path) -> ServedFlow:
    yml = tmp / f"hops{hops}.yml"
    grpc_port, http_port = free_port(), free_port()
    spec = flow_yaml(hops, matches)
    spec["with"].update(port=[grpc_port, http_port], host="127.0.0.1")
    yml.write_text(yaml.safe_dump(spec, sort_keys=False))  # jina wants `jtype` first
    env = {"GRPC_PORT": str(grpc_port), "HTTP_PORT": str(http_port)}
    return ServedFlow(str(yml), env, tmp / f"hops{hops}.log", start_timeout_s=300).start()


def query_ms(flow: ServedFlow, n: int, limit: int) -> list[float]:
    from docarray import DocList

    from client.grpc_transport import GrpcTransport
    from executors.schemas import SearchDoc

    transport, out = GrpcTransport(flow.grpc.removeprefix("grpc://")), []
    try:
        for i in range(n):
            start = time.perf_counter()
            docs = DocList[SearchDoc]([SearchDoc(text=f"query {i}")])
            [answer] = transport.post("/search", docs, parameters={"limit": limit})
            out.append((time.perf_counter() - start) * 1000)
            assert len(answer.matches) == limit
    finally:
        transport.close()
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hops", default="1,2,3", help="comma-separated numbers of executors")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--limit", type=int, default=10, help="canned matches in each answer")
    args = p.parse_args(argv)
    hops = [int(h) for h in args.hops.split(",")]
    rounds: dict[int, list[dict[str, float]]] = {h: [] for h in hops}
    with tempfile.TemporaryDirectory() as tmp:
        flows = {h: start(h, args.limit, Path(tmp)) for h in hops}
        try:
            for flow in flows.values():
                query_ms(flow, 20, args.limit)  # warm-up
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
                for h, flow in flows.items():
                    ms = query_ms(flow, args.queries, args.limit)
                    rounds[h].append({"p50": np.percentile(ms, 50), "p99": np.percentile(ms, 99)})
        finally:
            for flow in flows.values():
                flow.stop()
    result = {
        h: {q: statistics.median(x[q] for x in rs) for q in ("p50", "p99")}
        for h, rs in rounds.items()
    }
    print(
        f"\nA query through N do-nothing executors "
        f"({args.queries} queries x {args.rounds} rounds)\n"
    )
    print("| executors | p50 ms | p99 ms |")
    print("|---:|---:|---:|")
    for h, r in result.items():
        print(f"| {h} | {r['p50']:.2f} | {r['p99']:.2f} |")
    return result


if __name__ == "__main__":
    main()
