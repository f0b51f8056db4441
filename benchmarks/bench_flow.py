"""What the Flow costs: search latency and indexing throughput, Flow vs the same work in-process.

    .venv/bin/python benchmarks/bench_flow.py                      # committed base model
    .venv/bin/python benchmarks/bench_flow.py --tower runs/demo --images 512 --queries 300
    .venv/bin/python benchmarks/bench_flow.py --model ViT-B-32 --images 64 --threads 2

Side by side, in one run, on the same towers and the same kind of store:

- text search latency, one query at a time: in-process (`TextTower.encode` + `HNSWStore.search`)
  vs end to end through `jina flow --uses flow.yml`: over gRPC with the project's client
  (`client.api.SearchClient`, one kept-open channel) and with jina's `Client` (a new channel
  per call), and over HTTP (`SearchClient`, kept-alive session); p50 / p99, and the Flow's
  overhead at p50. In-process runs twice: one query after the other (the
  baseline), and with 5 ms idle before each query, which shows what running cold costs the
  same work (in the Flow each executor idles while the others take their turn). One more
  path: jina alone, a Flow of two do-nothing executors carrying the same query and a 10-match
  answer (`jina_floor.py`), the floor under a two-hop text search. The paths take turns
  in short blocks of `--block` queries (in a shuffled order each time), so that all of them
  see the same moments of this noisy machine; queries one by one would not do, because a
  multi-threaded torch spins its threads for a while after each call, which then slows
  whichever path runs next;
- indexing throughput, images/s with the same batch size: the image encoder executor called
  in-process (and the encoder plus the store's upsert) vs the Flow fed over gRPC by
  `SearchClient.index` (a few batches in flight; target ratio >= 0.9), the three in a new
  order each round; the ratio is the median of the per-round ratios.

`--tower` serves a run folder (default: the committed base model, a ViT-Tiny-8, where the
Flow's per-document costs weigh most); `--model NAME` serves random-init towers of an open_clip
architecture instead (speed does not depend on the weights).

The machine is noisy (shared cores): each measurement is repeated `--rounds` times, in turns,
and the medians are reported (for the overheads: the median of the per-round differences).
Prints a markdown table and writes the numbers as JSON.
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
from jina_floor import passthrough_search, start_passthrough
from results import REPO, machine, save_json
from timing import Stopwatch, in_blocks, percentile

from demo import BASE_MODEL_DIR
from demo.served_flow import ServedFlow, flow_env
from imagepairs.batching import batched
from imagepairs.documents import Document
from search.encoders import ImageEncoder, TextEncoder
from search.hnsw_store import HNSWStore

# each search path's name in the table
LATENCY_NAMES = {
    "in_process": "in-process encode + knn",
    "in_process_idle": "in-process encode + knn, 5 ms idle before each query (cold)",
    "grpc": "Flow, gRPC, SearchClient (kept-open channel)",
    "grpc_jina_client": "Flow, gRPC, jina Client (new channel per call)",
    "http": "Flow, HTTP, SearchClient (kept-alive session)",
    "jina_floor": "jina alone: 2 do-nothing executors, gRPC (jina_floor.py)",
}
# the paths compared with in-process one query after the other
COMPARED_PATHS = ("in_process_idle", "grpc", "grpc_jina_client", "http", "jina_floor")
QUERY_WORDS = "red green blue small large dog cat car house tree person beach city night".split()


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """`n` random-content JPEGs (a real decode per image, like photos, just smaller)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        # smooth random colour fields: compress like photos, unlike pure noise
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        path = folder / f"{i:05d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def queries(n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(QUERY_WORDS, size=4)) for _ in range(n)]


def percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50": percentile(ms, 0.5), "p99": percentile(ms, 0.99)}


