"""Build open_clip CLIP models from `NAME[#PRETRAINED]` specs, run folders and checkpoints.

Configuration is data: architectures are open_clip JSON model configs (the project registers
its own small ones from `finetune/model_configs/`), weights come from an open_clip pretrained
tag (needs internet once) or a local checkpoint file; run folders are `finetune.artifact`'s.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from PIL import Image
from torch import Tensor, nn

from imagepairs.images import load_image

log = logging.getLogger(__name__)

PROJECT_MODEL_CONFIGS = Path(__file__).parent / "model_configs"

open_clip.add_model_config(PROJECT_MODEL_CONFIGS)


@dataclass(frozen=True)
class ModelSpec:
    """`NAME[#PRETRAINED]`, e.g. `ViT-B-32#openai`, `ViT-Tiny-8`, `ViT-Tiny-8#runs/demo`."""

    name: str
    pretrained: str | None = None

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        name, _, pretrained = spec.partition("#")
        if not name:
            raise ValueError(f"model spec {spec!r} has no architecture name (NAME[#PRETRAINED])")
        return cls(name=name, pretrained=pretrained or None)

    def __str__(self) -> str:
        return f"{self.name}#{self.pretrained}" if self.pretrained else self.name


@dataclass
class CLIPBundle:
    """A full CLIP model with everything needed to feed it and to save it as two towers."""

    model: nn.Module
    model_name: str
    pretrained: str | None
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    tokenizer: Callable[[list[str]], torch.Tensor]

    def preprocess(self, train: bool = False) -> Callable:
        return image_transform(self.preprocess_cfg, train=train)

    @property
    def spec(self) -> str:
        return str(ModelSpec(self.model_name, self.pretrained))


def image_transform(preprocess_cfg: dict[str, Any], train: bool = False) -> Callable:
    """open_clip's image preprocessing for a model's `preprocess_cfg` (training augmentation
    with `train`)."""
    return image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=train)


def pixel_batch(transform: Callable, images: Sequence[Image.Image | str | os.PathLike]) -> Tensor:
    """One batch of preprocessed pixels from PIL images or image files."""
    return torch.stack(
        [transform(img if isinstance(img, Image.Image) else load_image(img)) for img in images]
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> the first CUDA GPU when there is one, else the CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def ensure_registered(model_name: str, model_cfg: dict[str, Any]) -> None:
    """Make `model_name` known to open_clip, registering the stored config if it is not."""
    if model_name in open_clip.list_models():
        return
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / f"{model_name}.json"
        cfg_path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(cfg_path)


def effective_model_cfg(model_name: str, pretrained: str | None) -> dict[str, Any]:
    """The open_clip config the model is really built with (the tag may force QuickGELU)."""
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(
            f"unknown model architecture {model_name!r}; choose one of open_clip.list_models(), "
            f"e.g. ViT-B-32 or the project's ViT-Tiny-8"
        )
    cfg = copy.deepcopy(cfg)
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    if tag_cfg.get("quick_gelu"):
        cfg["quick_gelu"] = True
    return cfg


def tokenizer_for(model_name: str, model_cfg: dict[str, Any]) -> Callable:
    ensure_registered(model_name, model_cfg)
    return open_clip.get_tokenizer(model_name)


def build_model(model_cfg: dict[str, Any]) -> nn.Module:
    """An untrained CLIP (or CustomTextCLIP) from an open_clip model config dict."""
    cfg = copy.deepcopy(model_cfg)
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return cls(**cfg)


def create_clip(spec: str, device: str | torch.device = "cpu") -> CLIPBundle:
    """Build a full CLIP from `NAME[#PRETRAINED]`: an open_clip tag or a local checkpoint file.

    Downloading a pretrained tag needs internet (once, then open_clip's cache); nothing else
    does. Run folders are loaded by `finetune.artifact.load_model`.
    """
    parsed = ModelSpec.parse(spec)
    if parsed.pretrained and not (
        os.path.isfile(parsed.pretrained)
        or open_clip.get_pretrained_cfg(parsed.name, parsed.pretrained)
    ):
        tags = open_clip.list_pretrained_tags_by_model(parsed.name)
        raise ValueError(
            f"{parsed.pretrained!r} is neither a pretrained tag of {parsed.name} "
            f"(known: {', '.join(tags) or 'none'}) nor an existing checkpoint file or run folder"
        )
    model_cfg = effective_model_cfg(parsed.name, parsed.pretrained)
    model, _, _ = open_clip.create_model_and_transforms(
        parsed.name,
        pretrained=parsed.pretrained,
        device=device,
        force_quick_gelu=bool(model_cfg.get("quick_gelu")),
    )
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    preprocess_cfg = merge_preprocess_dict(asdict(PreprocessCfg()), preprocess_cfg)
    return CLIPBundle(
        model=model,
        model_name=parsed.name,
        pretrained=parsed.pretrained,
        model_cfg=model_cfg,
        preprocess_cfg=_jsonable(preprocess_cfg),
        tokenizer=tokenizer_for(parsed.name, model_cfg),
    )


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=list))
