"""HNSWGraph on its own, over an in-memory vector source: building, changes, slot reuse and
growth, queries (the ef retry, the filtered walk), and snapshots (the on-disk meta, loading and
catching up, and every reason a snapshot is refused)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from search.hnsw_graph import SNAPSHOT_META, HNSWGraph

DIM = 8


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Source:
    """A `VectorSource` in memory: live vectors by label, each with the change that wrote it,
    and the changes that deleted labels (the tombstones)."""

    def __init__(self) -> None:
        self.seq = 0
        self.vectors: dict[int, tuple[int, np.ndarray]] = {}
        self.tombstones: dict[int, int] = {}

    def write(self, vectors: dict[int, np.ndarray], deleted: tuple[int, ...] = ()) -> None:
        self.seq += 1
        for label in deleted:
            del self.vectors[label]
            self.tombstones[label] = self.seq
        self.vectors.update({label: (self.seq, v) for label, v in vectors.items()})

    def all_vectors(self):
        return [(label, v) for label, (_, v) in sorted(self.vectors.items())]

    def vectors_since(self, seq: int):
        return [(label, v) for label, (s, v) in sorted(self.vectors.items()) if s > seq]

    def deleted_since(self, seq: int) -> list[int]:
        return [label for label, s in self.tombstones.items() if s > seq]


def new_graph(tmp_path, **params) -> HNSWGraph:
    settings = dict(space="cosine", M=16, ef_construction=100, ef=32, initial_capacity=8)
    return HNSWGraph(tmp_path, **{**settings, "num_threads": 1, **params})


def nearest(graph: HNSWGraph, queries: np.ndarray) -> list[int]:
    labels, _ = graph.knn(queries, 1, graph.ef)
    return labels[:, 0].tolist()


@pytest.fixture
def built(tmp_path):
    """A graph rebuilt from 20 vectors (labels 0-19), and its source."""
    source = Source()
    x = unit_vectors(20)
    source.write(dict(enumerate(x)))
    graph = new_graph(tmp_path)
    graph.rebuild(source, DIM, len(source.vectors))
    return graph, source, x


def test_rebuild_holds_every_vector_and_doubles_the_capacity(built):
    graph, source, x = built
    assert (graph.live, graph.capacity, graph.deleted_slots) == (20, 32, 0)
    assert graph.snapshot_seq is None and graph.changes_since_snapshot == 20
    assert nearest(graph, x) == list(range(20))
    labels, distances = graph.knn(x[:2], 3, graph.ef)
    assert labels.shape == distances.shape == (2, 3)
    assert distances[:, 0] == pytest.approx([0.0, 0.0], abs=1e-5)


def test_apply_updates_in_place_reuses_deleted_slots_and_grows(built):
    graph, _, x = built
    y = unit_vectors(40, seed=1)
    # an update of a live label takes no new slot
    assert graph.apply([(3, y[0])], live=set(range(20)), deleted=[]) == 1
    assert (graph.live, graph.deleted_slots) == (20, 0) and nearest(graph, y[:1]) == [3]
    # deletions free slots that the next additions take, without growing
    assert graph.apply([], set(), deleted=[0, 1, 1, 99]) == 2  # unknown or twice: no-ops
    assert (graph.live, graph.deleted_slots, graph.capacity) == (18, 2, 32)
    graph.apply([(20, y[1]), (21, y[2])], live=set(), deleted=[])
    assert (graph.live, graph.deleted_slots, graph.capacity) == (20, 0, 32)
    # past the capacity it doubles
    graph.apply([(22 + i, v) for i, v in enumerate(y[3:30])], live=set(), deleted=[])
    assert (graph.live, graph.capacity) == (47, 64)
    assert nearest(graph, y[1:30]) == list(range(20, 49))
    assert 0 not in graph.knn(x[0:1], 47, graph.ef)[0]


def test_the_first_vectors_create_the_graph(tmp_path):
    graph = new_graph(tmp_path)
    assert graph.load(Source(), None, 0, 0)  # no dimension yet: nothing to load or build
    assert graph.index is None and graph.capacity == 0 and graph.apply([], set(), [5]) == 0
    x = unit_vectors(12)
    graph.apply(list(enumerate(x)), live=set(), deleted=[])
    assert (graph.index.dim, graph.live, graph.capacity) == (DIM, 12, 12)


class ShortSighted:
    """An hnswlib index stand-in that, like hnswlib among many deleted vectors, raises unless
    the ef reaches ``enough``; it records every ef it is set to."""

    def __init__(self, index, enough: int) -> None:
        self.index, self.enough, self.efs = index, enough, []
        self.element_count = index.element_count

    def set_ef(self, ef: int) -> None:
        self.efs.append(ef)

    def knn_query(self, q, k, num_threads):
        if self.efs[-1] < self.enough:
            raise RuntimeError("Cannot return the results in a contiguous 2D array")
        return self.index.knn_query(q, k=k, num_threads=num_threads)


def test_knn_doubles_ef_up_to_the_whole_graph_then_gives_up(built):
    graph, _, x = built
    graph.index = ShortSighted(graph.index, enough=12)
    labels, _ = graph.knn(x[:2], 3, ef=3)
    assert labels[:, 0].tolist() == [0, 1]
    assert graph.index.efs == [3, 6, 12, graph.ef]  # then the default is back
    graph.index = ShortSighted(graph.index.index, enough=10**9)
    assert graph.knn(x[:2], 3, ef=3) is None  # the caller scans exactly
    assert graph.index.efs == [3, 6, 12, 20, graph.ef]  # 20: every element


def test_filtered_walk_admits_only_allowed_labels(built):
    graph, _, x = built
    allowed = np.zeros(20, bool)
    allowed[::2] = True
    labels, _ = graph.filtered_knn(x[:5], 5, 16, allowed)
    assert all(label % 2 == 0 for label in labels.ravel())
    assert labels[0, 0] == 0 and labels[2, 0] == 2
    few = np.zeros(20, bool)
    few[[4, 9]] = True
    assert graph.filtered_knn(x[:1], 3, 16, few) is None  # only 2 can be found: scan instead
    assert graph.index.ef == graph.ef


# ---------------------------------------------------------------------- snapshots


def test_snapshot_writes_the_graph_and_its_meta(built, tmp_path):
    graph, source, _ = built
    assert graph.snapshot(source.seq)
    meta = json.loads((tmp_path / SNAPSHOT_META).read_text())
    assert meta == {  # the on-disk format: what a store of this version reads back
        "file": "index-1.bin",
        "seq": 1,
        "count": 20,
        "dim": DIM,
        "space": "cosine",
        "M": 16,
        "ef_construction": 100,
    }
    assert (graph.snapshot_seq, graph.changes_since_snapshot) == (1, 0)
    assert not graph.snapshot(source.seq)  # nothing new
    source.write({20: unit_vectors(1)[0]})
    graph.apply([(20, source.vectors[20][1])], set(), [])
    assert graph.snapshot(source.seq)
    assert sorted(p.name for p in tmp_path.glob("index-*")) == ["index-2.bin"]  # old one gone


def test_load_catches_up_with_changes_after_the_snapshot(built, tmp_path):
    graph, source, x = built
    graph.snapshot(source.seq)
    y = unit_vectors(10, seed=2)
    source.write({20 + i: v for i, v in enumerate(y[:5])})  # new labels
    source.write({2: y[5]}, deleted=(0, 1, 21))  # a re-indexed label, deletions
    (tmp_path / "index-9.bin.tmp").write_bytes(b"half-written")
    reopened = new_graph(tmp_path)
    assert reopened.load(source, DIM, source.seq, len(source.vectors))
    assert not list(tmp_path.glob("*.tmp"))
    assert (reopened.live, reopened.snapshot_seq) == (22, 1)
    # replayed: 2 deletions (21 never reached the snapshot), 4 additions, 1 update
    assert reopened.changes_since_snapshot == 2 + 4 + 1
    assert nearest(reopened, np.stack([y[0], y[5], x[3]])) == [20, 2, 3]
    found = set(reopened.knn(x[:1], 22, 64)[0].ravel().tolist())
    assert not {0, 1, 21} & found and len(found) == 22


@pytest.mark.parametrize(
    ("damage", "opened_with"),
    [
        ("snapshot.json gone", {}),
        ("index file garbage", {}),
        (None, {"M": 8}),  # built with other parameters
        (None, {"dim": DIM + 1}),
        (None, {"seq": 0}),  # the snapshot is ahead of the database
        (None, {"count": 21}),  # the database has an item the graph lacks
    ],
)
def test_load_refuses_an_unusable_snapshot(built, tmp_path, damage, opened_with):
    graph, source, _ = built
    graph.snapshot(source.seq)
    if damage == "snapshot.json gone":
        (tmp_path / SNAPSHOT_META).unlink()
    if damage == "index file garbage":
        (tmp_path / "index-1.bin").write_bytes(b"garbage")
    args = {"dim": DIM, "seq": source.seq, "count": 20} | opened_with
    reopened = new_graph(tmp_path, M=args.pop("M", 16))
    assert not reopened.load(source, **args)
    assert reopened.index is None and reopened.live == 0
