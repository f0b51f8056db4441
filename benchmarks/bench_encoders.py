"""How fast the CLIP encoders run on this machine's CPU, and how close to its matmul peak.

    .venv/bin/python benchmarks/bench_encoders.py                    # ViT-B-32, random init
    .venv/bin/python benchmarks/bench_encoders.py --batch-size 32 --repeats 5 --threads 2

For ViT-B-32 (random weights: speed does not depend on them):

- this machine's fp32 peak, measured in the same run: the best of several large `torch.mm`;
- images/s and texts/s of the vision / text tower's forward pass on ready tensors, the model
  FLOPs per item (counted by `torch.utils.flop_counter`), the achieved GFLOP/s, and that as a
  fraction of the measured peak;
- images/s and texts/s end to end through the executors (`CLIPImageEncoder` from JPEG bytes:
  decode, resize, forward; `CLIPTextEncoder` from strings: tokenize, forward).

Each number is the median of `--repeats` timed runs after a warm-up (the machine is noisy).
Prints markdown tables and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402
from results import machine, save_json  # noqa: E402

PEAK_REPEATS = 10
WORDS = "a photo of the red blue small large dog cat car on in with beach street night".split()


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_gflops(n: int, repeats: int) -> float:
    """Best fp32 GFLOP/s of an n x n @ n x n product (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_once(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def flops_per_item(module: torch.nn.Module, batch: torch.Tensor) -> float:
    """Model FLOPs per item (multiply and add counted as 2).

    Counted with autograd on: under inference mode `nn.MultiheadAttention` takes its fused
    fast path, which the flop counter does not see (it would miss a third of ViT-B-32).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        module(batch)
    return counter.get_total_flops() / len(batch)


def jpegs(n: int, size: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
            (size, size), Image.BICUBIC
        )
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def texts(n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 16)))) for _ in range(n)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random init)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--image-size", type=int, default=320, help="JPEG size for the executor run")
    p.add_argument("--json", default="runs/bench/bench_encoders.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from docarray import DocList

    from client.wire import SearchDoc
    from executors.encoders import CLIPImageEncoder, CLIPTextEncoder
    from finetune.artifact import save_towers
    from finetune.models import create_clip

    # the peak is measured before and after the models (best of each): on a shared machine a
    # single measurement may fall into a busy moment and understate it
    peak_before = matmul_peak_gflops(args.matmul_size, PEAK_REPEATS)

    with tempfile.TemporaryDirectory() as tmp:
        save_towers(create_clip(args.model), tmp)  # then load each tower alone, as served
        image_encoder = CLIPImageEncoder(tower=f"{tmp}/clip-vision", num_threads=args.threads)
        text_encoder = CLIPTextEncoder(tower=f"{tmp}/clip-text", num_threads=args.threads)

    n = args.batch_size
    vision, text = image_encoder.tower, text_encoder.tower
    size = vision.config["preprocess_cfg"]["size"]
    size = size if isinstance(size, int) else size[0]
    pixels = torch.randn(n, 3, size, size)
    tokens = text.tokenizer(texts(n))
    image_bytes, strings = jpegs(n, args.image_size), texts(n, seed=2)

    def model_forward(tower, batch):
        def run():
            with torch.inference_mode():
                tower(batch)

        return run

    def executor_run(encoder, make_docs):
        return lambda: encoder.encode(DocList[SearchDoc](make_docs()))

    rows = {}
    for name, tower, batch, make_docs, encoder in (
        ("image", vision, pixels, lambda: [SearchDoc(blob=b) for b in image_bytes], image_encoder),
        ("text", text, tokens, lambda: [SearchDoc(text=t) for t in strings], text_encoder),
    ):
        print(f"timing the {name} tower ...", file=sys.stderr)
        flops = flops_per_item(tower, batch)
        model_s = timed(model_forward(tower, batch), args.repeats)
        executor_s = timed(executor_run(encoder, make_docs), args.repeats)
        achieved = flops * n / model_s / 1e9
        rows[name] = {
            "gflops_per_item": flops / 1e9,
            "model_items_per_s": n / model_s,
            "achieved_gflops": achieved,
            "executor_items_per_s": n / executor_s,
        }

    peak_after = matmul_peak_gflops(args.matmul_size, PEAK_REPEATS)
    peak = max(peak_before, peak_after)
    for row in rows.values():
        row["fraction_of_peak"] = row["achieved_gflops"] / peak
    result = {
        "config": {**vars(args), **machine()},
        "matmul_peak_gflops": peak,
        "matmul_peak_gflops_before_after": [peak_before, peak_after],
        "towers": rows,
    }
    print_tables(result)
    save_json(result, args.json)
    return result


def print_tables(r: dict) -> None:
    c = r["config"]
    print(
        f"\n{c['model']} (random init) on CPU, {c['threads']} torch threads, batch "
        f"{c['batch_size']}, median of {c['repeats']}; fp32 matmul peak measured in this run: "
        f"{r['matmul_peak_gflops']:.1f} GFLOP/s ({c['matmul_size']}^3 torch.mm, best of "
        f"{PEAK_REPEATS} before and {PEAK_REPEATS} after the models)\n"
    )
    print(
        "| tower | GFLOP / item | model items/s | achieved GFLOP/s | of peak "
        "| executor items/s (end to end) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in r["towers"].items():
        print(
            f"| {name} | {t['gflops_per_item']:.2f} | {t['model_items_per_s']:.1f} | "
            f"{t['achieved_gflops']:.1f} | {t['fraction_of_peak']:.0%} | "
            f"{t['executor_items_per_s']:.1f} |"
        )
    print(
        f"\nexecutor end to end: images from {c['image_size']}px JPEG bytes (decode, resize, "
        "forward), texts from strings (tokenize, forward)"
    )


if __name__ == "__main__":
    main()
