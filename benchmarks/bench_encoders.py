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

Then, side by side in the same run (rounds alternate between the contestants; medians), the
runtimes (`--runtimes-only` skips the part above):

- text query encode latency at batch 1 (tokenize + forward, one query string per call, p50 and
  p90; turns of `--query-block` queries per runtime): the 77-token torch TextTower path (as
  before real-length text) vs the real-length torch tower vs ONNX Runtime fp32 vs ONNX Runtime
  int8 (`python -m finetune export --onnx --int8`);
- image encode images/s at batch `--image-batch` on ready pixel tensors: open_clip's own
  `model.encode_image` on the full CLIP in-process vs our torch tower vs onnx vs onnx-int8;
- cosine of the onnx / onnx-int8 embeddings to the torch ones (texts and images), and the
  export time and file sizes.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from results import command_line, machine, save_json
from timing import in_blocks, in_rounds, median_seconds, percentile, seconds

PEAK_REPEATS = 10
WORDS = "a photo of the red blue small large dog cat car on in with beach street night".split()


def matmul_peak_gflops(n: int, repeats: int) -> float:
    """Best fp32 GFLOP/s of an n x n @ n x n product (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


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
    p.add_argument("--queries", type=int, default=200, help="batch-1 text queries per runtime")
    p.add_argument("--query-block", type=int, default=20, help="queries per runtime per turn")
    p.add_argument("--image-batch", type=int, default=32)
    p.add_argument("--image-rounds", type=int, default=7, help="timed batches per runtime")
    p.add_argument("--runtimes-only", action="store_true", help="only the runtime comparison")
    args = p.parse_args(argv)
    command = command_line(__file__, argv)
    torch.set_num_threads(args.threads)
    if args.runtimes_only:
        result = {
            "config": {**vars(args), **machine()},
            "runtimes": compare_runtimes(args, command),
        }
        save_json(result, args.json)
        return result

    from docarray import DocList

    from client.wire_docs import SearchDoc
    from executors.clip_encoders import CLIPImageEncoder, CLIPTextEncoder
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
    vision, text = image_encoder.encoder.tower, text_encoder.encoder.tower
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
        model_s = median_seconds(model_forward(tower, batch), args.repeats)
        executor_s = median_seconds(executor_run(encoder, make_docs), args.repeats)
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
    result["runtimes"] = compare_runtimes(args, command)
    save_json(result, args.json)
    return result


RUNTIMES = ("torch", "onnx", "onnx-int8")
QUERY_WORDS = (
    "a red summer dress with white dots|navy wool coat double breasted|black leather ankle boots "
    "with a low heel|a dog running on the beach at sunset|two children playing football in a "
    "park|a man in a blue jacket riding a bike down a busy street|striped cotton shirt|a small "
    "wooden table with a vase of yellow flowers|white sneakers|a woman with an umbrella walking "
    "in the rain past a row of shops"
).split("|")


def compare_runtimes(args: argparse.Namespace, command: str) -> dict:
    """Text latency at batch 1 and image throughput: before / torch / onnx / onnx-int8;
    printed with the `command` line that ran them."""
    from finetune.artifact import ONNX_FILE, ONNX_INT8_FILE, save_towers
    from finetune.models import create_clip
    from finetune.onnx_export import export_onnx
    from finetune.towers import load_tower

    torch.manual_seed(0)
    bundle = create_clip(args.model)
    bundle.model.eval()
    tmp = tempfile.mkdtemp(prefix="bench_encoders_")
    save_towers(bundle, tmp)
    export_s = {}
    sizes_mib = {}
    for tower in ("clip-text", "clip-vision"):
        export_s[tower] = seconds(
            lambda tower=tower: export_onnx(
                f"{tmp}/{tower}", int8=True, report=lambda line: print(line, file=sys.stderr)
            )
        )
        sizes_mib[tower] = {
            name: Path(f"{tmp}/{tower}/{name}").stat().st_size / 2**20
            for name in ("model.safetensors", ONNX_FILE, ONNX_INT8_FILE)
        }

    text = {rt: load_tower(f"{tmp}/clip-text", "clip-text", runtime=rt) for rt in RUNTIMES}
    before = load_tower(f"{tmp}/clip-text", "clip-text")
    before.trims = False  # the tower's path before real-length text: all 77 positions
    text_contestants = {"torch-77": before, **{rt: text[rt] for rt in RUNTIMES}}
    queries = [QUERY_WORDS[i % len(QUERY_WORDS)] for i in range(args.queries)]
    for tower in text_contestants.values():  # warm-up
        tower.encode(queries[:3], batch_size=1)
    # Turns of `--query-block` queries each, in alternating order: a service runs one runtime,
    # and ONNX Runtime's threads spin a while after a call, which would slow a torch call that
    # came right after it.
    latencies = in_blocks(
        {
            name: (lambda q, t=t: t.encode([q], batch_size=1))
            for name, t in text_contestants.items()
        },
        queries,
        args.query_block,
    )

    vision = {rt: load_tower(f"{tmp}/clip-vision", "clip-vision", runtime=rt) for rt in RUNTIMES}
    images = [_jpeg_image(b) for b in jpegs(args.image_batch, args.image_size)]
    pixels = vision["torch"].prepare(images)
    pixels_np = pixels.numpy()

    def raw_open_clip():
        with torch.inference_mode():
            bundle.model.encode_image(pixels)

    def torch_tower():
        with torch.inference_mode():
            vision["torch"](pixels)

    def onnx_run(rt):
        return lambda: vision[rt].session.run(None, {"pixels": pixels_np})

    image_contestants = {
        "open_clip encode_image": raw_open_clip,
        "torch tower": torch_tower,
        "onnx": onnx_run("onnx"),
        "onnx-int8": onnx_run("onnx-int8"),
    }
    for fn in image_contestants.values():
        fn()
    image_times = in_rounds(image_contestants, args.image_rounds)

    reference_text = text["torch"].encode(queries[: len(QUERY_WORDS)])
    reference_image = vision["torch"].encode(images, batch_size=args.image_batch)
    cosine = {
        rt: {
            "text_min": _min_cosine(text[rt].encode(QUERY_WORDS), reference_text),
            "image_min": _min_cosine(
                vision[rt].encode(images, batch_size=args.image_batch), reference_image
            ),
        }
        for rt in ("onnx", "onnx-int8")
    }
    text_rows = {
        name: {
            "p50_ms": 1000 * statistics.median(t),
            "p90_ms": 1000 * percentile(t, 0.9, method="rank-above"),
        }
        for name, t in latencies.items()
    }
    for row in text_rows.values():
        row["speedup_vs_torch_77"] = text_rows["torch-77"]["p50_ms"] / row["p50_ms"]
    image_rows = {
        name: {"images_per_s": args.image_batch / statistics.median(t)}
        for name, t in image_times.items()
    }
    base = image_rows["open_clip encode_image"]["images_per_s"]
    for row in image_rows.values():
        row["ratio_vs_open_clip"] = row["images_per_s"] / base
    result = {
        "text_batch1": text_rows,
        "image_batch": image_rows,
        "cosine_to_torch": cosine,
        "export_s": export_s,
        "sizes_mib": sizes_mib,
        "mean_query_tokens": float(
            np.mean([int(before.prepare([q]).argmax()) + 1 for q in QUERY_WORDS])
        ),
    }
    print_runtimes(result, args, command)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return result


def _jpeg_image(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def print_runtimes(r: dict, args: argparse.Namespace, command: str) -> None:
    print(f"\n{args.model} (random init), {args.threads} threads; command: {command}\n")
    print(
        f"text query encode, batch 1 ({args.queries} queries per runtime, in alternating turns "
        f"of {args.query_block}; queries "
        f"average {r['mean_query_tokens']:.1f} tokens incl. start/end)\n"
    )
    print("| runtime | p50 ms | p90 ms | speed-up vs 77-token torch (p50) |")
    print("|---|---:|---:|---:|")
    for name, row in r["text_batch1"].items():
        print(
            f"| {name} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | "
            f"{row['speedup_vs_torch_77']:.2f}x |"
        )
    print(
        f"\nimage encode, batch {args.image_batch} of ready pixel tensors (median of "
        f"{args.image_rounds} batches per runtime, alternating)\n"
    )
    print("| runtime | images/s | vs open_clip encode_image |")
    print("|---|---:|---:|")
    for name, row in r["image_batch"].items():
        print(f"| {name} | {row['images_per_s']:.1f} | {row['ratio_vs_open_clip']:.2f}x |")
    print("\n| runtime | min cosine to torch, texts | min cosine to torch, images |")
    print("|---|---:|---:|")
    for name, row in r["cosine_to_torch"].items():
        print(f"| {name} | {row['text_min']:.6f} | {row['image_min']:.6f} |")
    print("\n| tower | export + int8 s | safetensors MiB | model.onnx MiB | model.int8.onnx MiB |")
    print("|---|---:|---:|---:|---:|")
    for tower, sizes in r["sizes_mib"].items():
        print(
            f"| {tower} | {r['export_s'][tower]:.1f} | {sizes['model.safetensors']:.0f} | "
            f"{sizes['model.onnx']:.0f} | {sizes['model.int8.onnx']:.0f} |"
        )


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
