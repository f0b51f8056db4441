"""The hnswlib graph that serves a store's queries: a cache of its item database, with snapshots.

The graph is snapshotted now and then (``index-<seq>.bin``, then ``snapshot.json`` naming that
file and the change number it reflects, each written to a temporary file, fsynced and renamed
by `finetune.atomic`). ``snapshot.json`` is the commit point of a snapshot, so a crash halfway
through writing one leaves the previous one in force. On open the snapshot is loaded and caught
up with the changes committed after its number (`HNSWGraph.load`), or, when there is no usable
snapshot, the graph is rebuilt from every vector (`HNSWGraph.rebuild`).

Labels (hnswlib's integer ids) come from the database, which never gives one to a second id: a
label is either live or tombstoned, so catch-up does not depend on the order of changes, and
hnswlib's restriction on re-adding deleted labels never bites. The slots of deleted vectors are
reused by later additions (``replace_deleted``), and the capacity doubles when they run out.

It reads the database only through `VectorSource` (`search.item_db.ItemDB` is one), and it is
not thread-safe: hnswlib must not be queried while the graph is modified, and
`search.hnsw_store.HNSWStore` serialises the calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import hnswlib
import numpy as np

from finetune import atomic

log = logging.getLogger(__name__)

SNAPSHOT_META = "snapshot.json"
_ADD_CHUNK = 10_000  # vectors per hnswlib.add_items call while rebuilding or catching up

# (label, vector): what the graph stores, as the database hands it over
Labelled = tuple[int, np.ndarray]


class VectorSource(Protocol):
    """The vectors the graph caches, by label, and what changed after a change number."""

    def all_vectors(self) -> Iterable[Labelled]: ...

    def vectors_since(self, seq: int) -> Iterable[Labelled]: ...

    def deleted_since(self, seq: int) -> list[int]: ...


class HNSWGraph:
    """The graph of one store directory, and its snapshot there.

    The parameters are plain attributes: ``ef`` is the default search ef, ``num_threads``
    hnswlib's for each add and query call (-1: all cores). ``index`` is None until the
    dimension is known.
    """

    def __init__(
        self,
        directory: Path,
        space: str,
        M: int,
        ef_construction: int,
        ef: int,
        initial_capacity: int,
        num_threads: int,
    ) -> None:
        self.directory = directory
        self.space = space
        self.M = M
        self.ef_construction = ef_construction
        self.ef = ef
        self.initial_capacity = initial_capacity
        self.num_threads = num_threads
        self.index: hnswlib.Index | None = None
        self.live = 0  # live labels in the graph; equals the store's count once caught up
        self.snapshot_seq: int | None = None  # the change number of the snapshot in force
        self.changes_since_snapshot = 0

    @property
    def capacity(self) -> int:
        return self.index.get_max_elements() if self.index else 0

    @property
    def deleted_slots(self) -> int:
        """Slots of deleted vectors, free for the next additions."""
        return self.index.element_count - self.live if self.index else 0

    # ------------------------------------------------------------------ open

    def load(self, source: VectorSource, dim: int | None, seq: int, count: int) -> bool:
        """Load the snapshot and catch it up with ``source``, whose last change is ``seq`` and
        which holds ``count`` vectors. False when the graph must be rebuilt (`rebuild`): there
        is no usable snapshot; True when it is ready, or has nothing to hold (``dim`` None)."""
        self._remove_temp_files()
        if dim is None:
            return True
        meta = self._read_snapshot_meta(dim, seq)
        if meta is None:
            return False
        try:
            self._load_snapshot(meta, source, count)
        except Exception:  # a damaged snapshot is only a cache miss
            log.warning("snapshot in %s unusable, rebuilding", self.directory, exc_info=True)
            return False
        return True

    def rebuild(self, source: VectorSource, dim: int, count: int) -> None:
        """Build the graph from all ``count`` vectors of ``source`` (no snapshot yet)."""
        capacity = self.initial_capacity
        while capacity < count:
            capacity *= 2
        self.index, self.live = self._new_index(dim, capacity), 0
        self.snapshot_seq = None
        for chunk in _chunks(source.all_vectors(), _ADD_CHUNK):
            vectors = np.stack([vector for _, vector in chunk])
            labels = np.array([label for label, _ in chunk], np.int64)
            self.index.add_items(vectors, labels, num_threads=self.num_threads)
            self.live += len(chunk)
        self.changes_since_snapshot = count

    def _read_snapshot_meta(self, dim: int, seq: int) -> dict[str, Any] | None:
        try:
            meta = json.loads((self.directory / SNAPSHOT_META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        expected = {
            "dim": dim,
            "space": self.space,
            "M": self.M,
            "ef_construction": self.ef_construction,
        }
        if any(meta.get(key) != value for key, value in expected.items()):
            return None  # built with other parameters: rebuild with the asked ones
        if not isinstance(meta.get("seq"), int) or meta["seq"] > seq:
            return None  # reflects changes the database does not have
        return meta

    def _load_snapshot(self, meta: dict[str, Any], source: VectorSource, count: int) -> None:
        index = hnswlib.Index(space=self.space, dim=meta["dim"])
        index.load_index(str(self.directory / meta["file"]), allow_replace_deleted=True)
        index.set_ef(self.ef)
        self.index, self.live = index, int(meta["count"])
        try:
            replayed = self._catch_up(source, meta["seq"])
            if self.live != count:
                raise RuntimeError(f"graph has {self.live} live items, SQLite {count}")
        except Exception:
            self.index, self.live = None, 0
            raise
        self.snapshot_seq = meta["seq"]
        self.changes_since_snapshot = replayed
        self._remove_stale_files(keep=meta["file"])

    def _catch_up(self, source: VectorSource, since: int) -> int:
        """Replay the changes committed after change ``since``; returns their number.

        Order does not matter: a label is either live or tombstoned.
        """
        replayed = self.apply([], set(), source.deleted_since(since))
        in_graph = set(self.index.get_ids_list())
        for chunk in _chunks(source.vectors_since(since), _ADD_CHUNK):
            replayed += self.apply(chunk, in_graph, [])
        return replayed

    # ------------------------------------------------------------------ changes

    def apply(self, items: Sequence[Labelled], live: set[int], deleted: Iterable[int]) -> int:
        """Apply committed changes: delete the ``deleted`` labels (first: their slots get
        reused), then add or update ``items``; ``live`` are the labels already in the graph.

        The first items fix the dimension of a graph that has none yet. Returns the number of
        changes applied.
        """
        if self.index is None:
            if not items:
                return 0
            self.index = self._new_index(items[0][1].size, max(self.initial_capacity, len(items)))
        n_deleted = sum(self._mark_deleted(label) for label in deleted)
        updated = [item for item in items if item[0] in live]
        added = [item for item in items if item[0] not in live]
        self._ensure_capacity(len(added))
        # Live labels are updated in place; new ones may take the slot of a deleted vector.
        # (replace_deleted=True with a live label would leave it in the graph twice.)
        for group, replace_deleted in ((updated, False), (added, True)):
            if group:
                self.index.add_items(
                    np.stack([vector for _, vector in group]),
                    np.array([label for label, _ in group], dtype=np.int64),
                    num_threads=self.num_threads,
                    replace_deleted=replace_deleted,
                )
        self.live += len(added)
        return n_deleted + len(items)

    def _new_index(self, dim: int, capacity: int) -> hnswlib.Index:
        index = hnswlib.Index(space=self.space, dim=dim)
        index.init_index(
            max_elements=capacity,
            M=self.M,
            ef_construction=self.ef_construction,
            allow_replace_deleted=True,
        )
        index.set_ef(self.ef)
        return index

    def _mark_deleted(self, label: int) -> bool:
        try:
            self.index.mark_deleted(label)
        except RuntimeError:  # not in this graph or already deleted: nothing to undo
            return False
        self.live -= 1
        return True

    def _ensure_capacity(self, n_new: int) -> None:
        """Grow the graph by doubling so ``n_new`` more vectors fit (deleted slots are free)."""
        capacity = self.index.get_max_elements()
        if self.live + n_new > capacity:
            self.index.resize_index(max(self.live + n_new, 2 * capacity))

    # ------------------------------------------------------------------ queries

    def knn(self, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(labels, distances)`` of each query's ``k`` nearest live vectors, or None.

        When hnswlib finds fewer than ``k`` live vectors (small ef among many deletions) it
        raises, so retry with a doubled ef up to a search of the whole graph. Even that can
        miss live vectors when deleted ones crowd them out (many identical vectors deleted,
        say): then None, and the caller scans the live vectors exactly.
        """
        try:
            for ef_tried in _doubling(ef, self.index.element_count):
                self.index.set_ef(ef_tried)
                with contextlib.suppress(RuntimeError):
                    return self.index.knn_query(q, k=k, num_threads=self.num_threads)
            return None
        finally:
            self.index.set_ef(self.ef)

    def filtered_knn(
        self, q: np.ndarray, k: int, ef: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """A graph walk that admits only the labels where the boolean array ``allowed`` is
        True; None when it finds fewer than ``k`` of them (the caller scans them instead)."""
        # bytes indexing is the cheapest membership test hnswlib can call back into
        admit = allowed.view(np.uint8).tobytes().__getitem__
        try:
            self.index.set_ef(ef)
            # one thread: the callback needs the GIL, so more threads only contend for it
            return self.index.knn_query(q, k=k, num_threads=1, filter=admit)
        except RuntimeError:
            return None
        finally:
            self.index.set_ef(self.ef)

    # ------------------------------------------------------------------ snapshot

    def snapshot(self, seq: int) -> bool:
        """Write the graph, which reflects change ``seq``, to disk atomically; False when
        there is nothing to write (no graph, or that snapshot is already in force)."""
        if self.index is None or self.snapshot_seq == seq:
            return False
        name = f"index-{seq}.bin"
        with atomic.atomic_path(self.directory / name) as tmp:
            self.index.save_index(str(tmp))
        atomic.write_json(self.directory / SNAPSHOT_META, self._snapshot_meta(name, seq))
        self.snapshot_seq = seq
        self.changes_since_snapshot = 0
        self._remove_stale_files(keep=name)
        return True

    def _snapshot_meta(self, name: str, seq: int) -> dict[str, Any]:
        return {
            "file": name,
            "seq": seq,
            "count": self.live,
            "dim": self.index.dim,
            "space": self.space,
            "M": self.M,
            "ef_construction": self.ef_construction,
        }

    def _remove_stale_files(self, keep: str) -> None:
        """Drop older snapshots; the one in force is ``keep``."""
        for path in self.directory.glob("index-*.bin"):
            if path.name != keep:
                path.unlink(missing_ok=True)

    def _remove_temp_files(self) -> None:
        """Drop leftovers of a snapshot write interrupted by a crash."""
        for path in self.directory.glob(f"*{atomic.TEMP_SUFFIX}"):
            path.unlink(missing_ok=True)


def _doubling(ef: int, total: int) -> Iterator[int]:
    """``ef``, then doubled, up to ``total`` (the last one tried)."""
    while True:
        yield ef
        if ef >= total:
            return
        ef = min(2 * ef, total)


def _chunks(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
