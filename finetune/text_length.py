"""Run the text transformer over the batch's real length instead of the full context.

CLIP pads every caption to the context length (77 tokens), but a Flickr caption is 15-30. With
a causal attention mask, position p only ever attends to positions <= p, and argmax pooling
reads the output at the end-of-text token (the highest id in each row). So every position after
the batch's last end-of-text token is computed and thrown away: cutting the token batch, the
positional embedding and the causal mask to `max(argmax) + 1` gives the same features.

That argument needs both a causal mask and argmax pooling; `supports_trimming` decides from the
open_clip model config, and everything else here refuses a module that does not have both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn
from torch.utils.data import default_collate


def supports_trimming(model_cfg: dict[str, Any]) -> bool:
    """Whether a model of this open_clip config may run its text tower at the real length.

    True for OpenAI/LAION-style text transformers (causal mask, argmax pooling, no class token);
    False for HuggingFace text towers, bidirectional towers (SigLIP), class-token pooling (CoCa)
    and any other pooling.
    """
    text_cfg = model_cfg.get("text_cfg") or {}
    if "hf_model_name" in text_cfg or "multimodal_cfg" in model_cfg:
        return False
    return (
        not text_cfg.get("no_causal_mask", False)
        and text_cfg.get("pool_type", "argmax") == "argmax"
        and not text_cfg.get("embed_cls", False)
    )


def real_length(tokens: torch.Tensor) -> int:
    """The length that covers every row's end-of-text token (at least 1)."""
    if tokens.shape[1] == 0:
        raise ValueError("empty token batch")
    return int(tokens.argmax(dim=-1).max().item()) + 1 if len(tokens) else 1


def trim_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """`tokens[:, :real_length(tokens)]`: the padding after the last end-of-text token cut off."""
    return tokens[:, : real_length(tokens)]


def trimmed_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """DataLoader collate for (image, tokens) pairs that trims the token batch."""
    images, tokens = default_collate(batch)
    return images, trim_tokens(tokens)


def text_parts(model: nn.Module) -> nn.Module:
    """The module that holds the text tower's parts: a CLIP itself (they sit at its top level),
    a CustomTextCLIP's `.text`, or a lone `TextTransformer`; checked to be causal + argmax."""
    parts = model.text if isinstance(getattr(model, "text", None), nn.Module) else model
    pool_type = getattr(parts, "text_pool_type", getattr(parts, "pool_type", None))
    if (
        getattr(parts, "attn_mask", None) is None
        or pool_type != "argmax"
        or getattr(parts, "cls_emb", None) is not None
        or not hasattr(parts, "token_embedding")
    ):
        raise ValueError(
            f"{type(model).__name__} has no causal mask with argmax pooling: its text tower must "
            "run at the full context length"
        )
    return parts


def forward_at_length(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Text features (not normalised) for a token batch of any length <= the context length.

    The same steps as open_clip's `CLIP.encode_text` / `TextTransformer.forward`, with the
    positional embedding and the causal mask cut to the batch's length. Rows must have their
    end-of-text token within the batch (see `trim_tokens`).
    """
    parts = text_parts(model)
    length = tokens.shape[1]
    cast_dtype = parts.transformer.get_cast_dtype()
    x = parts.token_embedding(tokens).to(cast_dtype)
    x = x + parts.positional_embedding[:length].to(cast_dtype)
    x = parts.transformer(x, attn_mask=parts.attn_mask[:length, :length])
    x = parts.ln_final(x)
    x = text_global_pool(x, tokens, "argmax")
    projection = parts.text_projection
    if isinstance(projection, nn.Linear):
        x = projection(x)
    elif projection is not None:
        x = x @ projection
    return x


def encode_text(model: nn.Module, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """`model.encode_text(tokens)` computed at the batch's real length (causal + argmax only)."""
    features = forward_at_length(model, trim_tokens(tokens))
    return F.normalize(features, dim=-1) if normalize else features


class RealLengthCLIP(nn.Module):
    """A CLIP whose training forward runs the text tower at the length of the tokens it gets.

    `forward(images, texts)` returns what `CLIP.forward` does (normalised image and text
    features, `logit_scale.exp()`, and `logit_bias` when the model has one); the token batch
    may be cut to its real length (`trimmed_collate`). It owns no parameters of its own, so the
    optimiser, DDP and the checkpoints see exactly the wrapped model's.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        text_parts(model)  # refuse a model whose text tower cannot run shorter
        self.model = model

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        image_features = self.model.encode_image(images, normalize=True)
        text_features = F.normalize(forward_at_length(self.model, texts), dim=-1)
        out = (image_features, text_features, self.model.logit_scale.exp())
        logit_bias = getattr(self.model, "logit_bias", None)
        return out if logit_bias is None else (*out, logit_bias)
