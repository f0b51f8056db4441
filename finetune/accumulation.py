"""One optimiser step's backward pass over micro-batches that keeps the whole batch as the
contrastive loss's negatives (as open_clip's --accum-freq does)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from finetune.distributed import unwrap

MicroBatch = tuple[torch.Tensor, torch.Tensor]  # images, tokens


def micro_batches(
    loader: Iterable[MicroBatch], per_step: int, device: torch.device
) -> Iterator[list[MicroBatch]]:
    """The loader's batches on `device`, `per_step` at a time (the last group may be shorter)."""
    group: list[MicroBatch] = []
    for images, texts in loader:
        group.append((images.to(device, non_blocking=True), texts.to(device, non_blocking=True)))
        if len(group) == per_step:
            yield group
            group = []
    if group:
        yield group


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager:
    if precision == "fp32":
        return nullcontext()
    dtype = torch.float16 if precision == "amp" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def contrastive_backward(
    model: nn.Module,
    batch: list[MicroBatch],
    loss_fn: nn.Module,
    scaler: torch.amp.GradScaler,
    amp: AbstractContextManager,
) -> torch.Tensor:
    """Backpropagate the contrastive loss of the whole (accumulated) batch; returns the loss.

    With several micro-batches, the features of all of them are first computed without
    gradients; then each micro-batch is run again with gradients and its fresh features are
    spliced in among the cached ones, so every micro-batch's loss has the whole batch as
    negatives. The per-micro-batch gradients sum to the full-batch gradient, except for the
    temperature, which each pass sees whole.
    """
    if len(batch) == 1:
        images, texts = batch[0]
        with amp:
            image_features, text_features, logit_scale = model(images, texts)[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
        scaler.scale(loss).backward()
        return loss
    with torch.no_grad(), amp:
        cached_images, cached_texts = zip(
            *(model(images, texts)[:2] for images, texts in batch), strict=True
        )
    for j, (images, texts) in enumerate(batch):
        with _sync_gradients_if(j + 1 == len(batch), model):
            with amp:
                image_features, text_features, logit_scale = model(images, texts)[:3]
                all_images = _spliced(cached_images, j, image_features)
                all_texts = _spliced(cached_texts, j, text_features)
                loss = loss_fn(all_images, all_texts, logit_scale)
            scaler.scale(loss).backward()
    temperature = unwrap(model).logit_scale
    if temperature.grad is not None:
        temperature.grad /= len(batch)
    return loss


def _spliced(cached: tuple[torch.Tensor, ...], j: int, fresh: torch.Tensor) -> torch.Tensor:
    """The whole batch's features, micro-batch j's being `fresh` (with gradients)."""
    return torch.cat([fresh if k == j else features for k, features in enumerate(cached)])


def _sync_gradients_if(last: bool, model: nn.Module) -> AbstractContextManager:
    # DDP all-reduces the gradients once, after the last micro-batch's backward.
    if last or not isinstance(model, DistributedDataParallel):
        return nullcontext()
    return model.no_sync()
