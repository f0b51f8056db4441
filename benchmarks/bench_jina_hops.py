"""What jina itself costs per executor hop: the floor under the Flow's search latency.

    .venv/bin/python benchmarks/bench_jina_hops.py                 # 1, 2 and 3 hops
    .venv/bin/python benchmarks/bench_jina_hops.py --hops 1,2 --queries 500 --rounds 5

Starts Flows (same gateway settings as flow.yml: gRPC + HTTP) of N do-nothing executors
(`passthrough_executor.PassThrough`; the last one attaches `--limit` canned matches, so the
answer is as large as a real search's) and sends one text query at a time over the project's
gRPC client transport (one kept-open channel), like `bench_flow.py`'s main path. Each N runs
twice: with jina's gateway as it is, and with `executors.gateway_speedups` loaded as
flow.yml loads it (a lighter per-request copy of the gateway's executor graph). Reported:
p50 / p99 per Flow, in rounds that take turns between the Flows, medians of the rounds. The
difference from `bench_flow.py`'s Flow-vs-in-process overhead is what our executors add on top
of jina (their handlers' work and the documents' (de)serialisation).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script from anywhere

from taking_turns import in_blocks_ms  # noqa: E402

from client.served_flow import ServedFlow, free_port  # noqa: E402

SPEEDUPS_MODULE = "executors.gateway_speedups"
VARIANTS = (False, True)  # without, with SPEEDUPS_MODULE


def flow_yaml(hops: int, matches: int, speedups: bool) -> dict:
    executors = [
        {
            "name": f"hop{i}",
            "uses": "PassThrough",
            "py_modules": ["benchmarks/passthrough_executor.py"],
            "uses_with": {"matches": matches if i == hops - 1 else 0},
        }
        for i in range(hops)
    ]
    spec = {"jtype": "Flow", "with": {"protocol": ["grpc", "http"]}, "executors": executors}
    if speedups:
        spec["py_modules"] = [SPEEDUPS_MODULE]  # as flow.yml does, before `with`
        spec = {k: spec[k] for k in ("jtype", "py_modules", "with", "executors")}
    return spec


def start_passthrough(hops: int, matches: int, speedups: bool, tmp: Path) -> ServedFlow:
    """A started Flow of `hops` do-nothing executors, the last answering `matches` matches."""
    name = f"hops{hops}{'-speedups' if speedups else ''}"
    yml = tmp / f"{name}.yml"
    grpc_port, http_port = free_port(), free_port()
    spec = flow_yaml(hops, matches, speedups)
    spec["with"].update(port=[grpc_port, http_port], host="127.0.0.1")
    yml.write_text(yaml.safe_dump(spec, sort_keys=False))  # jina wants `jtype` first
    env = {"GRPC_PORT": str(grpc_port), "HTTP_PORT": str(http_port)}
    return ServedFlow(str(yml), env, tmp / f"{name}.log", start_timeout_s=300).start()


def passthrough_search(flow: ServedFlow, limit: int) -> tuple[Callable[[str], None], Callable]:
    """One text query through `flow` (a kept-open channel, as `SearchClient` has), and a closer."""
    from docarray import DocList

    from client.grpc_transport import GrpcTransport
    from executors.schemas import SearchDoc

    transport = GrpcTransport(flow.grpc.removeprefix("grpc://"))

    def search(text: str) -> None:
        docs = DocList[SearchDoc]([SearchDoc(text=text)])
        [answer] = transport.post("/search", docs, parameters={"limit": limit})
        assert len(answer.matches) == limit

    return search, transport.close


def query_ms(flows: dict[str, ServedFlow], n: int, limit: int, seed: int) -> dict[str, list]:
    """`n` queries to each Flow, taking turns query by query; ms per query."""
    searchers, closers = {}, []
    for name, flow in flows.items():
        searchers[name], close = passthrough_search(flow, limit)
        closers.append(close)
    try:
        texts = [f"query {i}" for i in range(n)]
        return in_blocks_ms(searchers, texts, 1, random.Random(seed))
    finally:
        for close in closers:
            close()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hops", default="1,2,3", help="comma-separated numbers of executors")
    p.add_argument("--queries", type=int, default=300, help="queries per Flow and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--limit", type=int, default=10, help="canned matches in each answer")
    args = p.parse_args(argv)
    variants = [(h, copy) for h in (int(h) for h in args.hops.split(",")) for copy in VARIANTS]
    rounds: dict[tuple, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        flows: dict[tuple, ServedFlow] = {}
        try:
            for hops, speedups in variants:
                flows[hops, speedups] = start_passthrough(hops, args.limit, speedups, Path(tmp))
            by_name = {f"{h}-{c}": flow for (h, c), flow in flows.items()}
            query_ms(by_name, 20, args.limit, seed=-1)  # warm-up
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
                ms = query_ms(by_name, args.queries, args.limit, seed=r)
                for h, c in variants:
                    ms_hc = ms[f"{h}-{c}"]
                    rounds[h, c].append(
                        {"p50": np.percentile(ms_hc, 50), "p99": np.percentile(ms_hc, 99)}
                    )
        finally:
            for flow in flows.values():
                flow.stop()
    result = {
        v: {q: statistics.median(x[q] for x in rs) for q in ("p50", "p99")}
        for v, rs in rounds.items()
    }
    print(
        f"\nA query through N do-nothing executors ({args.queries} queries x {args.rounds} "
        f"rounds per Flow, all Flows taking turns query by query)\n"
    )
    print("| executors | jina as is: p50 ms | p99 ms | with gateway_speedups: p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|")
    for h in dict.fromkeys(h for h, _ in variants):
        plain, light = result[h, False], result[h, True]
        print(
            f"| {h} | {plain['p50']:.2f} | {plain['p99']:.2f} "
            f"| {light['p50']:.2f} | {light['p99']:.2f} |"
        )
    named = {False: "as is", True: "with speedups"}
    return {f"{h} executors, {named[c]}": r for (h, c), r in result.items()}


if __name__ == "__main__":
    main()
