"""Embed an evaluation set with a CLIP and score text<->image retrieval on it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from finetune.metrics import retrieval_metrics
from finetune.models import CLIPBundle
from finetune.text_length import encode_text, supports_trimming
from imagepairs.images import load_image
from imagepairs.pairs import PairSet

DEFAULT_RECALL_K = (1, 5, 10)


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[str], preprocess: Callable):
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(load_image(self.paths[i]))


@torch.inference_mode()
def embed_images(
    model: nn.Module,
    paths: Sequence[str],
    preprocess: Callable,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    loader = DataLoader(_ImageFiles(paths, preprocess), batch_size=batch_size, num_workers=workers)
    chunks = [
        model.encode_image(batch.to(device), normalize=True).float().cpu()
        for batch in tqdm(loader, desc="embed images", disable=not progress, leave=False)
    ]
    return torch.cat(chunks).numpy()


@torch.inference_mode()
def embed_texts(
    model: nn.Module,
    texts: Sequence[str],
    tokenizer: Callable,
    device: torch.device,
    batch_size: int = 256,
    progress: bool = False,
    real_length: bool = False,
) -> np.ndarray:
    """L2-normalised text embeddings; `real_length` runs the text tower at each batch's real
    length (only for models `supports_trimming` allows)."""
    chunks = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="embed texts", disable=not progress, leave=False):
        tokens = tokenizer(list(texts[start : start + batch_size])).to(device)
        if real_length:
            features = encode_text(model, tokens, normalize=True)
        else:
            features = model.encode_text(tokens, normalize=True)
        chunks.append(features.float().cpu())
    return torch.cat(chunks).numpy()


def evaluate_model(
    model: nn.Module,
    data: PairSet,
    preprocess: Callable,
    tokenizer: Callable,
    device: torch.device | str = "cpu",
    recall_k: Sequence[int] = DEFAULT_RECALL_K,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
    real_length: bool = False,
) -> dict[str, float]:
    """Recall@k both ways on `data` (several captions per image are grouped by image).

    `real_length`: run the text tower at each batch's real length (see `finetune.text_length`).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    images, captions, text_to_image = data.retrieval_view()
    image_emb = embed_images(model, images, preprocess, device, batch_size, workers, progress)
    text_emb = embed_texts(
        model, captions, tokenizer, device, progress=progress, real_length=real_length
    )
    model.train(was_training)
    metrics = retrieval_metrics(image_emb, text_emb, text_to_image, recall_k)
    metrics.update(n_images=len(images), n_texts=len(captions))
    return metrics


def evaluate_bundle(
    bundle: CLIPBundle,
    data: PairSet,
    recall_k: Sequence[int] = DEFAULT_RECALL_K,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """`evaluate_model` with the bundle's own preprocessing, tokenizer and device."""
    device = next(bundle.model.parameters()).device
    return evaluate_model(
        bundle.model,
        data,
        bundle.preprocess(),
        bundle.tokenizer,
        device,
        recall_k,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        real_length=supports_trimming(bundle.model_cfg),
    )


def evaluate_towers(
    text_tower: Any,
    vision_tower: Any,
    data: PairSet,
    recall_k: Sequence[int] = DEFAULT_RECALL_K,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, float]:
    """Recall@k both ways with two loaded towers of any runtime (torch, onnx, onnx-int8).

    The towers only need `encode(items, batch_size)`, as `finetune.towers.load_tower` returns.
    """
    images, captions, text_to_image = data.retrieval_view()
    image_emb = _encode_in_batches(vision_tower, images, batch_size, "embed images", progress)
    text_emb = _encode_in_batches(text_tower, captions, batch_size, "embed texts", progress)
    metrics = retrieval_metrics(image_emb, text_emb, text_to_image, recall_k)
    metrics.update(n_images=len(images), n_texts=len(captions))
    return metrics


def _encode_in_batches(
    tower: Any, items: Sequence[Any], batch_size: int, desc: str, progress: bool
) -> np.ndarray:
    starts = range(0, len(items), batch_size)
    chunks = [
        tower.encode(items[start : start + batch_size], batch_size=batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, tower.embed_dim), np.float32)


def default_workers() -> int:
    return min(4, max(0, (os.cpu_count() or 1) - 1))
