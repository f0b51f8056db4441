"""The CLIP contrastive loss, with negatives from the global batch under torch.distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's features, keeping the autograd graph.

    The differentiable all_gather sends each rank's gradient back to the rank that produced the
    features, so the loss over the global batch trains every rank's encoders.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    return torch.cat(dist_nn.all_gather(features), dim=0)


class CLIPLoss(nn.Module):
    """Symmetric cross-entropy over image->text and text->image logits.

    Takes L2-normalised features and the logit scale already exponentiated (the learnable
    temperature, as CLIP's forward returns it); pair i of the (global) batch is the positive for
    row i. Numerically equal to `open_clip.ClipLoss(gather_with_grad=True)`.
    """

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        image_features = gather_features(image_features)
        text_features = gather_features(text_features)
        logits_per_image = logit_scale * image_features @ text_features.T
        labels = torch.arange(len(logits_per_image), device=logits_per_image.device)
        return (
            F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)
        ) / 2


# The losses `fit` can train with, by the name `FitConfig.loss` (`--loss`) gives. Each is called
# with this process's image and text features (it gathers the other processes') and the
# exponentiated logit scale.
LOSSES = {"CLIPLoss": CLIPLoss}


def create_loss(name: str) -> nn.Module:
    """A new instance of the loss registered as `name`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(LOSSES)}")
    return LOSSES[name]()
