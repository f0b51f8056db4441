"""Benchmark the vector index: exact numpy search vs raw hnswlib vs our durable HNSWStore.

Data: ``--n`` unit vectors of dimension ``--dim`` drawn around ``--clusters`` random unit centres
(Gaussian noise whose norm is about ``--spread`` times the centre's, then normalised) and
``--queries`` queries from the same distribution, so the neighbourhoods look like embeddings
rather than uniform noise (on which every method finds nearly equidistant neighbours).

Reported in one run, side by side:

* numpy brute force: exact top-k by batched matmul + argpartition (the ground truth) and its QPS;
* raw hnswlib (same ``M``, ``ef_construction``): build time, then recall@k and QPS for each ef;
* HNSWStore at the same parameters: build time (SQLite commits and snapshots included),
  recall@k, QPS and its ratio to raw hnswlib, plus QPS of single-query calls (a service's
  case). The store builds its graph batch by batch, as a service does, so its graph is not the
  one raw hnswlib builds in one call; a third column times raw `knn_query` on the store's own
  graph, which separates the wrapper's cost (locking, checks, the hits' ids and fields, Python
  result objects) from the difference between two graphs;
* memory per vector: RSS growth while building / n, beside hnswlib's own accounting
  (`hnswlib_bytes_per_vector`), and our on-disk bytes per vector (SQLite rows, snapshot).

The machine is shared and noisy, so raw hnswlib and HNSWStore queries are timed in alternation
(each repeat runs one then the other, both see the same load) and medians of ``--repeats`` are
reported, by wall clock and by process CPU time; the QPS ratio is given for both, the CPU one
being the robust one. Queries run with ``--query-threads`` hnswlib threads (default 1, so CPU
time is the query's own work); builds use all cores. Example::

    python benchmarks/bench_index.py --n 20000 --out results.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
from results import save_json
from timing import Stopwatch, timings

from search.hnsw_store import HNSWStore

BATCH = 10_000  # vectors per HNSWStore.upsert call while building


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    """The data set and graph options this benchmark and bench_filter.py share."""
    parser.add_argument("--n", type=int, default=100_000, help="indexed vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm / centre norm")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (recall@k)")
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_index_arguments(parser)
    parser.add_argument("--efs", default="16,24,28,32,64,128,256", help="comma-separated ef values")
    parser.add_argument("--repeats", type=int, default=5, help="timing runs (median reported)")
    parser.add_argument("--query-threads", type=int, default=1)
    parser.add_argument("--single-queries", type=int, default=200, help="for batch-1 QPS")
    parser.add_argument("--workdir", help="where the store is built (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write all results as JSON here")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------- data and measurements


def clustered_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) data and (queries, dim) queries, float32 unit rows, around shared centres."""
    rng = np.random.default_rng(args.seed)
    centres = _normalise(rng.standard_normal((args.clusters, args.dim), dtype=np.float32))
    noise_scale = args.spread / math.sqrt(args.dim)  # noise norm ~ spread

    def sample(n: int) -> np.ndarray:
        out = np.empty((n, args.dim), dtype=np.float32)
        for start in range(0, n, 20_000):  # chunks keep the temporaries small
            m = min(20_000, n - start)
            noise = rng.standard_normal((m, args.dim), dtype=np.float32) * noise_scale
            out[start : start + m] = centres[rng.integers(0, args.clusters, m)] + noise
        return _normalise(out)

    return sample(args.n), sample(args.queries)


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def rss_bytes() -> int:
    """Resident set size now (Linux), in bytes, after handing freed heap back to the OS (so
    the delta counts what is live, not what glibc keeps from the build's temporaries)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k found, over queries."""
    hits = sum(len(set(f) & set(e)) for f, e in zip(found.tolist(), exact.tolist(), strict=True))
    return hits / exact.size


