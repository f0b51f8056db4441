"""Small JPEG thumbnails of indexed images, kept beside the index so that a search can show
its results even where the original files are out of reach.

The image encoder already decodes every image it embeds; `make_thumbnail` shrinks that
decoded image (the long side to `THUMBNAIL_SIZE` pixels) and `ThumbnailStore` keeps one per
id in SQLite (WAL, `synchronous=FULL`, each batch one transaction). The index writes a
document's thumbnail right after the document itself and before the request is answered, so
an acknowledged document has its thumbnail; deleting the document deletes it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

THUMBNAIL_SIZE = 256
JPEG_QUALITY = 80
DB_FILE = "thumbnails.sqlite"


def make_thumbnail(image: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """JPEG bytes of `image` with its long side at most `size` pixels."""
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue()


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


class ThumbnailStore:
    """id -> JPEG bytes, durable; thread-safe."""

    def __init__(self, path: str | os.PathLike) -> None:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(folder / DB_FILE, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS thumbnails (id TEXT PRIMARY KEY, jpeg BLOB NOT NULL)"
        )

    def put(self, items: Sequence[tuple[str, bytes | None]]) -> None:
        """Store each id's thumbnail, or remove it where the new version has none."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR REPLACE INTO thumbnails(id, jpeg) VALUES (?, ?)",
                [(i, jpeg) for i, jpeg in items if jpeg is not None],
            )
            self._delete([i for i, jpeg in items if jpeg is None])

    def delete(self, ids: Sequence[str]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._delete(ids)

    def get(self, ids: Sequence[str]) -> dict[str, bytes]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, jpeg FROM thumbnails WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(ids)),),
            )
            return dict(rows.fetchall())

    def stats(self) -> dict[str, int]:
        """How many thumbnails and their bytes in all."""
        with self._lock:
            count, total = self._db.execute(
                "SELECT count(*), coalesce(sum(length(jpeg)), 0) FROM thumbnails"
            ).fetchone()
        return {"thumbnails": count, "thumbnail_bytes": total}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _delete(self, ids: Sequence[str]) -> None:
        if ids:
            self._db.execute(
                "DELETE FROM thumbnails WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(ids)),),
            )