def latencies_ms(
    searchers: dict[str, Callable[[str], None]],
    texts: list[str],
    block: int,
    rng: random.Random,
    idle_s: dict[str, float] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds of every text through every search path, the paths taking turns in blocks
    of `block` texts, in an order shuffled by `rng` each time (`timing.in_blocks`)."""
    took = in_blocks(searchers, texts, block, rng, idle_s)
    return {name: [s * 1000 for s in seconds] for name, seconds in took.items()}


# --- in-process -----------------------------------------------------------------------------


class InProcess:
    """The Flow's work without the Flow: the core's encoders and store, in one process."""

    def __init__(self, tower: str, workspace: Path, threads: int):
        # the tower folders the Flow's encoders load (flow_env points them there too)
        self.image_encoder = ImageEncoder(f"{tower}/clip-vision", num_threads=threads)
        self.text_encoder = TextEncoder(f"{tower}/clip-text", num_threads=threads)
        self.store = HNSWStore(workspace)

    def index_batches(self, paths: list[Path], batch: int, store: bool) -> float:
        """images/s of the image encoder, thumbnails included (plus the store's upsert if
        `store`)."""
        with Stopwatch() as watch:
            for chunk in batched(paths, batch):
                docs = [Document(id=p.name, blob=p.read_bytes(), uri=str(p)) for p in chunk]
                self.image_encoder.embed(docs, indexing=True)  # thumbnails too, as the Flow indexes
                if store:
                    self.store.upsert(
                        [d.id for d in docs], [d.embedding for d in docs], uri=[d.uri for d in docs]
                    )
        return len(paths) / watch.seconds

    def encode(self, text: str) -> np.ndarray:
        """The query's embedding, as the text encoder computes it in the Flow."""
        doc = Document(text=text)
        self.text_encoder.embed([doc])
        return doc.embedding

    def search(self, text: str, limit: int) -> None:
        assert self.store.search(self.encode(text), limit=limit)[0]


# --- through the Flow ---------------------------------------------------------------------------


class Served(ServedFlow):
    """`jina flow --uses flow.yml` in its own process group, started and ready."""

    def __init__(
        self,
        tower: str,
        workspace: Path,
        threads: int,
        log: Path,
        cwd: Path = REPO,
        runtime: str = "torch",
    ):
        # a run folder serves both towers
        env = flow_env(tower, workspace, image_root="", torch_threads=threads, runtime=runtime)
        if Path(cwd).resolve() != REPO:
            env["PYTHONPATH"] = str(cwd)  # that checkout's packages, not this one's install
        super().__init__("flow.yml", env, log, start_timeout_s=300, cwd=cwd)
        self.grpc_port = int(env["GRPC_PORT"])
        self.start()

    def index(self, paths: list[Path], batch: int, prefix: str) -> float:
        from client.api import IndexItem, SearchClient

        items = [IndexItem(f"{prefix}{p.name}", str(p)) for p in paths]
        with SearchClient(self.grpc) as client, Stopwatch() as watch:
            outcomes = client.index(items, batch_size=batch)
        failed = [o for o in outcomes if o.error]
        if failed:
            raise RuntimeError(f"{len(failed)} images failed, e.g. {failed[0]}")
        return len(paths) / watch.seconds

    def searchers(self, limit: int) -> tuple[dict[str, Callable[[str], None]], Callable]:
        """One text query through each Flow path (clients kept open), and a closer."""
        from docarray import DocList
        from jina import Client

        from client.api import SearchClient
        from client.wire_docs import SearchDoc

        grpc, http, jina_client = (
            SearchClient(self.grpc),
            SearchClient(self.http),
            Client(host=self.grpc),
        )

        def jina_search(text: str) -> None:
            r = jina_client.post(
                "/search",
                DocList[SearchDoc]([SearchDoc(text=text)]),
                parameters={"limit": limit},
                return_type=DocList[SearchDoc],
            )
            assert r[0].error is None and r[0].matches

        def close() -> None:
            grpc.close()
            http.close()

        paths = {
            "grpc": lambda text: _assert_hits(grpc.search(text, limit=limit)),
            "grpc_jina_client": jina_search,
            "http": lambda text: _assert_hits(http.search(text, limit=limit)),
        }
        return paths, close


def _assert_hits(hits: list) -> None:
    assert hits


def random_init_towers(model: str, folder: Path) -> str:
    """A run-like folder with random-init towers of open_clip architecture `model`."""
    from finetune.artifact import save_towers
    from finetune.models import create_clip

    save_towers(create_clip(model), folder)
    return str(folder)


# --- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tower", default=str(BASE_MODEL_DIR), help="run folder (both towers)")
    p.add_argument("--model", help="serve random-init towers of this open_clip architecture")
    p.add_argument("--images", type=int, default=256, help="images to index per round")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--queries", type=int, default=200, help="search queries per round and path")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--block", type=int, default=20, help="queries per path before the next")
    p.add_argument("--threads", type=int, default=1, help="torch threads per encoder (both sides)")
    p.add_argument("--json", default="runs/bench/bench_flow.json")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "images", args.images, args.image_size)
        texts = queries(args.queries)
        if args.model:
            args.tower = random_init_towers(args.model, tmp / "towers")
        local = InProcess(args.tower, tmp / "store", args.threads)
        print(f"starting the Flow ({args.model or args.tower}) ...", file=sys.stderr)
        served = Served(args.tower, tmp / "ws", args.threads, tmp / "flow.log")
        # what jina itself costs for the two hops of a text search, at the same moments
        floor = start_passthrough(2, args.limit, tmp=tmp)
        rounds: dict[str, list] = {k: [] for k in ("inproc_enc", "inproc_enc_store", "flow_index")}
        rounds.update({key: [] for key in LATENCY_NAMES})
        searchers, close_clients = served.searchers(args.limit)
        searchers["in_process"] = lambda text: local.search(text, args.limit)
        searchers["in_process_idle"] = searchers["in_process"]
        searchers["jina_floor"], close_floor = passthrough_search(floor, args.limit)
        idle = {"in_process_idle": 0.005}
        try:
            # warm-up: first calls pay for lazy initialisation on both sides
            local.index_batches(paths[: args.batch_size], args.batch_size, store=True)
            served.index(paths[: args.batch_size], args.batch_size, prefix="warm-")
            latencies_ms(searchers, texts[:10], args.block, random.Random(-1), idle)
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
                indexers = {
                    "inproc_enc": lambda: local.index_batches(paths, args.batch_size, store=False),
                    "inproc_enc_store": lambda: local.index_batches(
                        paths, args.batch_size, store=True
                    ),
                    "flow_index": lambda r=r: served.index(paths, args.batch_size, f"r{r}-"),
                }
                # in a new order each round: no path always runs right after the same other
                for key in random.Random(r).sample(list(indexers), len(indexers)):
                    rounds[key].append(indexers[key]())
                latencies = latencies_ms(searchers, texts, args.block, random.Random(r), idle)
                for key, ms in latencies.items():
                    rounds[key].append(percentiles(ms))
        finally:
            close_clients()
            close_floor()
            floor.stop()
            served.stop()
            local.store.close()

    med = statistics.median

    def lat(key: str, q: str) -> float:
        return med(x[q] for x in rounds[key])

    result = {
        "config": {**vars(args), **machine()},
        "rounds": rounds,
        "index_images_per_s": {
            "in_process_encoder": med(rounds["inproc_enc"]),
            "in_process_encoder_and_store": med(rounds["inproc_enc_store"]),
            "flow_grpc": med(rounds["flow_index"]),
        },
        "search_latency_ms": {
            k: {"p50": lat(k, "p50"), "p99": lat(k, "p99")} for k in LATENCY_NAMES
        },
    }

    def overhead(path: str, baseline: str) -> float:
        """Median over rounds of the p50 difference within each round."""
        return med(a["p50"] - b["p50"] for a, b in zip(rounds[path], rounds[baseline], strict=True))

    result["flow_overhead_p50_ms"] = {k: overhead(k, "in_process") for k in COMPARED_PATHS}

    def ratio(baseline: str) -> float:
        """Median over rounds of the Flow's images/s over `baseline`'s, within each round."""
        return med(f / b for f, b in zip(rounds["flow_index"], rounds[baseline], strict=True))

    result["index_ratio_flow_vs_in_process"] = {
        "encoder": ratio("inproc_enc"),
        "encoder_and_store": ratio("inproc_enc_store"),
    }
    print_tables(result)
    save_json(result, args.json)
    return result


