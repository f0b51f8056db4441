"""Shared fixtures: small real image-caption data made on the fly, a trained tiny run, the 16
shapes the Flow tests index, and the one place Flows are started. Plain helpers (usable at
import time) are in helpers.py."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from helpers import flow_env
from helpers import png as make_png

# Tests run on 2 shared cores: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")

SHAPE_COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 30),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 20),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
    "black": (10, 10, 10),
    "white": (255, 255, 255),
}


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
    """`png(colour, size=(40, 32))`: helpers.png, for tests that take it as a fixture."""
    return make_png


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """16 images (8 colours x square/circle) and a pairs.csv with one caption each; read only,
    so one copy serves every module (test_flow.py, test_ui.py)."""
    from PIL import Image, ImageDraw

    root = tmp_path_factory.mktemp("shapes")
    (root / "images").mkdir()
    rows = []
    for colour, rgb in SHAPE_COLOURS.items():
        for shape in ("square", "circle"):
            img = Image.new("RGB", (96, 96), (128, 128, 128))
            draw = ImageDraw.Draw(img)
            (draw.rectangle if shape == "square" else draw.ellipse)([16, 16, 80, 80], fill=rgb)
            img.save(root / "images" / f"{colour}_{shape}.png")
            rows.append((f"a {colour} {shape}", f"images/{colour}_{shape}.png"))
    with open(root / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows([("caption", "image"), *rows])
    return root


@pytest.fixture(scope="module")
def start_flow(tmp_path_factory):
    """`start_flow(name, yml="flow.yml", run_dir=BASE_MODEL_DIR, image_root=None, **settings)`:
    a Flow on 127.0.0.1 and free ports, its workspace and log in a fresh folder `name` (also the
    image root unless one is given), `settings` added to its environment; started, and stopped
    when the module ends. No two modules run the same Flow on a workspace that tests may share
    (tokens, monitoring, towers, counts of an empty index, killed executors differ), so each
    module starts its own, here."""
    from demo import BASE_MODEL_DIR
    from demo.served_flow import ServedFlow

    started: list[ServedFlow] = []

    def start(name, yml="flow.yml", run_dir=BASE_MODEL_DIR, image_root=None, **settings):
        tmp = tmp_path_factory.mktemp(name)
        env = flow_env(run_dir, tmp / "ws", tmp if image_root is None else image_root)
        env.update(settings)
        served = ServedFlow(yml, env, tmp / "log")
        started.append(served)
        return served.start()

    yield start
    for served in reversed(started):
        served.stop()  # a no-op for a Flow a test already killed
