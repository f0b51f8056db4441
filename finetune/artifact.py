"""The run folder `finetune fit` writes, and the two towers in it that each load alone.

    RUN/config.json             the run: fit options, model config, preprocessing, temperature
    RUN/clip-text/              config.json + model.safetensors (text weights only)
    RUN/clip-vision/            config.json + model.safetensors (vision weights only)

A tower folder holds everything needed to rebuild that tower and nothing of the other one, so
a text encoder service never reads the vision weights and vice versa. Imports go one way:
`models` (specs, open_clip) -> `artifact` (this module) -> `towers` (encoding).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from finetune import atomic
from finetune.models import (
    CLIPBundle,
    ModelSpec,
    build_model,
    create_clip,
    ensure_registered,
    tokenizer_for,
)
from finetune.tower_ids import TEXT_TOWER, TOWER_NAMES, VISION_TOWER  # noqa: F401 - re-exported

RUN_CONFIG = "config.json"
TOWER_CONFIG = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOWER_FORMAT_VERSION = 1
# A tower's identity, in its config.json: see `fingerprint`.
FINGERPRINT = "fingerprint"
FINGERPRINT_CHARS = 16
# The config keys that decide what a tower computes (paths and versions do not).
_IDENTITY_KEYS = ("tower", "model_name", "model_cfg", "context_length", "preprocess_cfg")
# Exported beside the weights by `python -m finetune export` (see finetune.onnx_export).
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
ONNX_FILES = {"onnx": ONNX_FILE, "onnx-int8": ONNX_INT8_FILE}
RUNTIMES = ("torch", *ONNX_FILES)


def is_run_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / RUN_CONFIG).is_file() and (p / TEXT_TOWER).is_dir() and (p / VISION_TOWER).is_dir()


def is_tower_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / WEIGHTS_FILE).is_file()


def load_model(source: str | os.PathLike, device: str | torch.device = "cpu") -> CLIPBundle:
    """A full CLIP from a run folder, `NAME#RUN_FOLDER`, or any `NAME[#PRETRAINED]` spec."""
    source = os.fspath(source)
    if is_run_dir(source):
        return load_run(source, device=device)
    spec = ModelSpec.parse(source)
    if spec.pretrained and is_run_dir(spec.pretrained):
        bundle = load_run(spec.pretrained, device=device)
        if bundle.model_name != spec.name:
            raise ValueError(
                f"run folder {spec.pretrained} holds a {bundle.model_name}, not a {spec.name}"
            )
        return bundle
    return create_clip(source, device=device)


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


def save_towers(
    bundle: CLIPBundle, out_dir: str | os.PathLike, dtype: torch.dtype | None = None
) -> dict[str, Path]:
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
        (TEXT_TOWER, text_state, {"context_length": context_length(bundle.model_cfg)}),
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
        with atomic.atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file(tensors, os.fspath(tmp))
        config = {"tower": name, **common, **extra}
        config[FINGERPRINT] = fingerprint(config, tensors)
        atomic.write_json(folder / TOWER_CONFIG, config)
        paths[name] = folder
    return paths


def read_tower_config(folder: str | os.PathLike, tower: str) -> dict[str, Any]:
    """A tower folder's config.json, checked to be the asked tower, with its `fingerprint`
    (computed from the weights file for folders written before fingerprints were recorded)."""
    config = atomic.read_json(Path(folder) / TOWER_CONFIG)
    if config.get("tower") != tower:
        raise ValueError(f"{folder} holds the {config.get('tower')} tower, not {tower}")
    ensure_registered(config["model_name"], config["model_cfg"])
    if not config.get(FINGERPRINT):
        config[FINGERPRINT] = fingerprint(config, load_file(os.fspath(Path(folder) / WEIGHTS_FILE)))
    return config


def fingerprint(config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> str:
    """What identifies a tower: a hash of what decides its embeddings, its config's identity
    keys and its weights as the tower computes with them (names, shapes, float32 values, as
    `read_tower_state` loads them), `FINGERPRINT_CHARS` hex digits. Equal towers embed into
    the same space; the ONNX and int8 graphs exported from a tower folder read its config, so
    they carry its fingerprint."""
    digest = hashlib.sha256()
    identity = {key: config[key] for key in _IDENTITY_KEYS if config.get(key) is not None}
    digest.update(json.dumps(identity, sort_keys=True).encode("utf-8"))
    for name in sorted(state):
        tensor = state[name].detach().cpu()
        tensor = (tensor.float() if tensor.is_floating_point() else tensor).contiguous()
        digest.update(f"\n{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def read_tower_state(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tower's weights as float32 tensors (towers may be stored in fp16 to save space)."""
    state = load_file(os.fspath(Path(folder) / WEIGHTS_FILE))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_towers_into(model: nn.Module, run_dir: str | os.PathLike) -> None:
    """Load a run folder's text and vision tower weights into a full CLIP (not the temperature)."""
    prefix = "text." if hasattr(model, "text") else ""
    state = {f"{prefix}{k}": v for k, v in read_tower_state(Path(run_dir) / TEXT_TOWER).items()}
    state.update(
        {f"visual.{k}": v for k, v in read_tower_state(Path(run_dir) / VISION_TOWER).items()}
    )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or not set(missing) <= {"logit_scale", "logit_bias"}:
        raise ValueError(
            f"{run_dir}: tower weights do not fit the model ({missing=}, {unexpected=})"
        )


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> CLIPBundle:
    """Rebuild the full CLIP saved by `finetune fit` from its two tower folders."""
    run_dir = Path(run_dir)
    cfg = atomic.read_json(run_dir / RUN_CONFIG)
    model_cfg = cfg["model_cfg"]
    ensure_registered(cfg["model_name"], model_cfg)
    model = build_model(model_cfg)
    load_towers_into(model, run_dir)
    with torch.no_grad():
        model.logit_scale.fill_(cfg["logit_scale"])
        if getattr(model, "logit_bias", None) is not None:
            model.logit_bias.fill_(cfg["logit_bias"])
    model.to(device)
    open_clip.set_model_preprocess_cfg(model, cfg["preprocess_cfg"])
    return CLIPBundle(
        model=model,
        model_name=cfg["model_name"],
        pretrained=os.fspath(run_dir),
        model_cfg=model_cfg,
        preprocess_cfg=cfg["preprocess_cfg"],
        tokenizer=tokenizer_for(cfg["model_name"], model_cfg),
    )


def context_length(model_cfg: dict[str, Any]) -> int:
    """The text tower's context length (tokens) in an open_clip model config."""
    return int(
        model_cfg["text_cfg"].get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH)
    )
