"""Text and vision towers that each load alone.

A tower is built from its own folder (`finetune.artifact`) and never reads the other tower's
weights. Embeddings are L2-normalised float32, equal to what the full CLIP's `encode_text` /
`encode_image(normalize=True)` give.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import _build_text_tower, _build_vision_tower, get_cast_dtype
from PIL import Image
from torch import nn

from finetune.artifact import (
    FINGERPRINT,
    RUNTIMES,
    TEXT_TOWER,
    TOWER_CONFIG,
    TOWER_NAMES,
    VISION_TOWER,
    context_length,
    fingerprint,
    is_run_dir,
    is_tower_dir,
    load_model,
    read_tower_config,
    read_tower_state,
    split_state_dict,
)
from finetune.models import CLIPBundle, image_transform, pixel_batch, tokenizer_for
from finetune.onnx_runtime import load_onnx_tower
from finetune.text_length import encode_text, supports_trimming


class Tower(nn.Module):
    """Common part of the two towers: device, precision, minibatched no-grad encoding."""

    kind: str
    runtime = "torch"

    def __init__(self, module: nn.Module, embed_dim: int, config: dict[str, Any]):
        super().__init__()
        self.module = module
        self.embed_dim = embed_dim
        self.config = config

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.module(batch).float(), dim=-1)

    def prepare(self, items: Sequence[Any]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.inference_mode()
    def encode(self, items: Iterable[Any], batch_size: int = 64) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per item."""
        items = list(items)
        out = np.zeros((len(items), self.embed_dim), dtype=np.float32)
        for start in range(0, len(items), batch_size):
            batch = self.prepare(items[start : start + batch_size])
            batch = batch.to(self.device, dtype=self.dtype if batch.is_floating_point() else None)
            out[start : start + len(batch)] = self(batch).cpu().numpy()
        return out


class TextTower(Tower):
    kind = TEXT_TOWER

    def __init__(self, module, embed_dim, config, tokenizer: Callable):
        super().__init__(module, embed_dim, config)
        self.tokenizer = tokenizer
        self.context_length = config.get("context_length") or context_length(config["model_cfg"])
        # causal mask + argmax pooling: the padding after the last end-of-text token is cut off
        self.trims = supports_trimming(config["model_cfg"])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.trims:
            return super().forward(tokens)
        model = self.module.model if isinstance(self.module, _FullModelText) else self.module
        return F.normalize(encode_text(model, tokens).float(), dim=-1)

    def prepare(self, texts: Sequence[str]) -> torch.Tensor:
        # open_clip's tokenizers truncate to the context length (keeping the end-of-text token)
        return self.tokenizer(list(texts))


class VisionTower(Tower):
    kind = VISION_TOWER

    def __init__(self, module, embed_dim, config):
        super().__init__(module, embed_dim, config)
        self.preprocess = image_transform(config["preprocess_cfg"])

    def prepare(self, images: Sequence[Image.Image | str | os.PathLike]) -> torch.Tensor:
        return pixel_batch(self.preprocess, images)


def load_tower(
    source: str | os.PathLike,
    tower: str,
    device: str | torch.device = "cpu",
    runtime: str = "torch",
) -> TextTower | VisionTower | Any:
    """Load one tower from a tower folder, a run folder, or a `NAME[#PRETRAINED]` spec.

    From a tower or run folder only that tower is built and only its weights are read.
    `runtime` 'onnx' or 'onnx-int8' loads the folder's exported ONNX graph instead (see
    `finetune.onnx_runtime`; same `kind`, `embed_dim`, `config`, `prepare`, `encode`).
    """
    if tower not in TOWER_NAMES:
        raise ValueError(f"tower must be one of {TOWER_NAMES}, got {tower!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    source_path = Path(os.fspath(source))
    if is_run_dir(source_path):
        source_path = source_path / tower
    if runtime != "torch":
        if not (source_path / TOWER_CONFIG).is_file():
            raise FileNotFoundError(
                f"the {runtime} runtime needs a run or tower folder exported with `python -m "
                f"finetune export FOLDER --onnx`; {source_path} is not one"
            )
        return load_onnx_tower(source_path, tower, runtime=runtime, device=device)
    if is_tower_dir(source_path):
        return _load_tower_folder(source_path, tower, device)
    if source_path.exists():
        raise FileNotFoundError(
            f"{source_path} is neither a run folder (config.json, clip-text/, clip-vision/) nor a "
            f"tower folder (config.json, model.safetensors)"
        )
    return tower_from_bundle(load_model(os.fspath(source), device=device), tower)


def tower_from_bundle(bundle: CLIPBundle, tower: str) -> TextTower | VisionTower:
    """One tower taken out of a full model (for hub tags and in-training evaluation)."""
    model = bundle.model
    embed_dim = bundle.model_cfg["embed_dim"]
    config = {
        "tower": tower,
        "model_name": bundle.model_name,
        "model_cfg": bundle.model_cfg,
        # the keys `save_towers` writes, so that a saved copy has this tower's fingerprint
        **(
            {"preprocess_cfg": bundle.preprocess_cfg}
            if tower == VISION_TOWER
            else {"context_length": context_length(bundle.model_cfg)}
        ),
    }
    text_state, vision_state = split_state_dict(model)
    config[FINGERPRINT] = fingerprint(config, vision_state if tower == VISION_TOWER else text_state)
    if tower == VISION_TOWER:
        return VisionTower(model.visual, embed_dim, config)
    return TextTower(_FullModelText(model), embed_dim, config, bundle.tokenizer)


class _FullModelText(nn.Module):
    """Adapter: a full CLIP's text path as a module (CLIP keeps its text parts at top level)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def parameters(self, recurse: bool = True):
        return self.model.parameters(recurse)


def _load_tower_folder(folder: Path, tower: str, device) -> TextTower | VisionTower:
    config = read_tower_config(folder, tower)
    model_cfg = config["model_cfg"]
    embed_dim = model_cfg["embed_dim"]
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    cast_dtype = get_cast_dtype("fp32")
    if tower == TEXT_TOWER:
        module = _build_text_tower(embed_dim, model_cfg["text_cfg"], quick_gelu, cast_dtype)
    else:
        module = _build_vision_tower(embed_dim, model_cfg["vision_cfg"], quick_gelu, cast_dtype)
    module.load_state_dict(read_tower_state(folder), strict=True)
    module.eval().to(device)
    if tower == TEXT_TOWER:
        return TextTower(module, embed_dim, config, tokenizer_for(config["model_name"], model_cfg))
    return VisionTower(module, embed_dim, config)
