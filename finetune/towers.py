"""Text and vision towers that each load alone.

A tower folder holds `config.json` (architecture, preprocessing, tokenizer facts) and
`model.safetensors` with that tower's weights only, so a text encoder service never reads the
vision weights and vice versa. Embeddings are L2-normalised float32, equal to what the full
CLIP's `encode_text` / `encode_image(normalize=True)` give.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import _build_text_tower, _build_vision_tower, get_cast_dtype
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from finetune.models import (
    TEXT_TOWER,
    VISION_TOWER,
    CLIPBundle,
    create_clip,
    ensure_registered,
    is_run_dir,
    read_json,
    tokenizer_for,
    write_json,
)
from finetune.onnx_export import RUNTIMES
from finetune.text_length import encode_text, supports_trimming

TOWER_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
TOWER_NAMES = (TEXT_TOWER, VISION_TOWER)


def split_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(text tower state, vision tower state) of a CLIP, with keys as the lone towers name them."""
    text, vision = {}, {}
    for key, value in model.state_dict().items():
        if key.startswith("visual."):
            vision[key[len("visual.") :]] = value
        elif key in ("logit_scale", "logit_bias"):
            continue
        else:
            text[key[len("text.") :] if key.startswith("text.") else key] = value
    return text, vision


def save_towers(bundle: CLIPBundle, out_dir: str | os.PathLike, dtype: torch.dtype | None = None):
    """Write `out_dir/clip-text/` and `out_dir/clip-vision/`; returns their paths."""
    text_state, vision_state = split_state_dict(bundle.model)
    common = {
        "format_version": TOWER_FORMAT_VERSION,
        "model_name": bundle.model_name,
        "pretrained": bundle.pretrained,
        "model_cfg": bundle.model_cfg,
        "embed_dim": bundle.model_cfg["embed_dim"],
    }
    paths = {}
    for name, state, extra in (
        (TEXT_TOWER, text_state, {"context_length": _context_length(bundle.model_cfg)}),
        (VISION_TOWER, vision_state, {"preprocess_cfg": bundle.preprocess_cfg}),
    ):
        folder = Path(out_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
            .detach()
            .cpu()
            .contiguous()
            for k, v in state.items()
        }
        _atomic_save(tensors, folder / WEIGHTS_FILE)
        write_json(folder / "config.json", {"tower": name, **common, **extra})
        paths[name] = folder
    return paths


def read_tower_state(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tower's weights as float32 tensors (towers may be stored in fp16 to save space)."""
    state = load_file(os.fspath(Path(folder) / WEIGHTS_FILE))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


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
        self.context_length = config.get("context_length") or _context_length(config["model_cfg"])
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
        self.preprocess = image_transform_v2(
            PreprocessCfg(**config["preprocess_cfg"]), is_train=False
        )

    def prepare(self, images: Sequence[Image.Image | str | os.PathLike]) -> torch.Tensor:
        from finetune.images import load_image  # images imports nothing of ours; lazy for speed

        return torch.stack(
            [
                self.preprocess(img if isinstance(img, Image.Image) else load_image(img))
                for img in images
            ]
        )


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
        if not (source_path / "config.json").is_file():
            raise FileNotFoundError(
                f"the {runtime} runtime needs a run or tower folder exported with `python -m "
                f"finetune export FOLDER --onnx`; {source_path} is not one"
            )
        from finetune.onnx_runtime import load_onnx_tower  # onnxruntime only when asked for

        return load_onnx_tower(source_path, tower, runtime=runtime, device=device)
    if (source_path / WEIGHTS_FILE).is_file():
        return _load_tower_folder(source_path, tower, device)
    if source_path.exists():
        raise FileNotFoundError(
            f"{source_path} is neither a run folder (config.json, clip-text/, clip-vision/) nor a "
            f"tower folder (config.json, {WEIGHTS_FILE})"
        )
    return tower_from_bundle(create_clip(os.fspath(source), device=device), tower)


def tower_from_bundle(bundle: CLIPBundle, tower: str) -> TextTower | VisionTower:
    """One tower taken out of a full model (for hub tags and in-training evaluation)."""
    model = bundle.model
    embed_dim = bundle.model_cfg["embed_dim"]
    config = {
        "tower": tower,
        "model_name": bundle.model_name,
        "model_cfg": bundle.model_cfg,
        "preprocess_cfg": bundle.preprocess_cfg,
        "context_length": _context_length(bundle.model_cfg),
    }
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
    config = read_json(folder / "config.json")
    if config.get("tower") != tower:
        raise ValueError(f"{folder} holds the {config.get('tower')} tower, not {tower}")
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
        ensure_registered(config["model_name"], model_cfg)
        return TextTower(module, embed_dim, config, tokenizer_for(config["model_name"], model_cfg))
    return VisionTower(module, embed_dim, config)


def _context_length(model_cfg: dict[str, Any]) -> int:
    return int(
        model_cfg["text_cfg"].get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH)
    )


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, os.fspath(tmp))
    os.replace(tmp, path)
