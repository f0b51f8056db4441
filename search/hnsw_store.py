"""A durable cosine vector index: SQLite is the source of truth, an hnswlib graph serves queries.

`HNSWStore` owns the store's directory and one lock, validates what callers send, and composes
one part per job:

* `search.item_db`: the SQLite database (items, vectors, tombstones, meta, the change sequence,
  the format version). Every write batch is one transaction and a write method returns only
  after it committed, so a ``kill -9`` at any moment loses nothing acknowledged.
* `search.hnsw_graph`: the hnswlib graph, only a cache of the database: snapshotted now and
  then, loaded and caught up on open (or rebuilt), growing by doubling, reusing deleted slots.
* `search.field_mirror`: the fields a search returns, in memory by label, so a query never
  waits on SQLite, and the `TagIndex` that turns a tag filter into the labels that match.
* `search.filter_planner`: which way a filtered search goes, a graph walk that admits only
  matching labels or an exact scan of the matching vectors (`search.exact_knn`), by a cost
  model. Either way a filter returns ``min(limit, matches)`` hits.

A write commits to the database first (the acknowledgement point), then updates the mirror and
the graph; should the graph fail, it is rebuilt from the database. Searches may carry a filter
on the tags (`search.filters`: equality, ``$in`` and numeric ranges, ANDed).

A plain library (no jina) so that it can be tested and benchmarked on its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import operator
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import hnswlib
import numpy as np

from search.exact_knn import exact_knn
from search.field_mirror import HIT_COLUMNS, FieldMirror, Hit
from search.filter_planner import plan
from search.filters import Filter, TagIndex, parse_filter
from search.hnsw_graph import SNAPSHOT_META, HNSWGraph
from search.item_db import COLUMNS, DB_FILE, JSON_COLUMNS, UNRECORDED, ItemDB, Record, Row
from search.limits import MAX_JSON_DEPTH, json_depth

__all__ = [
    "DB_FILE",
    "LOCK_FILE",
    "SNAPSHOT_META",
    "UNRECORDED",
    "HNSWStore",
    "Hit",
    "Record",
    "check_vector",
]

log = logging.getLogger(__name__)

LOCK_FILE = "lock"
EMBEDDED_BY = "embedded_by"  # the column saying what made an item's embedding
_hit_values = operator.attrgetter(*HIT_COLUMNS)  # a Row's values of the fields a hit carries


def _graph_setting(name: str, doc: str) -> property:
    """A store attribute that is its graph's parameter (read and written there)."""
    return property(
        lambda self: getattr(self._graph, name),
        lambda self, value: setattr(self._graph, name, value),
        doc=doc,
    )


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

    space = _graph_setting("space", "the vector space (only 'cosine')")
    M = _graph_setting("M", "hnswlib's M")
    ef_construction = _graph_setting("ef_construction", "hnswlib's ef_construction")
    ef = _graph_setting("ef", "the default search ef")
    initial_capacity = _graph_setting("initial_capacity", "the graph's first capacity")
    num_threads = _graph_setting("num_threads", "hnswlib's threads per call (-1: all cores)")

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
        self.snapshot_every = max(1, int(snapshot_every))
        self._graph = HNSWGraph(
            self.path,
            space=space,
            M=int(M),
            ef_construction=int(ef_construction),
            ef=int(ef),
            initial_capacity=max(1, int(initial_capacity)),
            num_threads=int(num_threads),
        )
        self._lock = threading.RLock()
        self._closed = False
        with contextlib.ExitStack() as undo:  # a failed open releases what it took
            # One writer per directory: a second store (e.g. a Jina replica sharing the shard's
            # workspace) would commit rows that this one's graph never sees.
            self._dir_lock = _lock_directory(self.path / LOCK_FILE)
            undo.callback(self._dir_lock.close)
            self._db = ItemDB(self.path, None if dim is None else int(dim))
            undo.callback(self._db.close)
            self._fields = FieldMirror(self._db.field_rows(HIT_COLUMNS))
            self._open_graph()
            undo.pop_all()

    # ------------------------------------------------------------------ public API

    @property
    def dim(self) -> int | None:
        """Vector dimension (None until the first vector is stored)."""
        return self._db.dim

    @property
    def count(self) -> int:
        """Number of live, searchable items."""
        return len(self._fields)

    def upsert(
        self,
        ids: Sequence[str],
        embeddings: Sequence[Any] | np.ndarray,
        meta: Mapping[str, str] | None = None,
        **columns: Sequence[Any] | None,
    ) -> list[str | None]:
        """Insert or replace items; returns per item None (stored) or an error message.

        ``columns`` are the stored fields (`search.item_db.COLUMNS`: ``uri``, ``text``,
        ``tags``, ``embedded_by``), each a sequence of one value per id, or omitted (None).
        Bad items (bad id, wrong dimension, NaN/inf, zero vector, bad tags, an id repeated later
        in the same call) get an error; the others are stored together in one transaction,
        with ``meta`` (see `get_meta`) when at least one item is stored.
        """
        embeddings = _per_item(len(ids), "embeddings", embeddings)
        values = _columns(len(ids), columns)
        errors = _duplicate_errors(ids)
        with self._lock:
            self._check_open()
            valid: dict[str, tuple[np.ndarray, tuple[Any, ...]]] = {}
            for i, doc_id in enumerate(ids):
                if errors[i] is None:
                    vec, cells, errors[i] = self._validate(doc_id, embeddings[i], values[i])
                if errors[i] is None:
                    valid[doc_id] = (vec, cells)
            labels = self._db.labels_of(list(valid))
            rows = [
                Row(doc_id, labels[doc_id] if doc_id in labels else self._db.take_label(), vec, *c)
                for doc_id, (vec, c) in valid.items()
            ]
            self._write(rows, reindex=rows, existing=set(labels.values()), meta=meta)
        return errors

    def update(
        self,
        ids: Sequence[str],
        embeddings: Sequence[Any | None] | None = None,
        meta: Mapping[str, str] | None = None,
        **columns: Sequence[Any] | None,
    ) -> list[str | None]:
        """Change stored fields of existing ids; returns per item None or an error message.

        A None argument (or None item) leaves that field unchanged (``embedded_by`` changes
        with the embedding: the item's when one is given, else it stays); ``tags`` replace the
        stored ones whole. Unknown ids, bad embeddings or tags and earlier duplicates get an
        error, the other items are still updated, with ``meta`` in the same transaction.
        """
        embeddings = _per_item(len(ids), "embeddings", embeddings)
        values = _columns(len(ids), columns)
        errors = _duplicate_errors(ids)
        with self._lock:
            self._check_open()
            current = self._db.fetch([i for i in ids if isinstance(i, str)])
            rows, reindex = [], []
            for i, doc_id in enumerate(ids):
                if errors[i] is None and (not isinstance(doc_id, str) or doc_id not in current):
                    errors[i] = "unknown id"
                if errors[i] is None:
                    label, old = current[doc_id]
                    row, errors[i] = self._updated(label, old, embeddings[i], values[i])
                if errors[i] is None:
                    rows.append(row)
                if errors[i] is None and embeddings[i] is not None:
                    reindex.append(row)
            existing = {label for label, _ in current.values()}
            self._write(rows, reindex=reindex, existing=existing, meta=meta)
        return errors

    def get_meta(self, key: str) -> str | None:
        """A value written with a batch's ``meta`` (None when never written): what the
        caller records about the whole store, committed with the rows it concerns."""
        with self._lock:
            self._check_open()
            return self._db.user_meta(key)

    def delete(self, ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Delete ids; returns ``(deleted, unknown)``, each id once, in request order."""
        wanted = list(dict.fromkeys(ids))
        with self._lock:
            self._check_open()
            labels = self._db.labels_of([i for i in wanted if isinstance(i, str)])
            self._write([], reindex=[], existing=set(), deleted=list(labels.values()))
        return [i for i in wanted if i in labels], [i for i in wanted if i not in labels]

    def get(self, ids: Sequence[str]) -> list[Record | None]:
        """Stored records of ``ids`` in the same order (None for unknown ids)."""
        with self._lock:
            self._check_open()
            found = self._db.fetch(list(ids))
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
            ef = max(min(int(ef or self.ef), self._graph.index.element_count), k)
            if flt:
                labels, distances = self._filtered_knn(q, k, ef, flt)
            else:
                labels, distances = self._knn(q, k, ef)
            # float32 rounding can put a self-match a hair above 1
            scores = np.minimum(1.0 - distances, 1.0).tolist()
            return self._fields.hits(labels.tolist(), scores)

    def status(self) -> dict[str, Any]:
        """Counts and parameters of the index (JSON-serialisable)."""
        with self._lock:
            self._check_open()
            return {
                "count": self.count,
                "deleted_slots": self._graph.deleted_slots,
                "capacity": self._graph.capacity,
                "dim": self._db.dim,
                "space": self.space,
                "M": self.M,
                "ef_construction": self.ef_construction,
                "ef": self.ef,
                "seq": self._db.seq,
                "snapshot_seq": self._graph.snapshot_seq,
                "path": str(self.path),
                "tags": self._fields.tags.summary(),
            }

    def snapshot(self) -> None:
        """Write the graph to disk atomically so that the next open replays only later changes."""
        with self._lock:
            self._check_open()
            if self._graph.snapshot(self._db.seq):
                # Tombstones only serve replays onto an older snapshot, and none is left.
                self._db.prune_tombstones(self._db.seq)

    def close(self) -> None:
        """Snapshot pending changes (so that the next open is fast) and close the database."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._graph.changes_since_snapshot:
                    self.snapshot()
            finally:
                self._closed = True
                self._db.close()
                self._graph.index = None  # frees the graph's memory; its snapshot stays
                self._fields = FieldMirror()
                self._dir_lock.close()  # releases the flock

    def __enter__(self) -> HNSWStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ validation

    def _validate(
        self, doc_id: Any, embedding: Any, values: Mapping[str, Any]
    ) -> tuple[np.ndarray | None, tuple[Any, ...] | None, str | None]:
        """``(unit vector, database values, None)`` or ``(None, None, reason)`` for one upsert
        item."""
        if not isinstance(doc_id, str) or not doc_id:
            return None, None, "id must be a non-empty string"
        vec, error = check_vector(embedding, self._db.dim)
        cells, cells_error = _cells(values)
        if error or cells_error:
            return None, None, error or cells_error
        if self._db.dim is None:  # the first valid vector fixes the dimension of the store
            self._db.dim = vec.size
        return vec, cells, None

    def _updated(
        self, label: int, old: Record, embedding: Any, changes: Mapping[str, Any]
    ) -> tuple[Row | None, str | None]:
        """``(row, None)``: ``old`` with the fields that are not None changed, or
        ``(None, reason)`` for a bad embedding or bad tags."""
        vec, vec_error = (old.embedding, None)
        if embedding is not None:
            vec, vec_error = check_vector(embedding, self._db.dim)
        merged = {
            column: getattr(old, column) if value is None else value
            for column, value in changes.items()
        }
        # what made the embedding goes with it: the item's when one is given, else it stays
        merged[EMBEDDED_BY] = old.embedded_by if embedding is None else changes[EMBEDDED_BY]
        cells, cells_error = _cells(merged)
        if vec_error or cells_error:
            return None, vec_error or cells_error
        return Row(old.id, label, vec, *cells), None

    def _check_queries(self, q: np.ndarray) -> None:
        if q.shape[1] != self._db.dim:
            raise ValueError(
                f"queries have dimension {q.shape[1]}, the index expects {self._db.dim}"
            )
        if not np.isfinite(q).all():
            raise ValueError("queries contain NaN or inf")
        zero = np.flatnonzero(~q.any(axis=1))
        if zero.size:
            raise ValueError(f"query rows {zero.tolist()} are zero vectors")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"HNSWStore at {self.path} is closed")

    # ------------------------------------------------------------------ writes

    def _write(
        self,
        rows: list[Row],
        reindex: list[Row],
        existing: set[int],
        deleted: list[int] | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        """Commit one batch to SQLite (the acknowledgement point), then apply it to the field
        mirror and the graph, and snapshot when enough changed.

        ``reindex`` are the rows whose vector changed; ``existing`` the labels already live;
        ``deleted`` the labels to delete; ``meta`` the caller's values (`get_meta`).
        """
        deleted = deleted or []
        if not rows and not deleted:
            return
        seq = self._db.commit(rows, reindex, deleted, meta)
        for r in rows:
            self._fields.set(r.label, r.id, *_hit_values(r))
        for label in deleted:
            self._fields.drop(label)
        try:
            self._graph.apply([(r.label, r.vector) for r in reindex], existing, deleted)
        except Exception:  # the commit stands: make the graph agree with SQLite again
            log.exception("applying change %d to the HNSW graph failed; rebuilding it", seq)
            self._rebuild()
        self._graph.changes_since_snapshot += len(rows) + len(deleted)
        if self._graph.changes_since_snapshot >= self.snapshot_every:
            self.snapshot()

    # ------------------------------------------------------------------ graph

    def _open_graph(self) -> None:
        """Load the snapshot and catch up with SQLite, or rebuild the graph."""
        if not self._graph.load(self._db, self._db.dim, self._db.seq, self.count):
            self._rebuild()

    def _rebuild(self) -> None:
        """Build the graph from all rows of SQLite, then snapshot it."""
        self._graph.rebuild(self._db, self._db.dim, self.count)
        if self.count:
            self.snapshot()

    # ------------------------------------------------------------------ queries

    def _knn(self, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels, distances) of the top ``k``: from the graph, or an exact scan of the live
        vectors when the graph cannot reach ``k`` of them."""
        found = self._graph.knn(q, k, ef)
        return found if found is not None else self._exact(q, k, self._fields.labels())

    def _filtered_knn(
        self, q: np.ndarray, k: int, ef: int, flt: Filter
    ) -> tuple[np.ndarray, np.ndarray]:
        """(labels, distances) of the top ``min(k, matching items)`` among the items matching
        ``flt``, best first, by the path `_plan` picks (a walk that falls short is a scan)."""
        mask = self._fields.mask(flt, self._db.next_label)
        matching = np.flatnonzero(mask)
        k_found = min(k, matching.size)
        if k_found == 0:
            return np.full((len(q), 0), -1, np.int64), np.zeros((len(q), 0), np.float32)
        found = None
        if self._plan(len(q), matching.size, ef) == "walk":
            found = self._graph.filtered_knn(q, k_found, ef, mask)
        return found if found is not None else self._exact(q, k_found, matching)

    def _plan(self, n_queries: int, n_matching: int, ef: int) -> str:
        """ "walk" or "scan" for a filtered batch (`search.filter_planner.plan`)."""
        return plan(n_queries, n_matching, self.count, self._db.dim, ef).path

    def _exact(self, q: np.ndarray, k: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by cosine among ``labels``, from the vectors in SQLite."""
        return exact_knn(q, k, *self._db.vectors_of(labels))

    # ------------------------------------------------------------------ for the benchmarks

    @property
    def _index(self) -> hnswlib.Index | None:
        """The graph itself (benchmarks/bench_index.py queries it raw)."""
        return self._graph.index

    @property
    def _tags(self) -> TagIndex:
        """The tag index (benchmarks/bench_filter.py reports its size)."""
        return self._fields.tags


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


def _cells(values: Mapping[str, Any]) -> tuple[tuple[Any, ...] | None, str | None]:
    """``(database values of COLUMNS, None)`` for one item's fields (tags as JSON, the others
    as text or None), or ``(None, reason)`` for bad tags."""
    cells = []
    for column in COLUMNS:
        value = values[column]
        if column in JSON_COLUMNS:
            value, error = _encode_tags(value)
            if error:
                return None, error
        elif value is not None:
            value = str(value)
        cells.append(value)
    return tuple(cells), None


def _per_item(n: int, name: str, values: Sequence[Any] | None) -> Sequence[Any]:
    """An optional per-item argument as a sequence of ``n`` items (all None when omitted)."""
    if values is not None and len(values) != n:
        raise ValueError(f"{name} has {len(values)} items for {n} ids")
    return [None] * n if values is None else values


def _columns(n: int, columns: Mapping[str, Sequence[Any] | None]) -> list[dict[str, Any]]:
    """Each item's value of every one of `COLUMNS` (None where a column is omitted)."""
    unknown = set(columns) - set(COLUMNS)
    if unknown:
        raise TypeError(f"unknown stored fields {sorted(unknown)}; the store has {COLUMNS}")
    per_column = {c: _per_item(n, c, columns.get(c)) for c in COLUMNS}
    return [{c: per_column[c][i] for c in COLUMNS} for i in range(n)]


def _duplicate_errors(ids: Sequence[Any]) -> list[str | None]:
    """An error for every occurrence of an id but the last one, which wins."""
    last = {doc_id: i for i, doc_id in enumerate(ids)}
    return [
        None if last[doc_id] == i else f"duplicate id {doc_id!r}: a later item in the request wins"
        for i, doc_id in enumerate(ids)
    ]