def print_tables(r: dict) -> None:
    c, s, o = r["config"], r["search_latency_ms"], r["flow_overhead_p50_ms"]
    print(
        f"\nText search, one query at a time ({c['queries']} queries x {c['rounds']} rounds, "
        f"limit {c['limit']}, medians of per-round percentiles; overheads: medians of the "
        f"per-round p50 differences)\n"
    )
    print("| path | p50 ms | p99 ms | over in-process at p50 |")
    print("|---|---:|---:|---:|")
    for key, name in LATENCY_NAMES.items():
        over = f"{o[key]:+.2f} ms" if key in o else "-"
        print(f"| {name} | {s[key]['p50']:.2f} | {s[key]['p99']:.2f} | {over} |")
    i, ratio = r["index_images_per_s"], r["index_ratio_flow_vs_in_process"]
    print(
        f"\nIndexing {c['images']} JPEGs of {c['image_size']}px, batch {c['batch_size']}, "
        f"{c['threads']} torch thread(s) per encoder (medians of {c['rounds']} rounds; "
        f"Flow / this: the median of the per-round ratios)\n"
    )
    print("| path | images/s | Flow / this |")
    print("|---|---:|---:|")
    print(f"| in-process image encoder | {i['in_process_encoder']:.1f} | {ratio['encoder']:.2f} |")
    print(
        f"| in-process image encoder + store upsert | {i['in_process_encoder_and_store']:.1f} "
        f"| {ratio['encoder_and_store']:.2f} |"
    )
    print(f"| Flow over gRPC (SearchClient.index) | {i['flow_grpc']:.1f} | 1.00 |")


if __name__ == "__main__":
    main()
