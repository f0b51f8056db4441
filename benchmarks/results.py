"""What every benchmark keeps beside the table it prints: the machine it ran on, and its numbers
as JSON."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from finetune.atomic import write_json


def machine() -> dict[str, Any]:
    """What ran a benchmark: Python, torch, CPUs, so that numbers can be compared."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor(),
    }


def save_json(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `result` to `path` (its folder made if need be) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"\nwrote {out}")
