"""Export tower folders to ONNX (`model.onnx`) and int8 ONNX (`model.int8.onnx`).

    python -m finetune export runs/shop --onnx [--int8]      # both towers of a run
    python -m finetune export runs/shop/clip-text --onnx     # one tower folder

The files are written beside `model.safetensors`, each atomically (temp file, fsync, rename), so
a service that loads a tower never reads half a file. The text graph takes token batches of any
length up to the context length (dynamic batch and sequence axes) and, for towers with a causal
mask and argmax pooling, runs at the length it is given: the ONNX runtime feeds it each batch cut
to its real length, as the torch tower does. Vision graphs take any batch size. Both end in the
L2 normalisation, so they output what `Tower.encode` returns.

int8: `onnxruntime.quantization.quantize_dynamic` (int8 weights, activations quantised on the
fly per batch) of the fp32 graph's matrix multiplications.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from finetune.artifact import (
    ONNX_FILE,
    ONNX_INT8_FILE,
    TEXT_TOWER,
    TOWER_CONFIG,
    TOWER_NAMES,
    VISION_TOWER,
    is_run_dir,
)
from finetune.atomic import read_json
from finetune.onnx_runtime import require
from finetune.text_length import forward_at_length, supports_trimming, trim_tokens
from finetune.towers import Tower, load_tower

log = logging.getLogger("finetune")

OPSET = 18
# Quantised: the matrix products hold nearly all the weights and the time; the patch
# convolution stays fp32 (ONNX Runtime's integer convolution is slower than its fp32 one).
INT8_OPS = ("MatMul", "Gemm")


def tower_folders(source: str | os.PathLike) -> list[tuple[Path, str]]:
    """(folder, tower name) of each tower in a run folder, or of a single tower folder."""
    path = Path(os.fspath(source))
    if is_run_dir(path):
        return [(path / TEXT_TOWER, TEXT_TOWER), (path / VISION_TOWER, VISION_TOWER)]
    config = path / TOWER_CONFIG
    if config.is_file():
        tower = read_json(config).get("tower")
        if tower in TOWER_NAMES:
            return [(path, tower)]
    raise FileNotFoundError(
        f"{path} is neither a run folder (config.json, clip-text/, clip-vision/) nor a tower "
        "folder (config.json with a tower, model.safetensors)"
    )


class _TextGraph(nn.Module):
    """tokens (batch, length) int64 -> L2-normalised embeddings, at the length it is given."""

    def __init__(self, module: nn.Module, real_length: bool):
        super().__init__()
        self.module, self.real_length = module, real_length

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        features = (
            forward_at_length(self.module, tokens) if self.real_length else self.module(tokens)
        )
        return F.normalize(features.float(), dim=-1)


class _VisionGraph(nn.Module):
    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.module(pixels).float(), dim=-1)


def export_tower(
    folder: str | os.PathLike,
    tower: str,
    int8: bool = False,
    opset: int = OPSET,
    report: Callable[[str], None] = log.info,
) -> list[Path]:
    """Write `model.onnx` (and `model.int8.onnx`) for the tower in `folder`; returns the paths."""
    require("onnx")
    if int8:
        require("onnxruntime")
    folder = Path(folder)
    torch_tower = load_tower(folder, tower)  # checks the folder holds this tower
    torch_tower.eval()
    graph, example, name, shapes = _graph_and_input(torch_tower, tower)
    graph.eval()

    written = []
    target = folder / ONNX_FILE
    report(f"exporting {folder} -> {target.name} ...")
    # the exporter prints its steps and warns about every traced op: keep the log to one line
    with _atomic_path(target) as tmp, warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=[name],
            output_names=["embeddings"],
            dynamic_shapes={name: shapes},
            opset_version=opset,
            verbose=False,
        )
        program.save(os.fspath(tmp))
    written.append(target)
    report(f"wrote {target} ({_mib(target)})")
    if int8:
        written.append(_quantise(target, folder / ONNX_INT8_FILE, report))
    return written


def _graph_and_input(torch_tower: Tower, tower: str) -> tuple[nn.Module, torch.Tensor, str, dict]:
    """The module to export for a tower, an example input, its name and its dynamic axes."""
    if tower == TEXT_TOWER:
        real_length = supports_trimming(torch_tower.config["model_cfg"])
        example = torch_tower.prepare(["a photo of a dog", "a cat"])
        shapes = {0: torch.export.Dim("batch"), 1: _length_dim(torch_tower.context_length)}
        return (
            _TextGraph(torch_tower.module, real_length),
            trim_tokens(example) if real_length else example,
            "tokens",
            shapes,
        )
    size = torch_tower.config["preprocess_cfg"]["size"]
    height, width = (size, size) if isinstance(size, int) else size
    example = torch.zeros(2, 3, height, width)
    return _VisionGraph(torch_tower.module), example, "pixels", {0: torch.export.Dim("batch")}


def _quantise(target: Path, int8_target: Path, report: Callable[[str], None]) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    report(f"quantising {target.name} -> {int8_target.name} ...")
    with _atomic_path(int8_target) as tmp, _quiet_root_log():
        quantize_dynamic(
            target,
            tmp,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(INT8_OPS),
        )
    report(f"wrote {int8_target} ({_mib(int8_target)})")
    return int8_target


def export_onnx(
    source: str | os.PathLike,
    int8: bool = False,
    opset: int = OPSET,
    report: Callable[[str], None] = log.info,
) -> list[Path]:
    """Export every tower of a run folder (or the one tower of a tower folder) to ONNX."""
    written = []
    for folder, tower in tower_folders(source):
        written += export_tower(folder, tower, int8=int8, opset=opset, report=report)
    return written


def _length_dim(context_length: int) -> Any:
    return torch.export.Dim("length", min=1, max=context_length)


def _mib(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"


@contextmanager
def _quiet_root_log() -> Iterator[None]:
    """onnxruntime.quantization logs on the root logger (a pre-processing hint, per-tensor
    notes); keep that out of the user's log while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _atomic_path:
    """A temp path beside `target` that becomes `target` (after fsync) when the block succeeds."""

    def __init__(self, target: Path):
        self.target = target
        # ends in .onnx: the ONNX savers name external-data files after it if they need any
        self.tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.onnx")

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.target)
        dir_fd = os.open(self.target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
