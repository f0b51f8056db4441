"""Each tower loads alone and embeds exactly as the full model does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from docarray import DocList

import finetune
from client.wire_docs import SearchDoc
from finetune.artifact import load_model, save_towers
from finetune.models import ModelSpec, create_clip
from finetune.towers import load_tower
from imagepairs.images import load_image


def _full_model_embeddings(run_dir, texts, image_paths):
    bundle = load_model(str(run_dir))
    bundle.model.eval()
    with torch.no_grad():
        t = bundle.model.encode_text(bundle.tokenizer(texts), normalize=True).numpy()
        images = torch.stack([bundle.preprocess()(load_image(p)) for p in image_paths])
        i = bundle.model.encode_image(images, normalize=True).numpy()
    return t, i


def test_towers_hold_only_their_own_weights(tiny_run):
    text_keys = json.loads((tiny_run.text_tower / "config.json").read_text())
    assert text_keys["tower"] == "clip-text"
    from safetensors import safe_open

    with safe_open(str(tiny_run.text_tower / "model.safetensors"), "pt") as f:
        assert not any(k.startswith("visual") or "logit" in k for k in f.keys())
        assert "token_embedding.weight" in f.keys()
    with safe_open(str(tiny_run.vision_tower / "model.safetensors"), "pt") as f:
        assert not {"token_embedding.weight", "text_projection", "ln_final.weight"} & set(f.keys())
        assert "conv1.weight" in f.keys()


def test_lone_towers_equal_the_full_model(tiny_run, sample_dir):
    texts = ["a red circle on the left", "a small blue square", "x" * 500]  # last: truncated
    images = sorted(sample_dir.images_dir.iterdir())[:5]
    ref_text, ref_image = _full_model_embeddings(tiny_run.output, texts, images)

    text_tower = finetune.get_model(tiny_run.output, select_model="clip-text", device="cpu")
    vision_tower = finetune.get_model(
        tiny_run.vision_tower, select_model="clip-vision", device="cpu"
    )
    # only its own tower is built
    assert not any("conv1" in n for n, _ in text_tower.named_parameters())
    assert not any("token_embedding" in n for n, _ in vision_tower.named_parameters())

    text = finetune.encode(text_tower, texts)
    image = finetune.encode(vision_tower, [str(p) for p in images])
    np.testing.assert_allclose(text, ref_text, atol=1e-5)
    np.testing.assert_allclose(image, ref_image, atol=1e-5)
    assert text.dtype == np.float32 and np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)


def test_encode_a_doclist_routes_text_and_images(tiny_run, sample_dir):
    bundle = finetune.get_model(tiny_run.output, device="cpu")
    image_path = str(next(iter(sorted(sample_dir.images_dir.iterdir()))))
    docs = DocList[SearchDoc]([SearchDoc(text="a red circle"), SearchDoc(uri=image_path)])
    finetune.encode(bundle, docs)
    assert docs[0].embedding.shape == docs[1].embedding.shape == (64,)
    vision = finetune.get_model(tiny_run.output, select_model="clip-vision", device="cpu")
    np.testing.assert_allclose(
        docs[1].embedding, finetune.encode(vision, [image_path])[0], atol=1e-5
    )


def test_fp16_saved_towers_load_as_float32(tmp_path):
    bundle = create_clip("ViT-Tiny-8")
    save_towers(bundle, tmp_path, dtype=torch.float16)
    tower = load_tower(tmp_path / "clip-text", "clip-text")
    assert tower.dtype == torch.float32
    ref = bundle.model.encode_text(bundle.tokenizer(["a cat"]), normalize=True).detach().numpy()
    np.testing.assert_allclose(tower.encode(["a cat"]), ref, atol=2e-3)


def test_wrong_tower_and_bad_sources_are_clear_errors(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="holds the clip-text tower, not clip-vision"):
        load_tower(tiny_run.text_tower, "clip-vision")
    with pytest.raises(ValueError, match="tower must be one of"):
        load_tower(tiny_run.output, "clip-audio")
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        load_tower(tmp_path, "clip-text")
    with pytest.raises(ValueError, match="neither a pretrained tag of ViT-Tiny-8"):
        create_clip("ViT-Tiny-8#no-such-tag")
    with pytest.raises(ValueError, match="unknown model architecture"):
        create_clip("ViT-Nope-1")


def test_model_spec_parsing():
    assert ModelSpec.parse("ViT-B-32#openai") == ModelSpec("ViT-B-32", "openai")
    assert ModelSpec.parse("ViT-B-16-plus-240#laion400m_e32").pretrained == "laion400m_e32"
    assert ModelSpec.parse("ViT-Tiny-8") == ModelSpec("ViT-Tiny-8", None)
    assert str(ModelSpec("RN50", "openai")) == "RN50#openai"


def test_a_run_folder_is_a_pretrained_source(tiny_run):
    bundle = load_model(f"ViT-Tiny-8#{tiny_run.output}")
    assert bundle.model_name == "ViT-Tiny-8"
    with pytest.raises(ValueError, match="holds a ViT-Tiny-8, not a RN50"):
        load_model(f"RN50#{tiny_run.output}")
