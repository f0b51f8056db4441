"""The GPU paths: amp and bf16 training, fp16 and bf16 towers, ONNX Runtime on CUDA.

    python -m pytest -m gpu tests/test_gpu.py                       # on a machine with a GPU
    GPU_TESTS_DEVICE=cpu python -m pytest -m gpu tests/test_gpu.py  # dry run on the CPU

Marked `gpu` and skipped where torch sees no CUDA GPU, so `make test` skips them on a CPU
machine; `GPU_TESTS_DEVICE=cpu` runs the same checks on the CPU (torch has bf16 and fp16 kernels
there too). The model is a random-init ViT-B-32 on the GPU and ViT-Tiny-8 on the CPU
(`GPU_TESTS_MODEL=NAME` picks another open_clip architecture). Each test records a line of
detail (losses, cosines, seconds), printed after the run under "gpu tests" with a summary line,
ready to paste into the benchmarks document.

Only torch, numpy, finetune and demo.sample_data are imported (no jina, hnswlib): a GPU machine
needs torch and open_clip_torch, and for the ONNX test onnx, onnxscript and onnxruntime-gpu
(skipped without them).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from demo.sample_data import generate_sample_data
from finetune import fit
from finetune.artifact import save_towers
from finetune.models import create_clip
from finetune.onnx_export import export_onnx
from finetune.towers import load_tower

ASKED_DEVICE = os.environ.get("GPU_TESTS_DEVICE", "")
NO_GPU = not torch.cuda.is_available()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not ASKED_DEVICE and NO_GPU,
        reason=f"no CUDA GPU visible to torch {torch.__version__} "
        "(GPU_TESTS_DEVICE=cpu runs these tests on the CPU as a dry run)",
    ),
]

TEXTS = [
    "a dog",
    "a red circle on the left of a small blue square in a green field at night",
    " ".join(["word"] * 100),  # over-long: truncated to the context
]
# Lowest cosine of a cast tower's embeddings to float32's. bfloat16 keeps fewer mantissa bits
# than float16 and strays further; one bound for both leaves room for the GPU's kernels, which
# round differently from the CPU's.
CAST_MIN_COSINE = 0.999
ONNX_MIN_COSINE = 0.9999
AUTOCAST_STEPS = 5
FIRST_LOSS_RTOL = 1e-2  # autocast's first loss vs float32's, same seed and batch


class Report:
    """The lines the tests record, printed at the end of the run with a summary line (a
    plugin registered for the run's terminal summary: pytest would otherwise show a passing
    test's output only with -rP or -s)."""

    def __init__(self, header: str, checks: list[str]):
        self.header, self.checks = header, checks
        self.lines: dict[str, str] = {}
        self.start = time.perf_counter()

    def pytest_terminal_summary(self, terminalreporter) -> None:
        terminalreporter.write_sep("-", "gpu tests")
        terminalreporter.write_line(self.header)
        for line in self.lines.values():
            terminalreporter.write_line(line)
        missing = [name for name in self.checks if name not in self.lines]
        terminalreporter.write_line(
            f"{len(self.lines)} of {len(self.checks)} checks passed in "
            f"{time.perf_counter() - self.start:.0f} s"
            + (f"; failed or skipped: {', '.join(missing)}" if missing else "")
        )


@pytest.fixture(scope="module")
def device() -> str:
    device = ASKED_DEVICE or "cuda"
    if device not in ("cuda", "cpu"):
        pytest.fail(f"GPU_TESTS_DEVICE must be cuda or cpu, not {device!r}")
    if device == "cuda" and NO_GPU:
        pytest.fail("GPU_TESTS_DEVICE=cuda, but torch sees no CUDA GPU")
    return device


@pytest.fixture(scope="module")
def model(device) -> str:
    return os.environ.get("GPU_TESTS_MODEL") or ("ViT-B-32" if device == "cuda" else "ViT-Tiny-8")


@pytest.fixture(scope="module")
def report(request, device, model):
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (dry run on the CPU)"
    checks = [item.name for item in request.session.items if item.path == request.path]
    header = f"{model} (random init) on {device}, GPU {gpu}, torch {torch.__version__}"
    plugin = Report(header, checks)
    request.config.pluginmanager.register(plugin, "gpu-tests-report")
    return plugin


@pytest.fixture
def record(request, report) -> Callable[[str], None]:
    """`record(detail)`: this test's line, with its seconds."""
    start = time.perf_counter()

    def done(detail: str) -> None:
        line = f"{request.node.name} ({time.perf_counter() - start:.0f} s): {detail}"
        report.lines[request.node.name] = line
        print(line)

    return done


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return generate_sample_data(
        "generic", 40, tmp_path_factory.mktemp("gpu-data"), seed=0, progress=False
    )


@pytest.fixture(scope="module")
def images(sample) -> list[str]:
    return [str(p) for p in sorted(sample.images_dir.iterdir())[:8]]


@pytest.fixture(scope="module")
def towers(model, tmp_path_factory) -> Path:
    """A run folder with both towers of `model`, random init."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("gpu-towers")
    save_towers(create_clip(model), run)
    return run


def _fit(sample, model: str, device: str, output: Path, steps: int, precision: str):
    return fit(
        model=model,
        train_data=str(sample.train_file),
        output=str(output),
        max_steps=steps,
        precision=precision,
        epochs=1,
        batch_size=16,
        learning_rate=1e-5,
        device=device,
        workers=2,
        seed=0,
        progress=False,
    )


@pytest.fixture(scope="module")
def fp32_first_loss(sample, model, device, tmp_path_factory) -> float:
    run = _fit(sample, model, device, tmp_path_factory.mktemp("fp32"), 1, "fp32")
    return run.train_loss[0]


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


@pytest.mark.parametrize("precision", ["amp", "bf16"])
def test_autocast_training_matches_fp32(
    precision, sample, model, device, fp32_first_loss, tmp_path, record
):
    """A few steps under autocast (amp: float16 with loss scaling; bf16): finite losses, the
    first one float32's (same seed, same batch), both towers written."""
    run = _fit(sample, model, device, tmp_path / precision, AUTOCAST_STEPS, precision)
    losses = run.train_loss
    assert len(losses) == AUTOCAST_STEPS and all(math.isfinite(x) for x in losses), losses
    assert losses[0] == pytest.approx(fp32_first_loss, rel=FIRST_LOSS_RTOL)
    for tower in (run.text_tower, run.vision_tower):
        assert (tower / "model.safetensors").is_file(), f"{tower} not written"
    record(
        f"{AUTOCAST_STEPS} {precision} steps, losses {losses[0]:.4f} .. {losses[-1]:.4f}, "
        f"first step fp32 {fp32_first_loss:.4f}; {run.samples_per_second:.0f} samples/s"
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cast_towers_match_fp32(dtype, towers, images, device, record):
    """Each tower loaded on the device and cast as the executors do (`search/encoders.py:
    resolve_dtype`) gives float32's embeddings."""
    notes = []
    for tower, items in (("clip-text", TEXTS), ("clip-vision", images)):
        fp32 = load_tower(towers / tower, tower, device=device)
        cast = load_tower(towers / tower, tower, device=device)
        cast.module.to(dtype)
        cosine = _min_cosine(cast.encode(items), fp32.encode(items))
        assert cosine >= CAST_MIN_COSINE, f"{tower}: {dtype} min cosine {cosine:.6f}"
        notes.append(f"{tower} min cosine {cosine:.6f}")
    record(f"{str(dtype).removeprefix('torch.')}: " + "; ".join(notes))


def test_real_length_text_matches_full_context(towers, device, record):
    """The text tower at the batch's real length gives the 77-token tower's embeddings."""
    real = load_tower(towers / "clip-text", "clip-text", device=device)
    full = load_tower(towers / "clip-text", "clip-text", device=device)
    full.trims = False
    short = TEXTS[:2]  # without the over-long caption: a batch shorter than the context
    gap = float(np.abs(real.encode(short) - full.encode(short)).max())
    assert gap <= 1e-4, f"real-length vs full-length text: max diff {gap:.2e}"
    record(f"real-length text vs 77 tokens, max diff {gap:.1e}")


def test_onnx_runs_on_the_device(towers, images, device, record):
    """The towers exported to ONNX run on the device's execution provider (CUDA on a GPU)
    and give the torch embeddings."""
    for module in ("onnx", "onnxscript"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[onnx]'")
    ort = pytest.importorskip(
        "onnxruntime", reason="onnxruntime is not installed: pip install -e '.[onnx]'"
    )
    want = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if want not in ort.get_available_providers():
        pytest.skip(
            f"{want} not available (onnxruntime {ort.__version__} has "
            f"{ort.get_available_providers()}); install onnxruntime-gpu for the GPU"
        )
    notes = []
    for tower, items in (("clip-text", TEXTS), ("clip-vision", images)):
        start = time.perf_counter()
        export_onnx(towers / tower, report=lambda line: None)
        notes.append(f"{tower} export {time.perf_counter() - start:.0f} s")
        onnx_tower = load_tower(towers / tower, tower, device=device, runtime="onnx")
        used = onnx_tower.session.get_providers()[0]
        assert used == want, f"{tower}: the session runs on {used}, not {want}"
        reference = load_tower(towers / tower, tower, device=device).encode(items)
        cosine = _min_cosine(onnx_tower.encode(items), reference)
        assert cosine >= ONNX_MIN_COSINE, f"{tower}: onnx min cosine {cosine:.6f}"
        notes.append(f"{tower} on {used}, min cosine {cosine:.6f}")
    record("; ".join(notes))
