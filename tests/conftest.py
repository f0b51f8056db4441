"""Shared fixtures: small real image-caption data made on the fly, and a trained tiny run."""

from __future__ import annotations

import os

import pytest

# Tests run on 2 shared cores: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """24 generated images of the generic sample domain, 5 captions each, train/test split."""
    from demo.sample_data import generate_sample_data

    return generate_sample_data(
        "generic", 24, tmp_path_factory.mktemp("sample"), seed=3, progress=False
    )


@pytest.fixture(scope="session")
def tiny_run(sample_dir, tmp_path_factory):
    """A ViT-Tiny-8 fine-tuned for a few steps, with eval: a complete run folder."""
    from finetune import fit

    return fit(
        model="ViT-Tiny-8",
        train_data=str(sample_dir.train_file),
        eval_data=str(sample_dir.test_file),
        output=str(tmp_path_factory.mktemp("runs") / "tiny"),
        epochs=2,
        batch_size=16,
        learning_rate=1e-3,
        optimizer="adamw",
        workers=0,
        progress=False,
    )


@pytest.fixture(scope="session")
def png():
    """`png(colour, size=(40, 32))`: PNG bytes of a plain image of that colour."""
    import io

    from PIL import Image

    def make(colour: tuple[int, int, int], size: tuple[int, int] = (40, 32)) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", size, colour).save(out, "PNG")
        return out.getvalue()

    return make
