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

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import hnswlib
import numpy as np

from finetune import atomic
from search.exact_knn import exact_knn
from search.field_mirror import FieldMirror, Hit
from search.filter_planner import plan
from search.filters import Filter, TagIndex, parse_filter
from search.item_db import DB_FILE, UNRECORDED, ItemDB, Record, Row

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
SNAPSHOT_META = "snapshot.json"
_ADD_CHUNK = 10_000  # rows per hnswlib.add_items call while rebuilding or catching up


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
    norm = float(np.linalg.norm(arr))  # in float64: huge finite float32 values do not overflow
    if norm == 0.0:
        return None, "embedding is a zero vector"
    return (arr / norm).astype(np.float32), None


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
        # One writer per directory: a second store (e.g. a Jina replica sharing the shard's
        # workspace) would commit rows that this one's graph never sees.
        self._dir_lock = _lock_directory(self.path / LOCK_FILE)
        self._closed = False
        self._db: ItemDB | None = None
        try:
            self._db = ItemDB(self.path, None if dim is None else int(dim))
            self._fields = FieldMirror(self._db.field_rows())
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
        return self._db.dim

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
        embedded_by: Sequence[str | None] | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> list[str | None]:
        """Insert or replace items; returns per item None (stored) or an error message.

        Bad items (bad id, wrong dimension, NaN/inf, zero vector, bad tags, an id repeated later
        in the same call) get an error; the others are stored together in one transaction,
        with ``meta`` (see `get_meta`) when at least one item is stored.
        """
        n = len(ids)
        embeddings = _column(embeddings, n, "embeddings")
        uri, text, tags = _column(uri, n, "uri"), _column(text, n, "text"), _column(tags, n, "tags")
        embedded_by = _column(embedded_by, n, "embedded_by")
        errors = _duplicate_errors(ids)
        with self._lock:
            self._check_open()
            valid: dict[str, tuple[np.ndarray, str | None, str | None, str, str | None]] = {}
            for i, doc_id in enumerate(ids):
                if errors[i] is None:
                    vec, tags_json, errors[i] = self._validate(doc_id, embeddings[i], tags[i])
                    if errors[i] is None:
                        valid[doc_id] = (
                            vec,
                            _optional_str(uri[i]),
                            _optional_str(text[i]),
                            tags_json,
                            _optional_str(embedded_by[i]),
                        )
            labels = self._db.labels_of(list(valid))
            rows = [
                Row(doc_id, labels[doc_id] if doc_id in labels else self._db.take_label(), *fields)
                for doc_id, fields in valid.items()
            ]
            self._write(rows, reindex=rows, existing=set(labels.values()), meta=meta)
        return errors

    def update(
        self,
        ids: Sequence[str],
        embeddings: Sequence[Any | None] | None = None,
        uri: Sequence[str | None] | None = None,
        text: Sequence[str | None] | None = None,
        tags: Sequence[dict[str, Any] | None] | None = None,
        embedded_by: Sequence[str | None] | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> list[str | None]:
        """Change stored fields of existing ids; returns per item None or an error message.

        A None argument (or None item) leaves that field unchanged (``embedded_by`` changes
        with the embedding: the item's when one is given, else it stays); ``tags`` replace the
        stored ones whole. Unknown ids, bad embeddings or tags and earlier duplicates get an
        error, the other items are still updated, with ``meta`` in the same transaction.
        """
        n = len(ids)
        embeddings = _column(embeddings, n, "embeddings")
        uri, text, tags = _column(uri, n, "uri"), _column(text, n, "text"), _column(tags, n, "tags")
        embedded_by = _column(embedded_by, n, "embedded_by")
        errors = _duplicate_errors(ids)
        with self._lock:
            self._check_open()
            current = self._db.fetch([i for i in ids if isinstance(i, str)])
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
                    vec, vec_error = check_vector(embeddings[i], self._db.dim)
                tags_json, tags_error = _encode_tags(old.tags if tags[i] is None else tags[i])
                errors[i] = vec_error or tags_error
                if errors[i] is None:
                    new_uri = old.uri if uri[i] is None else str(uri[i])
                    new_text = old.text if text[i] is None else str(text[i])
                    source = old.embedded_by
                    if embeddings[i] is not None:
                        source = _optional_str(embedded_by[i])
                    rows.append(Row(doc_id, label, vec, new_uri, new_text, tags_json, source))
                    if embeddings[i] is not None:
                        reindex.append(rows[-1])
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
            self._write([], reindex=[], existing=set(), deletes=labels)
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
            ef = max(int(ef or self.ef), k)
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
            graph = self._index
            return {
                "count": self.count,
                "deleted_slots": graph.element_count - self._graph_live if graph else 0,
                "capacity": graph.get_max_elements() if graph else 0,
                "dim": self._db.dim,
                "space": self.space,
                "M": self.M,
                "ef_construction": self.ef_construction,
                "ef": self.ef,
                "seq": self._db.seq,
                "snapshot_seq": self._snapshot_seq,
                "path": str(self.path),
                "tags": self._fields.tags.summary(),
            }

    def snapshot(self) -> None:
        """Write the graph to disk atomically so that the next open replays only later changes."""
        with self._lock:
            self._check_open()
            if self._index is None or self._snapshot_seq == self._db.seq:
                return
            name = f"index-{self._db.seq}.bin"
            with atomic.atomic_path(self.path / name) as tmp:
                self._index.save_index(str(tmp))
            atomic.write_json(self.path / SNAPSHOT_META, self._snapshot_meta(name))
            self._snapshot_seq = self._db.seq
            self._changes_since_snapshot = 0
            self._remove_stale_files(keep=name)
            # Tombstones only serve replays onto an older snapshot, and none is left.
            self._db.prune_tombstones(self._db.seq)

    def close(self) -> None:
        """Snapshot pending changes (so that the next open is fast) and close the database."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._changes_since_snapshot:
                    self.snapshot()
            finally:
                self._closed = True
                self._db.close()
                self._index = None
                self._fields = FieldMirror()
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
        vec, error = check_vector(embedding, self._db.dim)
        tags_json, tags_error = _encode_tags(tags)
        if error or tags_error:
            return None, None, error or tags_error
        if self._db.dim is None:  # the first valid vector fixes the dimension of the store
            self._db.dim = vec.size
        return vec, tags_json, None

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

    def _write(
        self,
        rows: list[Row],
        reindex: list[Row],
        existing: set[int],
        deletes: dict[str, int] | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        """Commit one batch to SQLite (the acknowledgement point), then apply it to the graph.

        ``reindex`` are the rows whose vector changed; ``existing`` the labels already live;
        ``meta`` the caller's values (`get_meta`) committed with the rows.
        """
        deletes = deletes or {}
        if not rows and not deletes:
            return
        seq = self._db.commit(rows, reindex, list(deletes.values()), meta)
        for r in rows:
            self._fields.set(r.label, r.id, r.uri, r.text, r.tags_json)
        for label in deletes.values():
            self._fields.drop(label)
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
        graph = hnswlib.Index(space=self.space, dim=self._db.dim)
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

    def _apply(self, rows: list[Row], existing: set[int], deleted: Iterable[int]) -> int:
        """Apply committed changes to the graph (deletions first: their slots get reused).

        Returns the number of replayed changes.
        """
        if self._db.dim is None:
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
        return self._exact(q, k, self._fields.labels())

    def _filtered_knn(
        self, q: np.ndarray, k: int, ef: int, flt: Filter
    ) -> tuple[np.ndarray, np.ndarray]:
        """(labels, distances) of the top ``min(k, matching items)`` among the items matching
        ``flt``, best first."""
        mask = self._fields.mask(flt, self._db.next_label)
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
        """ "walk" or "scan" for a filtered batch (`search.filter_planner.plan`)."""
        return plan(n_queries, n_matching, self.count, self._db.dim, ef).path

    def _exact(self, q: np.ndarray, k: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by cosine among ``labels``, from the vectors in SQLite."""
        return exact_knn(q, k, *self._db.vectors_of(labels))

    @property
    def _tags(self) -> TagIndex:
        """The tag index (benchmarks/bench_filter.py reports its size)."""
        return self._fields.tags

    # ------------------------------------------------------------------ open and snapshot

    def _open_graph(self) -> None:
        self._remove_temp_files()
        if self._db.dim is None:
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
            "dim": self._db.dim,
            "space": self.space,
            "M": self.M,
            "ef_construction": self.ef_construction,
        }
        if any(meta.get(key) != value for key, value in expected.items()):
            return None  # built with other parameters: rebuild with the asked ones
        if not isinstance(meta.get("seq"), int) or meta["seq"] > self._db.seq:
            return None  # reflects changes SQLite does not have
        return meta

    def _load_snapshot(self, meta: dict[str, Any]) -> None:
        graph = hnswlib.Index(space=self.space, dim=self._db.dim)
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
        replayed = self._apply([], set(), self._db.deleted_since(since))
        in_graph = set(self._index.get_ids_list())
        for chunk in _chunks(self._db.vectors_since(since), _ADD_CHUNK):
            rows = [Row("", label, vector, None, None, "") for label, vector in chunk]
            replayed += self._apply(rows, in_graph, [])
        return replayed

    def _rebuild(self) -> None:
        """Build the graph from all rows of SQLite, then snapshot it."""
        capacity = self.initial_capacity
        while capacity < self.count:
            capacity *= 2
        self._index, self._graph_live = self._new_graph(capacity), 0
        self._snapshot_seq = None
        for chunk in _chunks(self._db.all_vectors(), _ADD_CHUNK):
            vectors = np.stack([vector for _, vector in chunk])
            labels = np.array([label for label, _ in chunk], np.int64)
            self._index.add_items(vectors, labels, num_threads=self.num_threads)
            self._graph_live += len(chunk)
        self._changes_since_snapshot = self.count
        if self.count:
            self.snapshot()

    def _snapshot_meta(self, name: str) -> dict[str, Any]:
        return {
            "file": name,
            "seq": self._db.seq,
            "count": self._graph_live,
            "dim": self._db.dim,
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


def _encode_tags(tags: Any) -> tuple[str | None, str | None]:
    """``(JSON, None)`` or ``(None, reason)``; None means no tags."""
    if tags is None:
        return "{}", None
    if not isinstance(tags, dict):
        return None, f"tags must be a dict, got {type(tags).__name__}"
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


def _chunks(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
