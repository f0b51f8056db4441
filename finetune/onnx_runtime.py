"""Towers served by ONNX Runtime from the files `python -m finetune export --onnx` writes.

`OnnxTextTower` / `OnnxVisionTower` have the interface callers use of the torch towers
(`kind`, `embed_dim`, `config`, `context_length`, `prepare`, `encode`), so
`load_tower(..., runtime="onnx" | "onnx-int8")` can hand one out instead. Tokenising and image
preprocessing stay open_clip's own; only the network runs in ONNX Runtime.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from finetune.artifact import (
    ONNX_FILES,
    TEXT_TOWER,
    VISION_TOWER,
    context_length,
    read_tower_config,
)
from finetune.models import image_transform, pixel_batch, tokenizer_for
from finetune.text_length import supports_trimming, trim_tokens

INSTALL_HINT = "pip install -e '.[onnx]'"


def require(module: str) -> Any:
    """Import an optional ONNX dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(f"{module} is not installed: {INSTALL_HINT}") from e


def providers(device: str | torch.device = "cpu") -> list[str]:
    """CUDA first when asked for a GPU and onnxruntime-gpu has it; the CPU always."""
    ort = require("onnxruntime")
    available = ort.get_available_providers()
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def create_session(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """An InferenceSession using as many threads as torch is set to use (the executors' setting
    applies to both runtimes)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(os.fspath(path), options, providers=providers(device))


class OnnxTower:
    """Common part: one ONNX session, minibatched encoding to float32 numpy."""

    kind: str
    input_name: str

    def __init__(self, session: Any, config: dict[str, Any], runtime: str, path: Path):
        self.session = session
        self.config = config
        self.embed_dim = int(config["model_cfg"]["embed_dim"])
        self.runtime = runtime
        self.path = path

    def prepare(self, items: Sequence[Any]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _feed(self, batch: torch.Tensor) -> np.ndarray:
        return batch.numpy()

    def encode(self, items: Iterable[Any], batch_size: int = 64) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per item."""
        items = list(items)
        out = np.zeros((len(items), self.embed_dim), dtype=np.float32)
        for start in range(0, len(items), batch_size):
            batch = self._feed(self.prepare(items[start : start + batch_size]))
            out[start : start + len(batch)] = self.session.run(None, {self.input_name: batch})[0]
        return out


class OnnxTextTower(OnnxTower):
    kind = TEXT_TOWER
    input_name = "tokens"

    def __init__(self, session, config, runtime, path):
        super().__init__(session, config, runtime, path)
        model_cfg = config["model_cfg"]
        self.tokenizer = tokenizer_for(config["model_name"], model_cfg)
        self.context_length = int(config.get("context_length") or context_length(model_cfg))
        self.trims = supports_trimming(model_cfg)

    def prepare(self, texts: Sequence[str]) -> torch.Tensor:
        # open_clip's tokenizers truncate to the context length (keeping the end-of-text token)
        return self.tokenizer(list(texts))

    def _feed(self, tokens: torch.Tensor) -> np.ndarray:
        tokens = trim_tokens(tokens) if self.trims else tokens
        return tokens.to(torch.int64).numpy()


class OnnxVisionTower(OnnxTower):
    kind = VISION_TOWER
    input_name = "pixels"

    def __init__(self, session, config, runtime, path):
        super().__init__(session, config, runtime, path)
        self.preprocess = image_transform(config["preprocess_cfg"])

    def prepare(self, images: Sequence[Image.Image | str | os.PathLike]) -> torch.Tensor:
        return pixel_batch(self.preprocess, images)

    def _feed(self, pixels: torch.Tensor) -> np.ndarray:
        return pixels.to(torch.float32).numpy()


def load_onnx_tower(
    folder: str | os.PathLike,
    tower: str,
    runtime: str = "onnx",
    device: str | torch.device = "cpu",
) -> OnnxTextTower | OnnxVisionTower:
    """The tower in `folder` on ONNX Runtime (`runtime` 'onnx' = fp32, 'onnx-int8')."""
    if runtime not in ONNX_FILES:
        raise ValueError(f"runtime must be one of {tuple(ONNX_FILES)}, got {runtime!r}")
    folder = Path(folder)
    config = read_tower_config(folder, tower)
    path = folder / ONNX_FILES[runtime]
    if not path.is_file():
        int8 = " --int8" if runtime == "onnx-int8" else ""
        raise FileNotFoundError(
            f"{path} not found: export the tower first with "
            f"`python -m finetune export {folder} --onnx{int8}`"
        )
    cls = OnnxTextTower if tower == TEXT_TOWER else OnnxVisionTower
    return cls(create_session(path, device), config, runtime, path)
