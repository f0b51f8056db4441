"""A durable cosine vector index: SQLite is the source of truth, an hnswlib graph serves queries.

Every write batch is one SQLite transaction (WAL, ``synchronous=FULL``) and a write method
returns only after it committed, so a ``kill -9`` at any moment loses nothing acknowledged. Each
committed batch takes the next number of a change sequence: live rows carry the ``seq`` of their
last change, deletions leave a tombstone with theirs. The in-memory HNSW graph is only a cache of
the table: it is snapshotted now and then (``index-<seq>.bin``, then ``snapshot.json`` naming that
file and the sequence number it reflects, each written to a temporary file, fsynced and renamed)
and on open it is loaded and caught up with the changes committed after that number, or rebuilt
from SQLite when there is no usable snapshot. Tables: ``items`` (label = rowid, id, seq, uri,
text, tags JSON), ``vectors`` (label, float32 blob), ``tombstones`` (label, seq) and ``meta``.
``snapshot.json`` is the commit point of a snapshot, so a crash halfway through writing one
leaves the previous one in force.

Labels (hnswlib's integer ids) are never given to a second id: re-indexing a live id reuses its
label (an in-place hnswlib update), an id that comes back after a delete gets a fresh label. A
label is therefore either live in ``items`` or dead in ``tombstones``, so catch-up does not
depend on the order of changes, and hnswlib's restriction on re-adding deleted labels never
bites. The slots of deleted vectors are reused by later additions (``replace_deleted``).

The fields a search returns (id, uri, text, tags JSON) are mirrored in memory by label, loaded
on open and updated after each commit, so a query never waits on SQLite. That costs about as
much memory as the fields themselves; the store's search runs at 0.92-1.01x raw hnswlib from
ef=32 up (`benchmarks/bench_index.py`). The number of live items is the size of that table.

Searches may carry a filter on the tags (`search.filters`: equality, ``$in`` and numeric ranges,
ANDed). A `TagIndex` beside the field table (built with it on open, updated with it after each
commit) turns the filter into the set of matching labels with a few array operations. With
that set the search takes the cheaper of two exact-enough ways, by a cost model (`_plan`): a
graph walk that only admits matching labels (hnswlib's filter; it slows as the filter gets
more selective, since the walk crosses more non-matching nodes), or an exact scan of the
matching vectors read from SQLite (cost linear in the matches, independent of the graph). A
filter therefore never returns fewer than ``min(limit, matches)`` hits.

A plain library (no jina) so that it can be tested and benchmarked on its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import hnswlib
import numpy as np

from finetune import atomic
from search.filters import Filter, TagIndex, parse_filter
from search.limits import MAX_JSON_DEPTH, json_depth

log = logging.getLogger(__name__)

DB_FILE = "store.sqlite"
LOCK_FILE = "lock"
SNAPSHOT_META = "snapshot.json"
_FORMAT = 1  # version of the tables' layout, checked on open
_ADD_CHUNK = 10_000  # rows per hnswlib.add_items call while rebuilding or catching up
_NO_TAGS = "{}"  # one shared string for the common case, in the in-memory field table
# The cost model that picks a filtered search's path (`_plan`), in seconds at dim 512 and ef 64
# on a 2-core machine (measured with benchmarks/bench_filter.py); only their ratios matter.
_FETCH_S = 8e-6  # reading one matching vector from SQLite for an exact scan
_DOT_S = 7e-9  # one query-vector product of that scan (a batched matmul)
_WALK_S = 2.5e-4  # one filtered graph walk, per unit of 1 / (fraction of items matching)

# 16 KiB pages: with SQLite's default 4 KiB, one page holds a single 2 KiB (dim 512) vector row.
_PAGE_SIZE = 16_384
# Vectors live apart from the other fields so that the rows a search reads (by label, the rowid)
# are small and dense: measured 2.5x faster than one wide table at 100k x 512.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    label INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    uri TEXT,
    text TEXT,
    tags TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS items_seq ON items(seq);
CREATE TABLE IF NOT EXISTS vectors (label INTEGER PRIMARY KEY, embedding BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones (label INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_seq ON tombstones(seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Hit(NamedTuple):
    """One search result, a plain tuple ``(id, score, uri, text, tags)``."""

    id: str
    score: float
    uri: str | None
    text: str | None
    tags: dict[str, Any]


class Record(NamedTuple):
    """A stored item as returned by `HNSWStore.get` (``embedding`` is the normalised vector)."""

    id: str
    embedding: np.ndarray
    uri: str | None
    text: str | None
    tags: dict[str, Any]


class _Row(NamedTuple):
    """A row ready to be written: label assigned, vector normalised, tags JSON-encoded."""

    id: str
    label: int
    vector: np.ndarray
    uri: str | None
    text: str | None
    tags_json: str


def check_vector(vec: Any, dim: int | None) -> tuple[np.ndarray | None, str | None]:
    """Return ``(unit float32 vector, None)`` or ``(None, reason)`` for an unusable embedding.

    Rejected: non-numeric, not 1-D (a single row of shape ``(1, d)`` is accepted), empty, wrong
    dimension (when ``dim`` is given), NaN/inf, and zero vectors (a cosine needs a direction).
    """
    try:
        arr = np.asarray(vec, dtype=np.float64)
    except (TypeError, ValueError):
        return None, "embedding is not a numeric vector"
    if arr.ndim != 1:
        arr = arr.squeeze()
        if arr.ndim != 1:
            return None, f"embedding must be a 1-D vector, got shape {np.shape(vec)}"
    if arr.size == 0:
        return None, "embedding is empty"
    if dim is not None and arr.size != dim:
        return None, f"embedding has dimension {arr.size}, the index expects {dim}"
    if not np.isfinite(arr).all():
        return None, "embedding contains NaN or inf"
    # Scaled by the largest magnitude first: the squares of values beyond ~1e154 overflow
    # float64 (the norm would be inf and the vector all zeros), those of tiny ones underflow.
    scale = float(np.abs(arr).max())
    if scale == 0.0:
        return None, "embedding is a zero vector"
    arr = arr / scale
    return (arr / np.linalg.norm(arr)).astype(np.float32), None


class HNSWStore:
    """Durable cosine index over string ids, with ``uri``, ``text`` and ``tags`` stored beside.

    Thread-safe: one re-entrant lock serialises all calls, because hnswlib must not be queried
    while the graph is modified (a single query batch still uses ``num_threads`` threads).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        dim: int | None = None,
        space: str = "cosine",
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        initial_capacity: int = 1024,
        snapshot_every: int = 20_000,
        num_threads: int = -1,
    ) -> None:
        """Open (or create) the store in directory ``path``.

        ``dim`` is fixed by the first stored vector when not given; ``snapshot_every`` is the
        number of changed items after which the graph is snapshotted (also done on `close`);
        ``num_threads`` is hnswlib's for each add and query call (-1: all cores); it is a
        plain attribute and may be changed at any time.
        """
        if space != "cosine":
            raise ValueError(f"only space='cosine' is supported, got {space!r}")
        if dim is not None and int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.space = space
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self.ef = int(ef)
        self.initial_capacity = max(1, int(initial_capacity))
        self.snapshot_every = max(1, int(snapshot_every))
        self.num_threads = int(num_threads)
        self._lock = threading.RLock()
        self._index: hnswlib.Index | None = None
        self._graph_live = 0  # live labels in the graph; equals count once caught up
        self._snapshot_seq: int | None = None
        self._changes_since_snapshot = 0
        # label -> (id, uri, text, tags JSON) of every live item: what a search returns
        self._fields: dict[int, tuple[str, str | None, str | None, str]] = {}
        self._tags = TagIndex()  # the tags of the same items, by value, for filters
        # One writer per directory: a second store (e.g. a Jina replica sharing the shard's
        # workspace) would commit rows that this one's graph never sees.
        self._dir_lock = _lock_directory(self.path / LOCK_FILE)
        self._db: sqlite3.Connection | None = None
        try:
            self._db = _connect(self.path / DB_FILE)
            self._dim = self._init_meta(None if dim is None else int(dim))
            self._seq = int(self._meta("last_seq", "0"))
            self._next_label = int(self._meta("next_label", "0"))
            self._load_fields()
            self._open_graph()
        except BaseException:
            if self._db is not None:
                self._db.close()
            self._dir_lock.close()
            raise

    # ------------------------------------------------------------------ public API

    @property
    def dim(self) -> int | None:
        """Vector dimension (None until the first vector is stored)."""
        return self._dim

    @property
    def count(self) -> int:
        """Number of live, searchable items."""
        return len(self._fields)

    def upsert(
        self,
        ids: Sequence[str],
        embeddings: Sequence[Any] | np.ndarray,
        uri: Sequence[str | None] | None = None,
        text: Sequence[str | None] | None = None,
        tags: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[str | None]:
        """Insert or replace items; returns per item None (stored) or an error message.

        Bad items (bad id, wrong dimension, NaN/inf, zero vector, bad tags, an id repeated later
        in the same call) get an error; the others are stored together in one transaction.
        """
        n = len(ids)
        embeddings = _column(embeddings, n, "embeddings")
        uri, text, tags = _column(uri, n, "uri"), _column(text, n, "text"), _column(tags, n, "tags")
        errors = _duplicate_errors(ids)
        with self._lock:
            self._check_open()
            valid: dict[str, tuple[np.ndarray, str | None, str | None, str]] = {}
            for i, doc_id in enumerate(ids):
                if errors[i] is None:
                    vec, tags_json, errors[i] = self._validate(doc_id, embeddings[i], tags[i])
                    if errors[i] is None:
                        valid[doc_id] = (
                            vec,
                            _optional_str(uri[i]),
                            _optional_str(text[i]),
                            tags_json,
                        )
            labels = self._labels_of(list(valid))
            rows = [
                _Row(doc_id, labels[doc_id] if doc_id in labels else self._take_label(), *fields)
                for doc_id, fields in valid.items()
            ]
            self._write(rows, reindex=rows, existing=set(labels.values()))
        return errors

    def update(
        self,
        ids: Sequence[str],
        embeddings: Sequence[Any | None] | None = None,
        uri: Sequence[str | None] | None = None,
        text: Sequence[str | None] | None = None,
        tags: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[str | None]:
        """Change stored fields of existing ids; returns per item None or an error message.

        A None argument (or None item) leaves that field unchanged; unknown ids, bad embeddings
        or tags and earlier duplicates get an error, the other items are still updated.
        """
        n = len(ids)
        embeddings = _column(embeddings, n, "embeddings")
        uri, text, tags = _column(uri, n, "uri"), _column(text, n, "text"), _column(tags, n, "tags")
        errors = _duplicate_errors(ids)
        with self._lock:
            self._check_open()
            current = self._fetch([i for i in ids if isinstance(i, str)])
            rows, reindex = [], []
            for i, doc_id in enumerate(ids):
                if errors[i] is not None:
                    continue
                if not isinstance(doc_id, str) or doc_id not in current:
                    errors[i] = "unknown id"
                    continue
                label, old = current[doc_id]
                vec, vec_error = (old.embedding, None)
                if embeddings[i] is not None:
                    vec, vec_error = check_vector(embeddings[i], self._dim)
                tags_json, tags_error = _encode_tags(old.tags if tags[i] is None else tags[i])
                errors[i] = vec_error or tags_error
                if errors[i] is None:
                    new_uri = old.uri if uri[i] is None else str(uri[i])
                    new_text = old.text if text[i] is None else str(text[i])
                    rows.append(_Row(doc_id, label, vec, new_uri, new_text, tags_json))
                    if embeddings[i] is not None:
                        reindex.append(rows[-1])
            self._write(rows, reindex=reindex, existing={label for label, _ in current.values()})
        return errors

    def delete(self, ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Delete ids; returns ``(deleted, unknown)``, each id once, in request order."""
        wanted = list(dict.fromkeys(ids))
        with self._lock:
            self._check_open()
            labels = self._labels_of([i for i in wanted if isinstance(i, str)])
            self._write([], reindex=[], existing=set(), deletes=labels)
        return [i for i in wanted if i in labels], [i for i in wanted if i not in labels]

    def get(self, ids: Sequence[str]) -> list[Record | None]:
        """Stored records of ``ids`` in the same order (None for unknown ids)."""
        with self._lock:
            self._check_open()
            found = self._fetch(list(ids))
        return [found[i][1] if i in found else None for i in ids]

    def search(
        self,
        queries: Any,
        limit: int = 10,
        ef: int | None = None,
        filter: Filter | dict[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """Top-``limit`` items for each query row by cosine similarity, best first.

        Scores are ``1 - hnswlib cosine distance``. ``limit`` is clamped to the number of live
        items, ``ef`` (default: the store's) raised to at least ``limit``. ``filter`` (see
        `search.filters`) keeps only items whose tags match; then each query gets
        ``min(limit, matching items)`` hits. Raises ValueError for ``limit < 1`` or a query
        matrix of the wrong shape, with NaN/inf or zero rows, and `FilterError` (a ValueError)
        for a bad filter.
        """
        if int(limit) < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        flt = parse_filter(filter)
        q = np.asarray(queries, dtype=np.float32)
        q = q[None, :] if q.ndim == 1 else q
        if q.ndim != 2:
            raise ValueError(f"queries must be a (n, dim) matrix, got shape {q.shape}")
        with self._lock:
            self._check_open()
            k = min(int(limit), self.count)
            if k == 0 or len(q) == 0:
                return [[] for _ in range(len(q))]
            self._check_queries(q)
            # an ef beyond the graph's size searches no wider, and hnswlib takes a C size_t
            ef = max(min(int(ef or self.ef), self._index.element_count), k)
            if flt:
                labels, distances = self._filtered_knn(q, k, ef, flt)
            else:
                labels, distances = self._knn(q, k, ef)
            # float32 rounding can put a self-match a hair above 1
            scores = np.minimum(1.0 - distances, 1.0).tolist()
            return [
                _hits(self._fields, label_row, score_row)
                for label_row, score_row in zip(labels.tolist(), scores, strict=True)
            ]

    def status(self) -> dict[str, Any]:
        """Counts and parameters of the index (JSON-serialisable)."""
        with self._lock:
            self._check_open()
            graph = self._index
            return {
                "count": self.count,
                "deleted_slots": graph.element_count - self._graph_live if graph else 0,
                "capacity": graph.get_max_elements() if graph else 0,
                "dim": self._dim,
                "space": self.space,
                "M": self.M,
                "ef_construction": self.ef_construction,
                "ef": self.ef,
                "seq": self._seq,
                "snapshot_seq": self._snapshot_seq,
                "path": str(self.path),
                "tags": self._tags.summary(),
            }

    def snapshot(self) -> None:
        """Write the graph to disk atomically so that the next open replays only later changes."""
        with self._lock:
            self._check_open()
            if self._index is None or self._snapshot_seq == self._seq:
                return
            name = f"index-{self._seq}.bin"
            with atomic.atomic_path(self.path / name) as tmp:
                self._index.save_index(str(tmp))
            atomic.write_json(self.path / SNAPSHOT_META, self._snapshot_meta(name))
            self._snapshot_seq = self._seq
            self._changes_since_snapshot = 0
            self._remove_stale_files(keep=name)
            # Tombstones only serve replays onto an older snapshot, and none is left.
            with _transaction(self._db):
                self._db.execute("DELETE FROM tombstones WHERE seq <= ?", (self._seq,))

    def close(self) -> None:
        """Snapshot pending changes (so that the next open is fast) and close the database."""
        with self._lock:
            if self._db is None:
                return
            try:
                if self._changes_since_snapshot:
                    self.snapshot()
            finally:
                self._db.close()
                self._db = None
                self._index = None
                self._fields = {}
                self._tags = TagIndex()
                self._dir_lock.close()  # releases the flock

    def __enter__(self) -> HNSWStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ validation

    def _validate(
        self, doc_id: Any, embedding: Any, tags: Any
    ) -> tuple[np.ndarray | None, str | None, str | None]:
        """``(unit vector, tags JSON, None)`` or ``(None, None, reason)`` for one upsert item."""
        if not isinstance(doc_id, str) or not doc_id:
            return None, None, "id must be a non-empty string"
        vec, error = check_vector(embedding, self._dim)
        tags_json, tags_error = _encode_tags(tags)
        if error or tags_error:
            return None, None, error or tags_error
        if self._dim is None:  # the first valid vector fixes the dimension of the store
            self._dim = vec.size
        return vec, tags_json, None

    def _check_queries(self, q: np.ndarray) -> None:
        if q.shape[1] != self._dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the index expects {self._dim}")
        if not np.isfinite(q).all():
            raise ValueError("queries contain NaN or inf")
        zero = np.flatnonzero(~q.any(axis=1))
        if zero.size:
            raise ValueError(f"query rows {zero.tolist()} are zero vectors")

    def _check_open(self) -> None:
        if self._db is None:
            raise RuntimeError(f"HNSWStore at {self.path} is closed")

    # ------------------------------------------------------------------ SQLite

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
        if stored_format is not None and int(stored_format) != _FORMAT:
            raise ValueError(f"the store at {self.path} has format {stored_format}, not {_FORMAT}")
        if stored_dim is not None and dim is not None and int(stored_dim) != dim:
            raise ValueError(f"the store at {self.path} has dim {stored_dim}, not {dim}")
        dim = int(stored_dim) if stored_dim is not None else dim
        with _transaction(self._db):
            self._set_meta(format=_FORMAT, dim=dim)
        return dim

    def _take_label(self) -> int:
        label = self._next_label
        self._next_label += 1
        return label

    def _labels_of(self, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        # json_each binds any number of values as one parameter
        sql = "SELECT id, label FROM items WHERE id IN (SELECT value FROM json_each(?))"
        return dict(self._db.execute(sql, (json.dumps(ids),)).fetchall())

    def _fetch(self, ids: list[str]) -> dict[str, tuple[int, Record]]:
        sql = (
            "SELECT id, label, embedding, uri, text, tags FROM items JOIN vectors USING (label) "
            "WHERE id IN (SELECT value FROM json_each(?))"
        )
        rows = self._db.execute(sql, (json.dumps([i for i in ids if isinstance(i, str)]),))
        return {
            doc_id: (label, Record(doc_id, np.frombuffer(blob, np.float32), u, t, json.loads(g)))
            for doc_id, label, blob, u, t, g in rows
        }

    def _load_fields(self) -> None:
        rows = self._db.execute("SELECT label, id, uri, text, tags FROM items")
        self._fields = {
            label: _field_entry(doc_id, uri, text, tags) for label, doc_id, uri, text, tags in rows
        }
        self._tags = TagIndex()
        for label, (_, _, _, tags) in self._fields.items():
            if tags is not _NO_TAGS:
                self._tags.add(label, json.loads(tags))
        self._tags.compact()

    def _set_fields(
        self, label: int, entry: tuple[str, str | None, str | None, str] | None
    ) -> None:
        """Replace (None: drop) a label's entry in the field table and re-index its tags."""
        old = self._fields.pop(label, None) if entry is None else self._fields.get(label)
        old_tags = None if old is None else old[3]
        new_tags = None if entry is None else entry[3]
        if entry is not None:
            self._fields[label] = entry
        if old_tags != new_tags:
            if old_tags not in (None, _NO_TAGS):
                self._tags.remove(label, json.loads(old_tags))
            if new_tags not in (None, _NO_TAGS):
                self._tags.add(label, json.loads(new_tags))

    def _write(
        self,
        rows: list[_Row],
        reindex: list[_Row],
        existing: set[int],
        deletes: dict[str, int] | None = None,
    ) -> None:
        """Commit one batch to SQLite (the acknowledgement point), then apply it to the graph.

        ``reindex`` are the rows whose vector changed; ``existing`` the labels already live.
        """
        deletes = deletes or {}
        if not rows and not deletes:
            return
        seq = self._seq + 1
        with _transaction(self._db):
            self._db.executemany(
                "INSERT INTO items(label, id, seq, uri, text, tags) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(label) DO UPDATE SET seq = excluded.seq, uri = excluded.uri, "
                "text = excluded.text, tags = excluded.tags",
                [(r.label, r.id, seq, r.uri, r.text, r.tags_json) for r in rows],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors(label, embedding) VALUES (?, ?)",
                [(r.label, r.vector.tobytes()) for r in reindex],
            )
            if deletes:
                for table in ("items", "vectors"):
                    self._db.execute(
                        f"DELETE FROM {table} WHERE label IN (SELECT value FROM json_each(?))",
                        (json.dumps(list(deletes.values())),),
                    )
                self._db.executemany(
                    "INSERT OR REPLACE INTO tombstones(label, seq) VALUES (?, ?)",
                    [(label, seq) for label in deletes.values()],
                )
            self._set_meta(last_seq=seq, next_label=self._next_label, dim=self._dim)
        self._seq = seq
        for r in rows:
            self._set_fields(r.label, _field_entry(r.id, r.uri, r.text, r.tags_json))
        for label in deletes.values():
            self._set_fields(label, None)
        try:
            self._apply(reindex, existing, list(deletes.values()))
        except Exception:  # the commit stands: make the graph agree with SQLite again
            log.exception("applying change %d to the HNSW graph failed; rebuilding it", seq)
            self._rebuild()
        self._changes_since_snapshot += len(rows) + len(deletes)
        if self._changes_since_snapshot >= self.snapshot_every:
            self.snapshot()

    # ------------------------------------------------------------------ HNSW graph

    def _new_graph(self, capacity: int) -> hnswlib.Index:
        graph = hnswlib.Index(space=self.space, dim=self._dim)
        graph.init_index(
            max_elements=capacity,
            M=self.M,
            ef_construction=self.ef_construction,
            allow_replace_deleted=True,
        )
        self._configure(graph)
        return graph

    def _configure(self, graph: hnswlib.Index) -> None:
        graph.set_ef(self.ef)

    def _apply(self, rows: list[_Row], existing: set[int], deleted: Iterable[int]) -> int:
        """Apply committed changes to the graph (deletions first: their slots get reused).

        Returns the number of replayed changes.
        """
        if self._dim is None:
            return 0
        if self._index is None:
            self._index = self._new_graph(max(self.initial_capacity, len(rows)))
        n_deleted = sum(self._mark_deleted(label) for label in deleted)
        updated = [r for r in rows if r.label in existing]
        added = [r for r in rows if r.label not in existing]
        self._ensure_capacity(len(added))
        # Live labels are updated in place; new ones may take the slot of a deleted vector.
        # (replace_deleted=True with a live label would leave it in the graph twice.)
        for group, replace_deleted in ((updated, False), (added, True)):
            if group:
                self._index.add_items(
                    np.stack([r.vector for r in group]),
                    np.array([r.label for r in group], dtype=np.int64),
                    num_threads=self.num_threads,
                    replace_deleted=replace_deleted,
                )
        self._graph_live += len(added)
        return n_deleted + len(rows)

    def _mark_deleted(self, label: int) -> bool:
        try:
            self._index.mark_deleted(label)
        except RuntimeError:  # not in this graph or already deleted: nothing to undo
            return False
        self._graph_live -= 1
        return True

    def _ensure_capacity(self, n_new: int) -> None:
        """Grow the graph by doubling so ``n_new`` more vectors fit (deleted slots are free)."""
        capacity = self._index.get_max_elements()
        if self._graph_live + n_new > capacity:
            self._index.resize_index(max(self._graph_live + n_new, 2 * capacity))

    def _knn(self, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        """hnswlib query; when it finds fewer than ``k`` live vectors (small ef among many
        deletions) it raises, so retry with a doubled ef up to a search of the whole graph.
        Even that can miss live vectors when deleted ones crowd them out (many identical
        vectors deleted, say): then the live vectors are scanned exactly."""
        graph, total = self._index, self._index.element_count
        try:
            while True:
                graph.set_ef(ef)
                try:
                    return graph.knn_query(q, k=k, num_threads=self.num_threads)
                except RuntimeError:
                    if ef >= total:
                        break
                    ef = min(2 * ef, total)
        finally:
            graph.set_ef(self.ef)
        return self._exact(q, k, np.fromiter(self._fields, np.int64, len(self._fields)))

    def _filtered_knn(
        self, q: np.ndarray, k: int, ef: int, flt: Filter
    ) -> tuple[np.ndarray, np.ndarray]:
        """(labels, distances) of the top ``min(k, matching items)`` among the items matching
        ``flt``, best first."""
        mask = self._tags.mask(flt, self._next_label)
        matching = np.flatnonzero(mask)
        k_found = min(k, matching.size)
        if k_found == 0:
            return np.full((len(q), 0), -1, np.int64), np.zeros((len(q), 0), np.float32)
        if self._plan(len(q), matching.size, ef) == "walk":
            graph = self._index
            # bytes indexing is the cheapest membership test hnswlib can call back into
            allowed = mask.view(np.uint8).tobytes().__getitem__
            try:
                graph.set_ef(ef)
                # one thread: the callback needs the GIL, so more threads only contend for it
                return graph.knn_query(q, k=k_found, num_threads=1, filter=allowed)
            except RuntimeError:  # the walk found fewer than k matches: scan them instead
                pass
            finally:
                graph.set_ef(self.ef)
        return self._exact(q, k_found, matching)

    def _plan(self, n_queries: int, n_matching: int, ef: int) -> str:
        """ "walk" (filtered graph search) or "scan" (exact over the matching vectors), whichever
        the cost model expects to be quicker for this batch. A scan reads each matching vector
        once for the whole batch, so it wins for selective filters and for large batches; a
        walk costs about as much per query as an unfiltered one divided by the fraction of
        items that match."""
        scale = self._dim / 512
        scan = n_matching * (_FETCH_S + n_queries * _DOT_S * scale)
        walk = n_queries * _WALK_S * scale * (ef / 64) * self.count / n_matching
        return "scan" if scan <= walk else "walk"

    def _exact(self, q: np.ndarray, k: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by cosine among ``labels``, from the vectors in SQLite."""
        rows = self._db.execute(
            "SELECT label, embedding FROM vectors WHERE label IN (SELECT value FROM json_each(?))",
            (json.dumps(labels.tolist()),),
        ).fetchall()
        found = np.fromiter((label for label, _ in rows), np.int64, len(rows))
        vectors = np.frombuffer(b"".join(blob for _, blob in rows), np.float32)
        vectors = vectors.reshape(len(rows), self._dim)
        unit = q / np.linalg.norm(q, axis=1, keepdims=True)
        # hnswlib's cosine distance, 1 - dot of unit vectors, so that scores match a walk's
        distances = 1.0 - unit @ vectors.T
        k = min(k, len(rows))
        top = np.argpartition(distances, k - 1, axis=1)[:, :k]
        top_d = np.take_along_axis(distances, top, axis=1)
        order = np.argsort(top_d, axis=1, kind="stable")
        return found[np.take_along_axis(top, order, axis=1)], np.take_along_axis(top_d, order, 1)

    # ------------------------------------------------------------------ open and snapshot

    def _open_graph(self) -> None:
        self._remove_temp_files()
        if self._dim is None:
            return
        meta = self._read_snapshot_meta()
        if meta is not None:
            try:
                self._load_snapshot(meta)
                return
            except Exception:  # a damaged snapshot is only a cache miss
                log.warning("snapshot in %s unusable, rebuilding", self.path, exc_info=True)
        self._rebuild()

    def _read_snapshot_meta(self) -> dict[str, Any] | None:
        try:
            meta = json.loads((self.path / SNAPSHOT_META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        expected = {
            "dim": self._dim,
            "space": self.space,
            "M": self.M,
            "ef_construction": self.ef_construction,
        }
        if any(meta.get(key) != value for key, value in expected.items()):
            return None  # built with other parameters: rebuild with the asked ones
        if not isinstance(meta.get("seq"), int) or meta["seq"] > self._seq:
            return None  # reflects changes SQLite does not have
        return meta

    def _load_snapshot(self, meta: dict[str, Any]) -> None:
        graph = hnswlib.Index(space=self.space, dim=self._dim)
        graph.load_index(str(self.path / meta["file"]), allow_replace_deleted=True)
        self._configure(graph)
        self._index, self._graph_live = graph, int(meta["count"])
        try:
            replayed = self._catch_up(meta["seq"])
            if self._graph_live != self.count:
                raise RuntimeError(f"graph has {self._graph_live} live items, SQLite {self.count}")
        except Exception:
            self._index, self._graph_live = None, 0
            raise
        self._snapshot_seq = meta["seq"]
        self._changes_since_snapshot = replayed
        self._remove_stale_files(keep=meta["file"])

    def _catch_up(self, since: int) -> int:
        """Replay the changes committed after sequence number ``since``; returns their number.

        Order does not matter: a label is either live in ``items`` or in ``tombstones``.
        """
        tombstones = self._db.execute("SELECT label FROM tombstones WHERE seq > ?", (since,))
        replayed = self._apply([], set(), [label for (label,) in tombstones])
        in_graph = set(self._index.get_ids_list())
        changed = self._db.execute(
            "SELECT label, embedding FROM items JOIN vectors USING (label) WHERE seq > ? "
            "ORDER BY label",
            (since,),
        )
        for chunk in _chunks(changed, _ADD_CHUNK):
            rows = [
                _Row("", label, np.frombuffer(blob, np.float32), None, None, "")
                for label, blob in chunk
            ]
            replayed += self._apply(rows, in_graph, [])
        return replayed

    def _rebuild(self) -> None:
        """Build the graph from all rows of SQLite, then snapshot it."""
        capacity = self.initial_capacity
        while capacity < self.count:
            capacity *= 2
        self._index, self._graph_live = self._new_graph(capacity), 0
        self._snapshot_seq = None
        everything = self._db.execute("SELECT label, embedding FROM vectors ORDER BY label")
        for chunk in _chunks(everything, _ADD_CHUNK):
            vectors = np.stack([np.frombuffer(blob, np.float32) for _, blob in chunk])
            labels = np.array([label for label, _ in chunk], np.int64)
            self._index.add_items(vectors, labels, num_threads=self.num_threads)
            self._graph_live += len(chunk)
        self._changes_since_snapshot = self.count
        if self.count:
            self.snapshot()

    def _snapshot_meta(self, name: str) -> dict[str, Any]:
        return {
            "file": name,
            "seq": self._seq,
            "count": self._graph_live,
            "dim": self._dim,
            "space": self.space,
            "M": self.M,
            "ef_construction": self.ef_construction,
        }

    def _remove_stale_files(self, keep: str) -> None:
        """Drop older snapshots; the one in force is ``keep``."""
        for path in self.path.glob("index-*.bin"):
            if path.name != keep:
                path.unlink(missing_ok=True)

    def _remove_temp_files(self) -> None:
        """Drop leftovers of a snapshot write interrupted by a crash."""
        for path in self.path.glob(f"*{atomic.TEMP_SUFFIX}"):
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------- helpers


def _lock_directory(path: Path) -> IO[bytes]:
    """Hold an exclusive flock on ``path`` for the store's lifetime (released on close or
    when the process dies, however it dies)."""
    handle = open(path, "ab")  # stays open: the lock lives as long as the handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"{path.parent} is already open in another HNSWStore") from None
    return handle


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


def _encode_tags(tags: Any) -> tuple[str | None, str | None]:
    """``(JSON, None)`` or ``(None, reason)``; None means no tags."""
    if tags is None:
        return "{}", None
    if not isinstance(tags, dict):
        return None, f"tags must be a dict, got {type(tags).__name__}"
    if json_depth(tags) > MAX_JSON_DEPTH:  # before json.dumps, which recurses
        return None, f"tags are nested more than {MAX_JSON_DEPTH} levels deep (MAX_JSON_DEPTH)"
    try:
        return json.dumps(tags, allow_nan=False), None
    except (TypeError, ValueError) as exc:
        return None, f"tags are not JSON-serialisable: {exc}"


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _column(values: Sequence[Any] | None, n: int, name: str) -> Sequence[Any]:
    """An optional per-item argument as a sequence of ``n`` items (all None when omitted)."""
    if values is None:
        return [None] * n
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} items for {n} ids")
    return values


def _duplicate_errors(ids: Sequence[Any]) -> list[str | None]:
    """An error for every occurrence of an id but the last one, which wins."""
    last = {doc_id: i for i, doc_id in enumerate(ids)}
    return [
        None if last[doc_id] == i else f"duplicate id {doc_id!r}: a later item in the request wins"
        for i, doc_id in enumerate(ids)
    ]


def _field_entry(
    doc_id: str, uri: str | None, text: str | None, tags_json: str
) -> tuple[str, str | None, str | None, str]:
    """An item's entry in the in-memory field table; empty tags share one string, which
    `_hits` recognises by identity."""
    return doc_id, uri, text, _NO_TAGS if tags_json == _NO_TAGS else tags_json


def _hits(fields: dict[int, tuple], labels: list[int], scores: list[float]) -> list[Hit]:
    """One query's hits. The hot loop of a search: a plain loop and `tuple.__new__` (skipping
    the NamedTuple's Python-level constructor) cut its cost per hit by about a third."""
    out = []
    for label, score in zip(labels, scores, strict=True):
        item = fields.get(label)
        if item is not None:
            doc_id, uri, text, tags = item
            tags = {} if tags is _NO_TAGS else json.loads(tags)
            out.append(_new_tuple(Hit, (doc_id, score, uri, text, tags)))
    return out


_new_tuple = tuple.__new__


def _chunks(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
