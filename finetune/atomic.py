"""Durable, atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the project writes (run configs, tower weights, checkpoints, reports, index
snapshots) goes through `atomic_path`: the data is written to a temporary file beside the
target, fsynced, renamed over the target, and the folder fsynced so that the rename itself
survives a crash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; it replaces `path` on success.

    For writers that take a file name (safetensors, torch.save, hnswlib, matplotlib). On an
    exception the temporary file is removed and `path` is left as it was.
    """
    target = Path(path)
    tmp = target.with_name(target.name + TEMP_SUFFIX)
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(target.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fsync(path: str | os.PathLike) -> None:
    """fsync a file, or a folder (which makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
