"""Benchmark filtered search: HNSWStore with a tag filter vs exact filtered brute force.

Data: ``--n`` clustered unit vectors (`bench_index.clustered_data`), each with a tag ``sel``
drawn at random, independent of the clusters, so that ``{"sel": {"$lt": f}}`` keeps a known
fraction ``f`` of the items (50%, 10%, 1%, 0.1%). For each fraction, side by side:

* recall@k of the filtered store search against exact filtered brute force;
* QPS of the filtered store search (its cost model picks a filtered graph walk or an exact scan
  of the matching vectors), of the unfiltered store search, and of numpy brute force over the
  whole index with the filter applied as a mask (what one would do without the store's filter).

The contenders are timed in alternation (`timing.timings`: each repeat runs one after the
other, all see the same load) and medians of ``--repeats`` are reported. Queries go in one
batch of ``--queries`` rows; ``--single`` also times one query per call. Example (quick)::

    python benchmarks/bench_filter.py --n 20000 --queries 200 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_index import BATCH, add_index_arguments, clustered_data, recall_at_k
from results import command_line, save_json
from timing import timings

from search.hnsw_store import HNSWStore

FRACTIONS = (0.5, 0.1, 0.01, 0.001)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_index_arguments(parser)
    parser.add_argument("--ef", type=int, default=64, help="the store's search ef")
    parser.add_argument("--repeats", type=int, default=5, help="timing runs (median reported)")
    parser.add_argument("--query-threads", type=int, default=2, help="the store's num_threads")
    parser.add_argument("--single", type=int, default=0, help="also time N one-query calls")
    parser.add_argument("--workdir", help="where the store is built (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write all results as JSON here")
    return parser.parse_args(argv)


def masked_brute_force(
    data: np.ndarray, queries: np.ndarray, keep: np.ndarray, k: int
) -> np.ndarray:
    """Exact top-k row indices among the rows where ``keep`` (at least k of them), best first:
    a matmul over every row, the non-matching ones masked out."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        sims = queries[start : start + 256] @ data.T
        sims[:, ~keep] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start : start + 256] = np.take_along_axis(top, order, axis=1)
    return out


def build_store(data: np.ndarray, sel: np.ndarray, args, path: Path) -> HNSWStore:
    store = HNSWStore(path, dim=args.dim, M=args.M, ef_construction=args.ef_construction)
    ids = [str(i) for i in range(len(data))]
    for begin in range(0, len(data), BATCH):
        end = begin + BATCH
        tags = [{"sel": float(v)} for v in sel[begin:end]]
        errors = store.upsert(ids[begin:end], data[begin:end], tags=tags)
        assert not any(errors), errors
    store.ef = args.ef
    store.num_threads = args.query_threads
    return store


def measure(store, data, queries, sel, args) -> list[dict[str, Any]]:
    rows = []
    one = queries[: args.single]
    for fraction in FRACTIONS:
        flt = {"sel": {"$lt": fraction}}
        keep = sel < fraction
        k = min(args.k, int(keep.sum()))  # the hits a query can have
        exact = masked_brute_force(data, queries, keep, args.k)[:, :k]
        found = store.search(queries, limit=args.k, filter=flt)
        found_ids = np.array([[int(h.id) for h in hits] for hits in found]).reshape(-1, k)
        plan = store._plan(len(queries), int(keep.sum()), args.ef)
        fns = {
            "filtered": lambda flt=flt: store.search(queries, limit=args.k, filter=flt),
            "unfiltered": lambda: store.search(queries, limit=args.k),
            "numpy masked": lambda keep=keep: masked_brute_force(data, queries, keep, args.k),
        }
        if args.single:
            fns["filtered, 1 query/call"] = lambda flt=flt: [
                store.search(q, limit=args.k, filter=flt) for q in one
            ]
        t = timings(fns, args.repeats)
        row = {
            "fraction": fraction,
            "matching": int(keep.sum()),
            "plan": plan,
            "recall": recall_at_k(found_ids, exact),
            **{f"qps {name}": len(queries) / v["wall"] for name, v in t.items()},
        }
        if args.single:
            row["qps filtered, 1 query/call"] = len(one) / t["filtered, 1 query/call"]["wall"]
        rows.append(row)
        log(f"{fraction}: {row}")
    return rows


def markdown(results: dict[str, Any]) -> str:
    a = results["args"]
    lines = [
        f"`{results['command']}`",
        "",
        f"n={a['n']} dim={a['dim']} queries={a['queries']} (one batch) k={a['k']} M={a['M']} "
        f"ef_construction={a['ef_construction']} ef={a['ef']} store threads={a['query_threads']}"
        f"; medians of {a['repeats']} alternated runs; TagIndex {results['tag_index_bytes']:,} "
        f"bytes ({results['tag_index_bytes'] / a['n']:.0f} per item, one numeric tag)",
        "",
        f"| matching | path | recall@{a['k']} | filtered QPS | unfiltered QPS | filtered / "
        "unfiltered | numpy masked QPS | filtered / numpy |"
        + (" 1 query/call QPS |" if a["single"] else ""),
        "|---:|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if a["single"] else ""),
    ]
    for r in results["rows"]:
        f, u, m = r["qps filtered"], r["qps unfiltered"], r["qps numpy masked"]
        line = (
            f"| {r['fraction']:.1%} ({r['matching']:,}) | {r['plan']} | {r['recall']:.3f} "
            f"| {f:,.0f} | {u:,.0f} | {f / u:.2f} | {m:,.0f} | {f / m:.1f}x |"
        )
        if a["single"]:
            line += f" {r['qps filtered, 1 query/call']:,.0f} |"
        lines.append(line)
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    command = command_line(__file__, argv)
    log(f"generating {args.n} x {args.dim} clustered vectors")
    data, queries = clustered_data(args)
    sel = np.random.default_rng(args.seed + 1).random(args.n)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        log("building HNSWStore")
        store = build_store(data, sel, args, Path(tmp) / "store")
        log("queries")
        rows = measure(store, data, queries, sel, args)
        tag_bytes = store._tags.nbytes()
        store.close()
    results = {
        "command": command,
        "args": vars(args),
        "rows": rows,
        "tag_index_bytes": tag_bytes,
    }
    print(markdown(results))
    if args.out:
        save_json(results, args.out)
    return results


if __name__ == "__main__":
    main()