def hnswlib_bytes_per_vector(dim: int, M: int) -> float:
    """hnswlib's memory per element, from its data layout (hnswalg.h, 0.8).

    Level 0 block: vector ``dim*4`` + link count 4 + ``2M`` links ``*4`` + label 8; per element
    also a ``linkLists_`` pointer 8, an ``element_levels_`` int 4, a ``std::mutex`` 40 in
    ``link_list_locks_`` and a ``label_lookup_`` hash-map node + bucket (~40); upper levels hold
    ``4 + M*4`` bytes per level, and an element has ``1/(M-1)`` upper levels on average
    (level ~ floor(-ln U * 1/ln M)).
    """
    level0 = dim * 4 + 4 + 2 * M * 4 + 8
    per_element = 8 + 4 + 40 + 40
    upper = (4 + M * 4) / (M - 1)
    return level0 + per_element + upper


# ---------------------------------------------------------------------- the three methods


def brute_force(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by cosine (rows are unit vectors), best first."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        sims = queries[start : start + 256] @ data.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start : start + 256] = np.take_along_axis(top, order, axis=1)
    return out


def build_hnswlib(data: np.ndarray, args: argparse.Namespace) -> tuple[hnswlib.Index, dict]:
    before = rss_bytes()
    with Stopwatch() as build:
        index = hnswlib.Index(space="cosine", dim=args.dim)
        index.init_index(max_elements=len(data), M=args.M, ef_construction=args.ef_construction)
        index.add_items(data, np.arange(len(data)))
    rss = (rss_bytes() - before) / len(data)
    return index, {"build_s": build.seconds, "rss_bytes_per_vector": rss}


def build_store(data: np.ndarray, args: argparse.Namespace, path: Path) -> tuple[HNSWStore, dict]:
    before = rss_bytes()
    with Stopwatch() as build:
        store = HNSWStore(path, dim=args.dim, M=args.M, ef_construction=args.ef_construction)
        ids = [str(i) for i in range(len(data))]
        for begin in range(0, len(data), BATCH):
            errors = store.upsert(ids[begin : begin + BATCH], data[begin : begin + BATCH])
            assert not any(errors), errors
    rss = (rss_bytes() - before) / len(data)
    return store, {"build_s": build.seconds, "rss_bytes_per_vector": rss}


def compare_queries(
    index: hnswlib.Index, store: HNSWStore, queries: np.ndarray, exact: np.ndarray, args
) -> list[dict[str, Any]]:
    """Recall and QPS of both at each ef, timed in alternation."""
    store.num_threads = args.query_threads
    rows = []
    for ef in args.ef_list:
        index.set_ef(max(ef, args.k))

        def raw(ef=ef) -> np.ndarray:
            return index.knn_query(queries, k=args.k, num_threads=args.query_threads)[0]

        def ours(ef=ef) -> list:
            return store.search(queries, limit=args.k, ef=ef)

        def ours_graph(ef=ef) -> np.ndarray:
            graph = store._index  # the store's own graph, queried raw
            graph.set_ef(max(ef, args.k))
            return graph.knn_query(queries, k=args.k, num_threads=args.query_threads)[0]

        times = timings(
            {"hnswlib": raw, "HNSWStore": ours, "store graph": ours_graph}, args.repeats
        )
        found = np.array([[int(hit.id) for hit in hits] for hits in ours()])
        recalls = {"hnswlib": recall_at_k(raw(), exact), "HNSWStore": recall_at_k(found, exact)}
        recalls["store graph"] = recalls["HNSWStore"]
        for method, t in times.items():
            rows.append(
                {
                    "method": method,
                    "ef": ef,
                    "recall": recalls[method],
                    "qps": len(queries) / t["wall"],
                    "qps_cpu": len(queries) / t["cpu"],
                }
            )
    return rows


def compare_single_queries(index, store, queries, args) -> dict[str, dict[str, float]]:
    """QPS of one query per call at ef=64 (per-call overheads dominate here)."""
    one = queries[: args.single_queries]
    index.set_ef(64)
    times = timings(
        {
            "hnswlib": lambda: [index.knn_query(q, k=args.k, num_threads=1) for q in one],
            "HNSWStore": lambda: [store.search(q, limit=args.k, ef=64) for q in one],
        },
        args.repeats,
    )
    return {
        m: {"qps": len(one) / t["wall"], "qps_cpu": len(one) / t["cpu"]} for m, t in times.items()
    }


def _size(paths) -> int:
    return sum(p.stat().st_size for p in paths)


# ---------------------------------------------------------------------- report


def markdown(results: dict[str, Any]) -> str:
    args, rows, build, single = (results[k] for k in ("args", "rows", "build", "single_query"))
    k = args["k"]
    raw = {r["ef"]: r for r in rows if r["method"] == "hnswlib"}
    ours = {r["ef"]: r for r in rows if r["method"] == "HNSWStore"}
    graph = {r["ef"]: r for r in rows if r["method"] == "store graph"}
    lines = [
        f"n={args['n']} dim={args['dim']} queries={args['queries']} clusters={args['clusters']} "
        f"spread={args['spread']} M={args['M']} ef_construction={args['ef_construction']} "
        f"query threads={args['query_threads']}; medians of {args['repeats']} alternated runs",
        "",
        f"numpy brute force, exact top-{k} (BLAS threads): {results['brute_force_qps']:,.0f} QPS",
        "",
        f"| ef | hnswlib recall@{k} | hnswlib QPS | HNSWStore recall@{k} | HNSWStore QPS "
        f"| ours / numpy | ours / hnswlib (wall) | ours / hnswlib (CPU) | ours / store's graph "
        "queried raw (wall) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    numpy_qps = results["brute_force_qps"]
    for ef, r in raw.items():
        o, g = ours[ef], graph[ef]
        lines.append(
            f"| {ef} | {r['recall']:.3f} | {r['qps']:,.0f} | {o['recall']:.3f} | {o['qps']:,.0f} "
            f"| {o['qps'] / numpy_qps:.1f}x | {o['qps'] / r['qps']:.2f} "
            f"| {o['qps_cpu'] / r['qps_cpu']:.2f} | {o['qps'] / g['qps']:.2f} |"
        )
    raw_b, our_b, raw_s, our_s = build["hnswlib"], build["HNSWStore"], *single.values()
    lines += [
        "",
        "| | hnswlib | HNSWStore |",
        "|---|---:|---:|",
        f"| build s (all cores) | {raw_b['build_s']:.1f} | {our_b['build_s']:.1f} |",
        f"| one query per call, ef=64: QPS (CPU-time QPS) | {raw_s['qps']:,.0f} "
        f"({raw_s['qps_cpu']:,.0f}) | {our_s['qps']:,.0f} ({our_s['qps_cpu']:,.0f}) |",
        f"| memory: RSS delta / n, bytes | {raw_b['rss_bytes_per_vector']:,.0f} "
        f"| {our_b['rss_bytes_per_vector']:,.0f} |",
        f"| memory: formula (hnswlib_bytes_per_vector), bytes | {results['formula']:,.0f} | |",
        f"| disk: SQLite / n, bytes | | {our_b['sqlite_bytes_per_vector']:,.0f} |",
        f"| disk: graph snapshot / n, bytes | | {our_b['snapshot_bytes_per_vector']:,.0f} |",
    ]
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.ef_list = [int(e) for e in args.efs.split(",")]
    log(f"generating {args.n} x {args.dim} clustered vectors")
    data, queries = clustered_data(args)
    log("numpy brute force")
    exact = brute_force(data, queries, args.k)
    brute = timings(
        {"exact": lambda: brute_force(data, queries, args.k)}, max(1, args.repeats // 2)
    )
    log("building raw hnswlib")
    index, raw_build = build_hnswlib(data, args)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        log("building HNSWStore")
        store, our_build = build_store(data, args, Path(tmp) / "store")
        log("queries")
        rows = compare_queries(index, store, queries, exact, args)
        single = compare_single_queries(index, store, queries, args)
        store.close()
        for name, pattern in (("sqlite", "store.sqlite*"), ("snapshot", "index-*.bin")):
            size = _size((Path(tmp) / "store").glob(pattern))
            our_build[f"{name}_bytes_per_vector"] = size / args.n
    results = {
        "args": {k: v for k, v in vars(args).items() if k != "ef_list"},
        "brute_force_qps": len(queries) / brute["exact"]["wall"],
        "rows": rows,
        "single_query": single,
        "build": {"hnswlib": raw_build, "HNSWStore": our_build},
        "formula": hnswlib_bytes_per_vector(args.dim, args.M),
    }
    print(markdown(results))
    if args.out:
        save_json(results, args.out)
    return results


if __name__ == "__main__":
    main()
