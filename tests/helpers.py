"""Plain helpers the test modules share: importable at collection time (parametrize lists), which
conftest's fixtures are not, and not a test module, so no test imports another."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from PIL import Image

from demo import served_flow


def png(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 32)) -> bytes:
    """PNG bytes of a plain image of that colour and size."""
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def flow_env(run_dir: Path, workspace: Path, image_root: Path) -> dict[str, str]:
    """`demo.served_flow.flow_env` with one torch thread per encoder: 2 shared cores thrash."""
    return served_flow.flow_env(run_dir, workspace, image_root, torch_threads=1)


def captions(shapes: Path) -> dict[str, str]:
    """image id (path relative to the images folder) -> caption, of conftest's `shapes`."""
    with open(shapes / "pairs.csv", newline="") as f:
        return {Path(image).name: caption for caption, image in list(csv.reader(f))[1:]}
