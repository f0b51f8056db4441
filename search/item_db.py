"""The store's SQLite database, its source of truth: items, their vectors, tombstones and meta.

Every write batch is one SQLite transaction (WAL, ``synchronous=FULL``) and `ItemDB.commit`
returns only after it committed, so a ``kill -9`` at any moment loses nothing acknowledged.
Each committed batch takes the next number of a change sequence: live rows carry the ``seq`` of
their last change, deletions leave a tombstone with theirs, so a reader that saw the database at
one number can ask for what changed since (`deleted_since`, `vectors_since`).

Tables: ``items`` (label = rowid, id, seq, and one column per stored field: `COLUMNS`), ``vectors``
(label, float32 blob), ``tombstones`` (label, seq) and ``meta`` (the format version, dim, the
last seq and the next free label, and the callers' values under ``user.``). Labels are never
given to a second id: re-indexing a live id keeps its label, an id that comes back after a
delete gets a fresh one, so a label is either live in ``items`` or dead in ``tombstones``.

It knows nothing of the graph that serves queries (`search.hnsw_graph` reads its vectors) and
is not thread-safe: `search.hnsw_store.HNSWStore` serialises the calls.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

DB_FILE = "store.sqlite"
FORMAT = 2  # version of the tables' layout, checked on open (1 is migrated, see `_migrate_from_1`)
# `embedded_by` of the rows a format-1 store held: what made their embedding was not recorded.
UNRECORDED = "unrecorded"
_USER_META = "user."  # prefix of the callers' keys in the meta table (`user_meta`)

# 16 KiB pages: with SQLite's default 4 KiB, one page holds a single 2 KiB (dim 512) vector row.
_PAGE_SIZE = 16_384
# Vectors live apart from the other fields so that the rows a search reads (by label, the rowid)
# are small and dense: a wide table that holds them too made those reads slower.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    label INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    uri TEXT,
    text TEXT,
    tags TEXT NOT NULL DEFAULT '{}',
    embedded_by TEXT
);
CREATE INDEX IF NOT EXISTS items_seq ON items(seq);
CREATE TABLE IF NOT EXISTS vectors (label INTEGER PRIMARY KEY, embedding BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones (label INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_seq ON tombstones(seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Record(NamedTuple):
    """A stored item as returned by `HNSWStore.get`: its id, ``embedding`` (the normalised
    vector) and one value per `COLUMNS` (``embedded_by``: what the writer said made the
    embedding, None when it said nothing)."""

    id: str
    embedding: np.ndarray
    uri: str | None
    text: str | None
    tags: dict[str, Any]
    embedded_by: str | None = None


# The stored fields beside the id and the vector, a column of ``items`` each: the fields that
# `imagepairs.documents` marks as stored (a test holds the two equal). A column missing from an
# older database is added on open, empty. ``tags`` holds JSON; the others text.
COLUMNS: tuple[str, ...] = Record._fields[2:]
JSON_COLUMNS = frozenset({"tags"})


class Row(NamedTuple):
    """A row ready to be written: label assigned, vector normalised, and one database value per
    `COLUMNS` (``tags`` as JSON text)."""

    id: str
    label: int
    vector: np.ndarray
    uri: str | None
    text: str | None
    tags: str
    embedded_by: str | None = None

    def columns(self) -> tuple[Any, ...]:
        """The values of `COLUMNS`, in order."""
        return self[3:]


assert Row._fields[3:] == COLUMNS, "a Row has one value per column"
_COLUMN_LIST = ", ".join(COLUMNS)


class ItemDB:
    """The SQLite database of a store in ``directory``: open, checked and migrated.

    ``dim`` (None until the first vector), ``seq`` (the last committed change) and
    ``next_label`` are plain attributes; the store fixes ``dim`` with the first valid vector,
    and `commit` persists all three.
    """

    def __init__(self, directory: Path, dim: int | None) -> None:
        """Open (or create) ``directory``'s database; ``dim`` must agree with a stored one."""
        self.directory = directory
        self._db = _connect(directory / DB_FILE)
        try:
            self.dim = self._init_meta(dim)
            self.seq = int(self._meta("last_seq", "0"))
            self.next_label = int(self._meta("next_label", "0"))
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ reads

    def user_meta(self, key: str) -> str | None:
        """A caller's value committed with a batch (`commit`'s ``meta``), None when never."""
        return self._meta(f"{_USER_META}{key}")

    def labels_of(self, ids: list[str]) -> dict[str, int]:
        """The labels of those ``ids`` that are live."""
        if not ids:
            return {}
        # json_each binds any number of values as one parameter
        sql = "SELECT id, label FROM items WHERE id IN (SELECT value FROM json_each(?))"
        return dict(self._db.execute(sql, (json.dumps(ids),)).fetchall())

    def fetch(self, ids: list[str]) -> dict[str, tuple[int, Record]]:
        """``id -> (label, record)`` of those ``ids`` that are live (non-strings are skipped)."""
        sql = (
            f"SELECT id, label, embedding, {_COLUMN_LIST} FROM items "
            "JOIN vectors USING (label) WHERE id IN (SELECT value FROM json_each(?))"
        )
        rows = self._db.execute(sql, (json.dumps([i for i in ids if isinstance(i, str)]),))
        return {
            doc_id: (label, _record(doc_id, blob, values)) for doc_id, label, blob, *values in rows
        }

    def field_rows(self, columns: tuple[str, ...]) -> Iterator[tuple[Any, ...]]:
        """``(label, id, *columns)`` of every live item (``tags`` as JSON text): what a search
        returns."""
        unknown = set(columns) - set(COLUMNS)
        if unknown:
            raise ValueError(f"no such columns: {sorted(unknown)}")
        return self._db.execute(f"SELECT label, id, {', '.join(columns)} FROM items")

    def vectors_of(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(labels found, their vectors as rows of a matrix)`` for the live ``labels``."""
        rows = self._db.execute(
            "SELECT label, embedding FROM vectors WHERE label IN (SELECT value FROM json_each(?))",
            (json.dumps(labels.tolist()),),
        ).fetchall()
        found = np.fromiter((label for label, _ in rows), np.int64, len(rows))
        vectors = np.frombuffer(b"".join(blob for _, blob in rows), np.float32)
        return found, vectors.reshape(len(rows), self.dim)

    def all_vectors(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(label, vector)`` of every live item, by label."""
        rows = self._db.execute("SELECT label, embedding FROM vectors ORDER BY label")
        return ((label, np.frombuffer(blob, np.float32)) for label, blob in rows)

    def vectors_since(self, seq: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(label, vector)`` of the live items changed after change ``seq``, by label."""
        rows = self._db.execute(
            "SELECT label, embedding FROM items JOIN vectors USING (label) WHERE seq > ? "
            "ORDER BY label",
            (seq,),
        )
        return ((label, np.frombuffer(blob, np.float32)) for label, blob in rows)

    def deleted_since(self, seq: int) -> list[int]:
        """The labels deleted after change ``seq`` (as far as tombstones are kept)."""
        rows = self._db.execute("SELECT label FROM tombstones WHERE seq > ?", (seq,))
        return [label for (label,) in rows]

    # ------------------------------------------------------------------ writes

    def take_label(self) -> int:
        """A label no id ever had (persisted by the next `commit`)."""
        label = self.next_label
        self.next_label += 1
        return label

    def commit(
        self,
        rows: list[Row],
        reindex: list[Row],
        deletes: list[int],
        meta: Mapping[str, str] | None = None,
    ) -> int:
        """Write one batch in one transaction and return its change number once committed.

        ``rows`` are upserted (all fields but the vector), ``reindex`` the rows whose vector
        is written too, ``deletes`` the labels to delete (each leaves a tombstone), ``meta``
        the caller's values (`user_meta`), written when there are rows.
        """
        seq = self.seq + 1
        with _transaction(self._db):
            self._db.executemany(_UPSERT, [(r.label, r.id, seq, *r.columns()) for r in rows])
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors(label, embedding) VALUES (?, ?)",
                [(r.label, r.vector.tobytes()) for r in reindex],
            )
            if deletes:
                self._delete(deletes, seq)
            self._set_meta(last_seq=seq, next_label=self.next_label, dim=self.dim)
            if rows and meta:
                self._set_meta(**{f"{_USER_META}{k}": v for k, v in meta.items()})
        self.seq = seq
        return seq

    def prune_tombstones(self, seq: int) -> None:
        """Drop the tombstones up to change ``seq`` (once no snapshot older than it is left)."""
        with _transaction(self._db):
            self._db.execute("DELETE FROM tombstones WHERE seq <= ?", (seq,))

    def _delete(self, labels: list[int], seq: int) -> None:
        for table in ("items", "vectors"):
            self._db.execute(
                f"DELETE FROM {table} WHERE label IN (SELECT value FROM json_each(?))",
                (json.dumps(labels),),
            )
        self._db.executemany(
            "INSERT OR REPLACE INTO tombstones(label, seq) VALUES (?, ?)",
            [(label, seq) for label in labels],
        )

    # ------------------------------------------------------------------ meta and format

    def _meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def _set_meta(self, **values: Any) -> None:
        self._db.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(key, str(value)) for key, value in values.items() if value is not None],
        )

    def _init_meta(self, dim: int | None) -> int | None:
        """Check, or record for a new store, the format version and the dimension."""
        stored_format, stored_dim = self._meta("format"), self._meta("dim")
        if stored_format is not None and int(stored_format) == 1:
            self._migrate_from_1()
        elif stored_format is not None and int(stored_format) != FORMAT:
            raise ValueError(
                f"the store at {self.directory} has format {stored_format}, which this version "
                f"(format {FORMAT}) cannot read: open it with the version that wrote it"
            )
        self._add_missing_columns()
        if stored_dim is not None and dim is not None and int(stored_dim) != dim:
            raise ValueError(f"the store at {self.directory} has dim {stored_dim}, not {dim}")
        dim = int(stored_dim) if stored_dim is not None else dim
        with _transaction(self._db):
            self._set_meta(format=FORMAT, dim=dim)
        return dim

    def _migrate_from_1(self) -> None:
        """Format 1 had no ``embedded_by``: add it, marking the existing rows `UNRECORDED`."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(items)")}
        with _transaction(self._db):
            if "embedded_by" not in columns:
                self._db.execute("ALTER TABLE items ADD COLUMN embedded_by TEXT")
            self._db.execute("UPDATE items SET embedded_by = ?", (UNRECORDED,))
            self._set_meta(format=FORMAT)

    def _add_missing_columns(self) -> None:
        """Add the `COLUMNS` a database written before them lacks (their values empty)."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(items)")}
        missing = [c for c in COLUMNS if c not in present]
        if missing:
            with _transaction(self._db):
                for column in missing:
                    self._db.execute(f"ALTER TABLE items ADD COLUMN {column} TEXT")


_UPSERT = (
    f"INSERT INTO items(label, id, seq, {_COLUMN_LIST}) "
    f"VALUES (?, ?, ?{', ?' * len(COLUMNS)}) "
    "ON CONFLICT(label) DO UPDATE SET seq = excluded.seq, "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS)
)


def _record(doc_id: str, blob: bytes, values: list[Any]) -> Record:
    """A `Record` from a row's vector and `COLUMNS` values (``tags`` decoded)."""
    decoded = [
        json.loads(v or "{}") if c in JSON_COLUMNS else v
        for c, v in zip(COLUMNS, values, strict=True)
    ]
    return Record(doc_id, np.frombuffer(blob, np.float32), *decoded)


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode with explicit BEGIN/COMMIT; the store's lock guards cross-thread use.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # no effect on an existing database
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    return db


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
