"""This checkout's Flow against another commit's, side by side: search latency and indexing.

    .venv/bin/python benchmarks/bench_flow_ab.py --against 3e2c563
    .venv/bin/python benchmarks/bench_flow_ab.py --against HEAD~1 --rounds 8 --queries 300
    .venv/bin/python benchmarks/bench_flow_ab.py --against HEAD~1 --protocol http

Checks the commit out into a temporary git worktree and serves both Flows (`flow.yml`, the
committed base model or `--tower`, 1 torch thread per encoder) at once, from this checkout's
virtual environment. Both are driven by this checkout's client, so what differs is the
server side: the executors, the Flow YAML, the gateway modules. Each round sends the text
queries to both Flows in blocks of `--block`, taking turns, then indexes the same images into
each, the order alternating from round to round. On this noisy machine a change of a few
percent only shows this way: reported are each Flow's medians and the median over rounds of
the per-round difference (search p50) and ratio (indexing images/s).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_flow import Served, latencies_ms, make_images, percentiles, queries
from results import REPO
from timing import alternating

from demo import BASE_MODEL_DIR

SIDES = ("this", "other")


def worktree(commit: str, folder: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), commit],
        check=True,
        capture_output=True,
    )
    return folder


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", required=True, help="the commit to compare with (any git rev)")
    p.add_argument("--tower", default=str(BASE_MODEL_DIR), help="run folder (both towers)")
    p.add_argument("--images", type=int, default=256, help="images to index per round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--queries", type=int, default=200, help="search queries per round and Flow")
    p.add_argument("--block", type=int, default=20, help="queries per Flow before the other")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1, help="torch threads per encoder")
    p.add_argument(
        "--protocol",
        default="grpc",
        choices=("grpc", "http"),
        help="what the searches go through (the client's kept-open channel or session)",
    )
    p.add_argument(
        "--runtime",
        default="torch",
        choices=("torch", "onnx", "onnx-int8"),
        help="this checkout's encoders' runtime (the towers must be exported for onnx ones)",
    )
    args = p.parse_args(argv)

    from client.api import SearchClient

    p50: dict[str, list[float]] = {side: [] for side in SIDES}
    images_per_s: dict[str, list[float]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        other = worktree(args.against, tmp / "other")
        try:
            paths = make_images(tmp / "images", args.images, 256)
            texts = queries(args.queries)
            print(f"starting both Flows (this checkout, {args.against}) ...", file=sys.stderr)
            flows = {
                "this": Served(
                    args.tower,
                    tmp / "ws-this",
                    args.threads,
                    tmp / "this.log",
                    runtime=args.runtime,
                ),
                "other": Served(
                    args.tower, tmp / "ws-other", args.threads, tmp / "other.log", cwd=other
                ),
            }
            clients = {
                side: SearchClient(flow.grpc if args.protocol == "grpc" else flow.http)
                for side, flow in flows.items()
            }
            try:
                searchers = {
                    side: (lambda text, c=client: c.search(text, limit=args.limit))
                    for side, client in clients.items()
                }
                latencies_ms(searchers, texts[:20], args.block, random.Random(-1))  # warm-up
                for flow in flows.values():
                    flow.index(paths[: args.batch_size], args.batch_size, prefix="warm-")
                for r in range(args.rounds):
                    print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
                    for side, ms in latencies_ms(
                        searchers, texts, args.block, random.Random(r)
                    ).items():
                        p50[side].append(percentiles(ms)["p50"])
                    for side in alternating(SIDES, r):
                        images_per_s[side].append(
                            flows[side].index(paths, args.batch_size, prefix=f"r{r}-")
                        )
            finally:
                for client in clients.values():
                    client.close()
                for flow in flows.values():
                    flow.stop()
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)],
                check=False,
                capture_output=True,
            )

    med = statistics.median
    result = {
        "against": args.against,
        "protocol": args.protocol,
        "search_p50_ms": {side: med(p50[side]) for side in SIDES},
        "search_p50_difference_ms": med(a - b for a, b in zip(*p50.values(), strict=True)),
        "search_p50_ratio": med(b / a for a, b in zip(*p50.values(), strict=True)),
        "index_images_per_s": {side: med(images_per_s[side]) for side in SIDES},
        "index_ratio": med(a / b for a, b in zip(*images_per_s.values(), strict=True)),
        "rounds": {"search_p50_ms": p50, "index_images_per_s": images_per_s},
    }
    print(
        f"\nThis checkout's Flow vs {args.against}'s ({args.rounds} rounds; {args.queries} "
        f"queries and {args.images} images per round and Flow)\n"
    )
    print(
        f"| | this checkout ({args.runtime}) | {args.against} | this vs that (median per round) |"
    )
    print("|---|---:|---:|---:|")
    s, i = result["search_p50_ms"], result["index_images_per_s"]
    print(
        f"| text search p50, ms ({args.protocol}) | {s['this']:.2f} | {s['other']:.2f} "
        f"| {result['search_p50_difference_ms']:+.2f} ms; "
        f"that / this {result['search_p50_ratio']:.2f}x |"
    )
    print(
        f"| indexing, images/s | {i['this']:.1f} | {i['other']:.1f} "
        f"| {result['index_ratio']:.3f}x |"
    )
    return result


if __name__ == "__main__":
    main()
