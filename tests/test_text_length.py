"""The text tower at the batch's real length computes what it does at the full context length."""

from __future__ import annotations

import copy

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import _build_text_tower, get_cast_dtype

import finetune
from finetune.artifact import load_model
from finetune.loss import create_loss
from finetune.models import create_clip
from finetune.text_length import (
    RealLengthCLIP,
    encode_text,
    real_length,
    supports_trimming,
    text_parts,
    trim_tokens,
    trimmed_collate,
)
from finetune.towers import load_tower, tower_from_bundle

SHORT_AND_LONG = [
    "a dog",
    "a red circle on the left of a small blue square in a green field at night",
    "cat",
]
TOO_LONG = " ".join(["word"] * 200)  # far more than 77 tokens: truncated by the tokenizer


def _built_tower_allows(cfg: dict) -> bool:
    """What the text tower open_clip builds from `cfg` allows (built on the meta device: no
    memory, no weights); HF text towers are never causal + argmax."""
    if "hf_model_name" in cfg["text_cfg"]:
        return False
    with torch.device("meta"):
        tower = _build_text_tower(
            cfg["embed_dim"], cfg["text_cfg"], bool(cfg.get("quick_gelu")), get_cast_dtype("fp32")
        )
    try:
        text_parts(tower)
    except ValueError:
        return False
    return True


def test_every_registered_config_takes_the_path_its_text_tower_allows():
    paths = {}
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name)
        paths[name] = supports_trimming(cfg)
        assert paths[name] == _built_tower_allows(cfg), name
    trimmed = {n for n, t in paths.items() if t}
    # OpenAI / LAION CLIP text towers (causal mask, argmax pooling) run at the real length ...
    assert {"ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", "ViT-Tiny-8", "EVA02-B-16"} <= trimmed
    # ... SigLIP (bidirectional, last-token pooling), HF text towers, CoCa and eos pooling don't
    full_length = {
        "ViT-B-16-SigLIP",
        "ViT-SO400M-14-SigLIP",
        "ViT-B-16-SigLIP2",
        "xlm-roberta-base-ViT-B-32",
        "roberta-ViT-B-32",
        "coca_ViT-B-32",
        "MobileCLIP-S1",
        "ViT-H-14-worldwide",
    }
    assert not full_length & trimmed
    print(f"\nreal length: {len(trimmed)} configs; full length: {len(paths) - len(trimmed)}")
    print("full length:", ", ".join(sorted(n for n, t in paths.items() if not t)))


def test_real_length_covers_every_end_of_text_token():
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    tokens = tokenizer(SHORT_AND_LONG)
    eot = tokens.argmax(dim=-1)
    assert real_length(tokens) == int(eot.max()) + 1 < 77
    assert real_length(tokenizer(["a"])) == 3  # start, word, end
    trimmed = trim_tokens(tokens)
    assert torch.equal(trimmed.argmax(dim=-1), eot)
    # a caption longer than the context is truncated as before: it keeps the whole length
    assert real_length(tokenizer([TOO_LONG, "a dog"])) == 77
    assert real_length(open_clip.get_tokenizer("ViT-Tiny-8")([TOO_LONG])) == 32


def test_a_bidirectional_text_tower_is_refused():
    cfg = open_clip.get_model_config("ViT-B-16-SigLIP")
    text_cfg = {**cfg["text_cfg"], "width": 64, "heads": 2, "layers": 1, "vocab_size": 1000}
    siglip_text = _build_text_tower(32, text_cfg, False, get_cast_dtype("fp32"))
    with pytest.raises(ValueError, match="must run at the full context length"):
        text_parts(siglip_text)


def test_lone_tower_and_full_clip_equal_the_77_token_embeddings(tiny_run):
    texts = [*SHORT_AND_LONG, TOO_LONG]
    bundle = load_model(str(tiny_run.output))
    bundle.model.eval()
    tokens = bundle.tokenizer(texts)
    with torch.no_grad():
        reference = bundle.model.encode_text(tokens, normalize=True).numpy()
        full_model = encode_text(bundle.model, tokens, normalize=True).numpy()
    np.testing.assert_allclose(full_model, reference, atol=1e-5)

    lone = load_tower(tiny_run.text_tower, "clip-text")
    from_bundle = tower_from_bundle(bundle, "clip-text")
    assert lone.trims and from_bundle.trims
    np.testing.assert_allclose(lone.encode(texts), reference, atol=1e-5)
    np.testing.assert_allclose(from_bundle.encode(texts), reference, atol=1e-5)
    np.testing.assert_allclose(finetune.encode(lone, texts[:1]), reference[:1], atol=1e-5)
    with torch.no_grad():
        short_batch = lone(lone.prepare(texts[:1]))  # one short caption: its own length
    np.testing.assert_allclose(short_batch.numpy(), reference[:1], atol=1e-5)


def test_vit_b_32_text_tower_equals_its_77_token_forward():
    torch.manual_seed(0)
    bundle = create_clip("ViT-B-32")
    bundle.model.eval()
    tokens = bundle.tokenizer(SHORT_AND_LONG)
    with torch.no_grad():
        reference = bundle.model.encode_text(tokens, normalize=True)
        ours = encode_text(bundle.model, tokens, normalize=True)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_training_loss_and_gradients_equal_the_padded_forward():
    torch.manual_seed(0)
    bundle = create_clip("ViT-Tiny-8")
    padded_model = bundle.model.train()
    real_model = copy.deepcopy(padded_model)
    images = torch.randn(4, 3, 64, 64)
    tokens = bundle.tokenizer([*SHORT_AND_LONG, TOO_LONG[:60]])
    loss_fn = create_loss("CLIPLoss")

    # the loader hands over (image, tokens) pairs; the collate cuts the batch's padding
    collated_images, short_tokens = trimmed_collate(list(zip(images, tokens, strict=True)))
    assert short_tokens.shape[1] == real_length(tokens) < tokens.shape[1]
    torch.testing.assert_close(collated_images, images)

    padded_loss = loss_fn(*padded_model(images, tokens)[:3])
    padded_loss.backward()
    real_loss = loss_fn(*RealLengthCLIP(real_model)(images, short_tokens)[:3])
    real_loss.backward()

    torch.testing.assert_close(real_loss, padded_loss, atol=1e-6, rtol=1e-6)
    grads = dict(real_model.named_parameters())
    for name, p in padded_model.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, atol=1e-6, rtol=1e-4, msg=name)
    # the positions after the last end-of-text token never mattered: their gradient is zero
    assert not padded_model.positional_embedding.grad[short_tokens.shape[1] :].any()


def test_a_mixed_batch_with_an_over_long_caption_keeps_the_context_length():
    bundle = create_clip("ViT-Tiny-8")
    bundle.model.eval()
    tokens = bundle.tokenizer(["a dog", TOO_LONG])
    assert trim_tokens(tokens).shape[1] == bundle.model.context_length == 32
    with torch.no_grad():
        torch.testing.assert_close(
            encode_text(bundle.model, tokens, normalize=True),
            bundle.model.encode_text(tokens, normalize=True),
            atol=1e-5,
            rtol=0,
        )
