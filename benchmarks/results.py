"""What a benchmark needs beside its measurements: this checkout's packages, and what it keeps
with the table it prints (the command line that produced it, the machine it ran on, its numbers
as JSON).

A benchmark runs as `python benchmarks/NAME.py`, which puts `benchmarks/` on sys.path but not
the repository: importing this module puts the repository first, so that the project's packages
come from this checkout rather than from an installed copy (the venv's editable install may
point at another one). Every module here that imports the project's packages imports this one
first (isort keeps it above them: it sorts with the third-party imports).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from finetune.atomic import write_json  # noqa: E402 - needs the path above


def command_line(script: str | os.PathLike, argv: Sequence[str] | None = None) -> str:
    """The shell line that reruns benchmark `script` (its `__file__`) from the repository root
    with the arguments `argv` its main() got (None: this process's own)."""
    args = sys.argv[1:] if argv is None else list(argv)
    path = Path(script).resolve().relative_to(REPO).as_posix()
    return shlex.join([".venv/bin/python", path, *args])


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
