"""GPU paths, checked in one short run (a few minutes on one GPU): PASS / FAIL / SKIP per check.

    .venv/bin/python benchmarks/gpu_check.py                 # on a machine with a CUDA GPU
    .venv/bin/python benchmarks/gpu_check.py --device cpu    # dry run of the same checks on CPU

1. amp training: a few steps of `finetune.fit(precision="amp")` on generated data; the losses
   are finite, the first one matches an fp32 run's first loss (same seed, same batch), the run
   writes both towers, and the text tower ran at the batch's real length (as on CPU).
2. fp16 encoders: each tower loaded on the GPU and cast to fp16 as the executors do gives the
   fp32 tower's embeddings (cosine), and the real-length text tower equals the 77-token one.
3. ONNX on the GPU: the towers exported to ONNX run on CUDAExecutionProvider (needs
   onnxruntime-gpu; SKIP otherwise) and give the torch embeddings (cosine).

Exit code 1 when a check FAILs. Not a test: pytest does not collect it and the suite does not
depend on it.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
TEXTS = [
    "a dog",
    "a red circle on the left of a small blue square in a green field at night",
    " ".join(["word"] * 100),  # over-long: truncated to the context
]
FP16_MIN_COSINE = 0.999
ONNX_MIN_COSINE = 0.9999


class Skip(Exception):
    """A check that cannot run here (says why)."""


def check_amp_training(device: str, model: str, data, out: Path) -> str:
    from finetune import fit

    common = dict(
        model=model,
        train_data=str(data.train_file),
        epochs=1,
        batch_size=16,
        learning_rate=1e-5,
        device=device,
        workers=2,
        seed=0,
        progress=False,
    )
    fp32 = fit(output=str(out / "fp32"), max_steps=1, precision="fp32", **common)
    amp = fit(output=str(out / "amp"), max_steps=5, precision="amp", **common)
    losses = amp.train_loss
    if len(losses) != 5 or not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"amp losses: {losses}")
    if abs(losses[0] - fp32.train_loss[0]) > 1e-2 * abs(fp32.train_loss[0]):
        raise AssertionError(f"first loss amp {losses[0]:.5f} vs fp32 {fp32.train_loss[0]:.5f}")
    for tower in (amp.text_tower, amp.vision_tower):
        if not (tower / "model.safetensors").is_file():
            raise AssertionError(f"{tower} not written")
    return (
        f"5 amp steps, losses {losses[0]:.4f} .. {losses[-1]:.4f}, first step fp32 "
        f"{fp32.train_loss[0]:.4f}; {amp.samples_per_second:.0f} samples/s"
    )


def check_fp16_encoders(device: str, run: Path, images: list[str]) -> str:
    from finetune.towers import load_tower

    notes = []
    for tower, items in (("clip-text", TEXTS), ("clip-vision", images)):
        fp32 = load_tower(run / tower, tower, device=device)
        half = load_tower(run / tower, tower, device=device)
        half.module.to(torch.float16)  # what executors/encoders.py does on a GPU
        reference, got = fp32.encode(items), half.encode(items)
        cosine = _min_cosine(got, reference)
        if not cosine >= FP16_MIN_COSINE:
            raise AssertionError(f"{tower}: fp16 min cosine {cosine:.5f} < {FP16_MIN_COSINE}")
        notes.append(f"{tower} fp16 cosine {cosine:.5f}")
        if tower == "clip-text":
            full = load_tower(run / tower, tower, device=device)
            full.trims = False
            short = items[:2]  # without the over-long caption: a batch shorter than the context
            gap = float(np.abs(fp32.encode(short) - full.encode(short)).max())
            if not gap <= 1e-4:
                raise AssertionError(f"real-length vs full-length text: max diff {gap:.2e}")
            notes.append(f"real-length text max diff {gap:.1e}")
    return "; ".join(notes)


def check_onnx(device: str, run: Path, images: list[str]) -> str:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Skip("onnxruntime is not installed: pip install -e '.[onnx]'") from e
    from finetune.onnx_export import export_onnx
    from finetune.towers import load_tower

    want = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if want not in ort.get_available_providers():
        raise Skip(
            f"{want} not available (onnxruntime {ort.__version__} has "
            f"{ort.get_available_providers()}); install onnxruntime-gpu for the GPU"
        )
    notes = []
    for tower, items in (("clip-text", TEXTS), ("clip-vision", images)):
        start = time.perf_counter()
        export_onnx(run / tower, report=lambda line: None)
        notes.append(f"{tower} export {time.perf_counter() - start:.0f} s")
        onnx_tower = load_tower(run / tower, tower, device=device, runtime="onnx")
        used = onnx_tower.session.get_providers()[0]
        if used != want:
            raise AssertionError(f"{tower}: session runs on {used}, not {want}")
        reference = load_tower(run / tower, tower, device=device).encode(items)
        cosine = _min_cosine(onnx_tower.encode(items), reference)
        if not cosine >= ONNX_MIN_COSINE:
            raise AssertionError(f"{tower}: onnx min cosine {cosine:.6f} < {ONNX_MIN_COSINE}")
        notes.append(f"{tower} on {used}, cosine {cosine:.6f}")
    return "; ".join(notes)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def run_check(name: str, fn: Callable[[], str]) -> str:
    start = time.perf_counter()
    try:
        detail, status = fn(), PASS
    except Skip as e:
        detail, status = str(e), SKIP
    except Exception as e:  # a check that breaks is a FAIL, with its traceback
        traceback.print_exc()
        detail, status = f"{type(e).__name__}: {e}", FAIL
    print(f"{status} {name} ({time.perf_counter() - start:.0f} s): {detail}", flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else None,
        choices=("cuda", "cpu"),
        help="cuda (default when a GPU is visible) or cpu (dry run of the checks)",
    )
    p.add_argument("--model", default=None, help="default: ViT-B-32 on cuda, ViT-Tiny-8 on cpu")
    args = p.parse_args(argv)
    if args.device is None:
        print("SKIP all: no CUDA GPU visible (run with --device cpu for a dry run on CPU)")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("FAIL: --device cuda, but torch sees no CUDA GPU")
        return 1
    model = args.model or ("ViT-B-32" if args.device == "cuda" else "ViT-Tiny-8")
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none (dry run)"
    print(f"gpu_check: {model} (random init) on {args.device}, GPU {gpu}, torch", torch.__version__)

    from demo.sample_data import generate_sample_data

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        tmp = Path(tmp)
        data = generate_sample_data("generic", 40, tmp / "data", seed=0, progress=False)
        images = [str(p) for p in sorted(data.images_dir.iterdir())[:8]]
        statuses = [
            run_check("amp training", lambda: check_amp_training(args.device, model, data, tmp)),
        ]
        run = tmp / "amp"
        if statuses[0] != PASS:  # the other checks need the run's towers: make some
            from finetune.artifact import save_towers
            from finetune.models import create_clip

            save_towers(create_clip(model), run)
        statuses.append(
            run_check("fp16 encoders", lambda: check_fp16_encoders(args.device, run, images))
        )
        statuses.append(run_check("onnx runtime", lambda: check_onnx(args.device, run, images)))
    failed = statuses.count(FAIL)
    print(
        f"{statuses.count(PASS)} passed, {failed} failed, {statuses.count(SKIP)} skipped "
        "(gpu_check)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
