"""HNSWStore: writes and per-item errors, search exactness, durability (reopen, catch-up from an
old snapshot, a real ``kill -9``) and concurrent search while indexing, all through its public
API; its parts have their own tests (test_item_db, test_hnsw_graph, test_field_mirror,
test_filter_planner, test_exact_knn)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from search.hnsw_store import HNSWStore, check_vector

DIM = 16
REPO = Path(__file__).resolve().parents[1]


def vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def ids(n: int, prefix: str = "v") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def top1(store: HNSWStore, queries: np.ndarray) -> list[str]:
    return [hits[0].id for hits in store.search(queries, limit=1)]


@pytest.fixture
def store(tmp_path):
    with HNSWStore(tmp_path / "store", initial_capacity=64) as s:
        yield s


def run_script(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """A Python subprocess that can import the project (runs from the repo root)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        **kwargs,
    )


# ---------------------------------------------------------------------- writes and errors


def test_upsert_and_exact_self_retrieval(store):
    x = vectors(300)
    tags = [{"i": i} for i in range(300)]
    assert store.upsert(ids(300), x, uri=[f"u{i}" for i in range(300)], tags=tags) == [None] * 300
    assert store.count == 300
    assert top1(store, x) == ids(300)
    hit = store.search(x[7], limit=3)[0]
    assert (hit[0].id, hit[0].uri, hit[0].tags, hit[0].text) == ("v7", "u7", {"i": 7}, None)
    assert hit[0].score == pytest.approx(1.0, abs=1e-5)
    scores = [h.score for h in hit]
    assert scores == sorted(scores, reverse=True)
    record = store.get(["v7", "nope"])
    assert record[1] is None
    np.testing.assert_allclose(record[0].embedding, x[7] / np.linalg.norm(x[7]), rtol=1e-5)


def test_reindexing_an_id_replaces_it_in_place(store):
    x = vectors(20)
    store.upsert(ids(10), x[:10], text=["old"] * 10)
    slots = store.status()["capacity"], store.status()["deleted_slots"]
    assert store.upsert(["v3"], x[15:16], text=["new"]) == [None]
    assert store.count == 10
    assert (store.status()["capacity"], store.status()["deleted_slots"]) == slots
    hits = store.search(x[15], limit=10)[0]
    assert (hits[0].id, hits[0].text) == ("v3", "new")
    assert [h.id for h in hits].count("v3") == 1  # no stale copy of the old vector


def test_bad_items_get_errors_and_the_others_are_stored(store):
    x = vectors(8)
    batch_ids = ["a", "b", "c", "d", "e", "f", "", "g"]
    embeddings = [x[0], x[1, :5], [np.nan] * DIM, np.zeros(DIM), "abc", x[5], x[6], x[7]]
    tags = [None, None, None, None, None, {"bad": object()}, None, None]
    errors = store.upsert(batch_ids, embeddings, tags=tags)
    assert errors[0] is None and errors[7] is None
    assert "dimension 5" in errors[1]
    assert "NaN" in errors[2]
    assert "zero vector" in errors[3]
    assert "numeric" in errors[4]
    assert "JSON" in errors[5]
    assert "id" in errors[6]
    assert store.count == 2
    assert top1(store, x[[0, 7]]) == ["a", "g"]


def test_first_vector_fixes_dim_and_later_mismatch_is_an_item_error(tmp_path):
    with HNSWStore(tmp_path / "s") as s:
        assert s.dim is None
        assert s.upsert(["zero", "a"], [np.zeros(3), np.ones(3)]) == [
            "embedding is a zero vector",
            None,
        ]
        assert s.dim == 3
        assert "expects 3" in s.upsert(["b"], [np.ones(4)])[0]
    with HNSWStore(tmp_path / "s") as s:
        assert s.dim == 3  # persisted
    with pytest.raises(ValueError, match="dim 3"):
        HNSWStore(tmp_path / "s", dim=4)
    HNSWStore(tmp_path / "s", dim=3).close()  # the failed open released the directory


def test_one_store_per_directory(tmp_path):
    with HNSWStore(tmp_path / "s"):
        with pytest.raises(RuntimeError, match="already open"):
            HNSWStore(tmp_path / "s")
    store = HNSWStore(tmp_path / "s")  # the first one released it on close
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        store.upsert(["a"], vectors(1))


def test_duplicate_ids_in_one_call_last_wins(store):
    x = vectors(3)
    errors = store.upsert(["a", "b", "a"], x, text=["first", "b", "last"])
    assert "duplicate" in errors[0] and errors[1:] == [None, None]
    assert store.count == 2
    assert store.get(["a"])[0].text == "last"
    assert top1(store, x[2:3]) == ["a"]


def test_check_vector():
    vec, error = check_vector([[3.0, 4.0]], None)  # one row is accepted
    assert error is None and np.allclose(vec, [0.6, 0.8]) and vec.dtype == np.float32
    assert check_vector(np.ones((2, 2)), None)[1].startswith("embedding must be a 1-D")
    assert check_vector([], None)[1] == "embedding is empty"
    assert check_vector([np.inf, 1.0], 2)[1] == "embedding contains NaN or inf"
    assert check_vector([3e38, 3e38], 2)[1] is None  # huge but finite: no overflow


# ---------------------------------------------------------------------- delete, reuse, growth


def test_delete_then_slots_are_reused(store):
    x = vectors(60)
    store.upsert(ids(40), x[:40])
    capacity = store.status()["capacity"]
    deleted, unknown = store.delete(["v1", "v2", "v2", "nope", "v3"])
    assert (deleted, unknown) == (["v1", "v2", "v3"], ["nope"])
    assert store.count == 37 and store.status()["deleted_slots"] == 3
    assert not {"v1", "v2", "v3"} & {h.id for h in store.search(x[1], limit=37)[0]}
    store.upsert(ids(20, "w"), x[40:])
    status = store.status()
    assert status["deleted_slots"] == 0 and status["capacity"] == capacity
    assert top1(store, x[40:]) == ids(20, "w")


def test_a_deleted_id_can_come_back(store):
    x = vectors(12)
    store.upsert(ids(10), x[:10])
    store.delete(["v4"])
    store.upsert(["v4"], x[10:11])  # comes back with a new vector (and a fresh label)
    hits = store.search(x[10], limit=10)[0]
    assert hits[0].id == "v4" and len({h.id for h in hits}) == 10 == store.count


def test_grows_past_initial_capacity(tmp_path):
    with HNSWStore(tmp_path / "s", initial_capacity=4) as s:
        x = vectors(150)
        for start in range(0, 150, 30):
            s.upsert(ids(150)[start : start + 30], x[start : start + 30])
        assert s.count == 150 and s.status()["capacity"] >= 150
        assert top1(s, x) == ids(150)


def test_search_after_most_items_are_deleted(store):
    x = vectors(200)
    store.upsert(ids(200), x)
    store.delete(ids(195))
    hits = store.search(x[:3], limit=50, ef=5)  # few live points among many deleted ones
    assert all(sorted(h.id for h in row) == ids(200)[195:] for row in hits)


@pytest.mark.parametrize("seed", [2, 3])
def test_search_after_many_identical_vectors_were_deleted(tmp_path, seed):
    # 2,000 near-identical vectors (an image indexed under many ids), then deleted: the graph
    # walk finds none of the few live ones even at ef = every element, and hnswlib raises
    rng = np.random.default_rng(seed)
    with HNSWStore(tmp_path / "store", initial_capacity=64) as store:
        kept = rng.normal(size=(8, 64)).astype(np.float32)
        store.upsert(ids(8, "kept"), kept)
        copies = []
        for round_ in range(2):
            base = rng.normal(size=64).astype(np.float32)
            noise = rng.normal(size=(1000, 64)).astype(np.float32) * 1e-4 * round_
            copies += ids(1000, f"copy{round_}-")
            for start in range(0, 1000, 512):
                batch = slice(start, start + 512)
                store.upsert(ids(1000, f"copy{round_}-")[batch], (base + noise)[batch])
        store.delete(copies)
        hits = store.search(rng.normal(size=(5, 64)).astype(np.float32), limit=16)
        assert [sorted(h.id for h in row) for row in hits] == [sorted(ids(8, "kept"))] * 5
        exact = store.search(kept, limit=1)
        assert [row[0].id for row in exact] == ids(8, "kept")


def test_search_limits_and_bad_queries(store):
    assert store.search(vectors(2), limit=5) == [[], []]  # empty store
    x = vectors(5)
    store.upsert(ids(5), x)
    assert len(store.search(x[0], limit=100)[0]) == 5  # clamped to the live count
    assert len(store.search(x[0], limit=3, ef=1)[0]) == 3  # ef raised to the limit
    with pytest.raises(ValueError, match="limit"):
        store.search(x[0], limit=0)
    with pytest.raises(ValueError, match="dimension"):
        store.search(np.ones((1, DIM + 1)), limit=1)
    with pytest.raises(ValueError, match="zero"):
        store.search(np.zeros((1, DIM)), limit=1)
    with pytest.raises(ValueError, match="NaN"):
        store.search(np.full((1, DIM), np.nan), limit=1)


# ---------------------------------------------------------------------- update and status


def test_update_changes_existing_ids_only(store):
    x = vectors(6)
    store.upsert(
        ids(3), x[:3], uri=["u0", "u1", "u2"], text=["t0", "t1", "t2"], tags=[{"k": 0}] * 3
    )
    errors = store.update(
        ["v0", "v1", "nope", "v2"],
        embeddings=[None, x[4], x[5], np.ones(DIM + 1)],
        text=["new text", None, None, None],
        tags=[None, {"k": 1}, None, None],
    )
    assert errors[:3] == [None, None, "unknown id"] and "dimension" in errors[3]
    v0, v1, v2 = store.get(ids(3))
    assert (v0.text, v0.uri, v0.tags) == ("new text", "u0", {"k": 0})
    assert (v1.text, v1.tags) == ("t1", {"k": 1})
    assert top1(store, x[[0, 4, 2]]) == ["v0", "v1", "v2"]
    assert store.count == 3 and store.get(["nope"]) == [None]


def test_status(store):
    store.upsert(ids(3), vectors(3))
    store.delete(["v0"])
    status = store.status()
    assert {k: status[k] for k in ("count", "deleted_slots", "capacity", "dim")} == {
        "count": 2,
        "deleted_slots": 1,
        "capacity": 64,
        "dim": DIM,
    }
    assert (status["M"], status["ef_construction"], status["ef"]) == (16, 200, 64)
    assert status["path"] == str(store.path)
    json.dumps(status)


# ---------------------------------------------------------------------- durability


def test_reopen_after_close_finds_everything(tmp_path):
    x = vectors(100)
    with HNSWStore(tmp_path / "s", initial_capacity=16) as s:
        s.upsert(ids(100), x, text=ids(100, "t"))
        s.delete(["v0"])
    with HNSWStore(tmp_path / "s") as s:
        assert s.count == 99 and s.status()["snapshot_seq"] == s.status()["seq"]
        assert top1(s, x[1:]) == ids(100)[1:]
        assert s.search(x[5], limit=1)[0][0].text == "t5"


CATCH_UP_WRITER = """
    import os, sys
    import numpy as np
    from search.hnsw_store import HNSWStore

    x = np.random.default_rng(0).normal(size=(80, 16)).astype(np.float32)
    s = HNSWStore(sys.argv[1], initial_capacity=16, snapshot_every=10**9)
    s.upsert([f"v{i}" for i in range(50)], x[:50])
    s.snapshot()
    print(s.status()["seq"], flush=True)
    s.upsert([f"v{i}" for i in range(50, 70)], x[50:70])  # new ids, past the capacity
    s.delete(["v0", "v1", "v55"])  # tombstones: old and new items
    s.upsert(["v2", "v0"], x[70:72])  # re-indexed live id, deleted id that comes back
    s.update(["v3"], text=["changed"])
    os._exit(0)  # no close(): the snapshot on disk stays the old one
"""


def test_catch_up_from_an_old_snapshot(tmp_path):
    proc = run_script(CATCH_UP_WRITER, str(tmp_path / "s"))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    old_seq = int(out.split()[0])
    x = vectors(80)
    with HNSWStore(tmp_path / "s", initial_capacity=16) as s:
        status = s.status()
        assert status["snapshot_seq"] == old_seq < status["seq"]  # loaded, not rebuilt
        assert s.count == 50 + 20 - 3 + 1
        assert top1(s, x[[3, 50, 69]]) == ["v3", "v50", "v69"]
        assert top1(s, x[70:72]) == ["v2", "v0"]
        assert s.get(["v1", "v55"]) == [None, None]
        assert s.get(["v3"])[0].text == "changed"
        live = {h.id for h in s.search(x[0], limit=s.count)[0]}
        assert len(live) == s.count and not {"v1", "v55"} & live
    with HNSWStore(tmp_path / "s") as s:  # the close above wrote a fresh snapshot
        assert s.status()["snapshot_seq"] == s.status()["seq"]


def test_damaged_snapshot_is_rebuilt_from_sqlite(tmp_path):
    x = vectors(40)
    with HNSWStore(tmp_path / "s") as s:
        s.upsert(ids(40), x)
    for snap in (tmp_path / "s").glob("index-*.bin"):
        snap.write_bytes(b"garbage")
    (tmp_path / "s" / "index-1.bin.tmp").write_bytes(b"half-written")
    with HNSWStore(tmp_path / "s") as s:
        assert s.count == 40 and top1(s, x) == ids(40)
    assert not list((tmp_path / "s").glob("*.tmp"))


KILL_WRITER = """
    import json, sys, zlib
    import numpy as np
    from search.hnsw_store import HNSWStore

    path, prefix = sys.argv[1:]
    rng = np.random.default_rng(zlib.crc32(prefix.encode()))
    s = HNSWStore(path, initial_capacity=32, snapshot_every=150)
    for batch in range(10**6):
        batch_ids = [f"{prefix}{batch}-{i}" for i in range(25)]
        s.upsert(batch_ids, rng.normal(size=(25, 16)))
        if batch % 7 == 3:
            s.delete([batch_ids.pop(0)])
        print(json.dumps(batch_ids), flush=True)  # printed only once acknowledged
"""


def index_until_killed(path: Path, prefix: str, batches: int) -> list[str]:
    """Run KILL_WRITER, SIGKILL it after ``batches`` acknowledged batches; the acknowledged ids."""
    proc = run_script(KILL_WRITER, str(path), prefix)
    acknowledged: list[str] = []
    deadline = time.monotonic() + 30
    for _ in range(batches):
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, "the writer died or stalled"
        acknowledged += json.loads(line)
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # lines already in the pipe were acknowledged too (a cut last line was not)
    complete = [line for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    return acknowledged + [i for line in complete for i in json.loads(line)]


def test_kill_9_loses_nothing_acknowledged(tmp_path):
    acknowledged: list[str] = []
    for round_, batches in enumerate((17, 31, 9)):  # each round reopens the crashed store
        acknowledged += index_until_killed(tmp_path / "s", f"r{round_}-", batches)
        with HNSWStore(tmp_path / "s") as s:
            records = s.get(acknowledged)
            assert all(r is not None for r in records)
            assert top1(s, np.stack([r.embedding for r in records])) == acknowledged
            assert s.count >= len(acknowledged)


# ---------------------------------------------------------------------- concurrency


def test_search_while_another_thread_indexes(tmp_path):
    x = vectors(1000)
    errors: list[BaseException] = []
    with HNSWStore(tmp_path / "s", initial_capacity=8) as s:
        s.upsert(ids(10), x[:10])

        def index() -> None:
            try:
                for start in range(10, 1000, 30):
                    s.upsert(ids(1000)[start : start + 30], x[start : start + 30])
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        writer = threading.Thread(target=index)
        writer.start()
        searches = 0
        while (writer.is_alive() or searches < 10) and searches < 5000:
            for hits in s.search(x[:4], limit=5):
                assert len({h.id for h in hits}) == len(hits) == 5
                assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            searches += 1
        writer.join(timeout=60)
        assert not writer.is_alive() and not errors
        assert s.count == 1000 and top1(s, x) == ids(1000)


# ---------------------------------------------------------------------- filtered search


def brute_force_filtered(x: np.ndarray, keep: np.ndarray, queries: np.ndarray, k: int) -> list:
    """Exact top-k row indices among the rows where ``keep``, best first."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = queries @ unit.T
    sims[:, ~keep] = -np.inf
    return [row[: min(k, int(keep.sum()))].tolist() for row in np.argsort(-sims, axis=1)]


def test_filtered_search_returns_only_matching_items(store):
    x = vectors(500)
    tags = [{"colour": ["red", "blue"][i % 2], "price": i % 50} for i in range(500)]
    store.upsert(ids(500), x, tags=tags)
    for flt in ({"colour": "red"}, {"price": {"$lt": 5}}, {"colour": "blue", "price": 7}):
        for row in store.search(x[:20], limit=10, filter=flt):
            assert len(row) == 10
            scores = [h.score for h in row]
            assert scores == sorted(scores, reverse=True)
            for hit in row:
                assert all(hit.tags[key] == tags[int(hit.id[1:])][key] for key in hit.tags)
    hits = store.search(x[:3], limit=5, filter={"colour": "red"})
    assert all(int(h.id[1:]) % 2 == 0 for row in hits for h in row)
    assert store.search(x[:2], limit=5, filter={"colour": "green"}) == [[], []]
    assert store.search(x[0], limit=5, filter={}) == store.search(x[0], limit=5)


def test_filtered_search_scores_agree_with_unfiltered(store):
    x = vectors(300)
    store.upsert(ids(300), x, tags=[{"even": i % 2 == 0} for i in range(300)])
    unfiltered = {h.id: h.score for h in store.search(x[4], limit=300)[0]}
    for hit in store.search(x[4], limit=20, filter={"even": True})[0]:
        assert hit.score == pytest.approx(unfiltered[hit.id], abs=1e-6)
    assert store.search(x[4], limit=1, filter={"even": True})[0][0].id == "v4"


def test_bad_filter_is_a_value_error_naming_the_part(store):
    store.upsert(ids(3), vectors(3))
    with pytest.raises(ValueError, match=r"filter\.price: \$lt needs a number"):
        store.search(vectors(1), filter={"price": {"$lt": "cheap"}})


@pytest.mark.parametrize("fraction", [0.5, 0.2, 0.05, 0.01, 0.002])
@pytest.mark.parametrize("path", ["walk", "scan", "planned"])
def test_filtered_recall_against_brute_force(tmp_path, fraction, path):
    n, k = 3000, 10
    rng = np.random.default_rng(1)
    x = vectors(n, dim=32, seed=2)
    keep = rng.random(n) < fraction
    queries = vectors(50, dim=32, seed=3)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    with HNSWStore(tmp_path / "s", initial_capacity=n) as s:
        s.upsert(ids(n), x, tags=[{"in": bool(b)} for b in keep])
        if path != "planned":  # each way of searching on its own
            s._plan = lambda *args: path
        found = [[int(h.id[1:]) for h in row] for row in s.search(queries, k, filter={"in": True})]
        single = [[int(h.id[1:]) for h in s.search(q, k, filter={"in": True})[0]] for q in queries]
    exact = brute_force_filtered(x, keep, queries, k)
    for result in (found, single):
        assert all(len(f) == len(e) for f, e in zip(result, exact, strict=True))
        recall = sum(len(set(f) & set(e)) for f, e in zip(result, exact, strict=True))
        assert recall / sum(map(len, exact)) >= 0.99


def test_very_selective_filter_still_fills_the_limit(store):
    x = vectors(1000)
    tags = [
        {"rare": i in (5, 500, 900)} | ({"few": True} if i % 50 == 0 else {}) for i in range(1000)
    ]
    store.upsert(ids(1000), x, tags=tags)
    for q in (x[1], x[500]):
        hits = store.search(q, limit=10, ef=10, filter={"rare": True})[0]
        assert sorted(h.id for h in hits) == ["v5", "v500", "v900"]  # min(limit, matches)
        hits = store.search(q, limit=15, ef=15, filter={"few": True})[0]
        assert len(hits) == 15 and all(int(h.id[1:]) % 50 == 0 for h in hits)


def filtered_ids(store: HNSWStore, flt: dict) -> set[str]:
    return {h.id for h in store.search(np.ones(DIM), limit=store.count, filter=flt)[0]}


def test_filter_index_follows_updates_deletes_reindexing_and_reopen(tmp_path):
    x = vectors(30)
    with HNSWStore(tmp_path / "s", initial_capacity=16) as s:
        s.upsert(ids(20), x[:20], tags=[{"colour": "red", "price": i} for i in range(20)])
        assert filtered_ids(s, {"colour": "red"}) == set(ids(20))
        s.update(["v0", "v1"], tags=[{"colour": "blue", "price": 100}, {}])
        s.update(["v2"], text=["only text changes"])  # tags kept
        s.delete(["v3", "v4"])
        s.upsert(["v5"], x[25:26], tags=[{"colour": "blue", "sizes": [38, 40]}])  # re-indexed
        s.delete(["v6"])
        s.upsert(["v6"], x[26:27], tags=[{"colour": "green"}])  # back with a fresh label
        expected = {
            "red": set(ids(20)) - {"v0", "v1", "v3", "v4", "v5", "v6"},
            "blue": {"v0", "v5"},
            "cheap": {"v2", "v7", "v8", "v9"},
        }

        def check(store: HNSWStore) -> None:
            assert filtered_ids(store, {"colour": "red"}) == expected["red"]
            assert filtered_ids(store, {"colour": {"$in": ["blue"]}}) == expected["blue"]
            assert filtered_ids(store, {"price": {"$gt": 1, "$lt": 10}}) == expected["cheap"]
            assert filtered_ids(store, {"price": {"$gte": 100}}) == {"v0"}
            assert filtered_ids(store, {"sizes": 40}) == {"v5"}
            assert filtered_ids(store, {"colour": "green"}) == {"v6"}

        check(s)
    with HNSWStore(tmp_path / "s") as s:  # rebuilt from SQLite on open
        check(s)


FILTER_WRITER = """
    import os, sys
    import numpy as np
    from search.hnsw_store import HNSWStore

    x = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    s = HNSWStore(sys.argv[1], initial_capacity=16, snapshot_every=10**9)
    s.upsert([f"v{i}" for i in range(30)], x[:30], tags=[{"k": i % 3} for i in range(30)])
    s.snapshot()
    s.update(["v0"], tags=[{"k": 1}])
    s.delete(["v1"])
    s.upsert(["v30", "v3"], x[30:32], tags=[{"k": 0}, {"k": 2}])
    os._exit(0)  # a crash: the snapshot is older than the last commits
"""


def test_filter_index_after_a_crash(tmp_path):
    proc = run_script(FILTER_WRITER, str(tmp_path / "s"))
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    with HNSWStore(tmp_path / "s") as s:
        zero = {f"v{i}" for i in range(0, 30, 3)} - {"v0", "v3"} | {"v30"}
        assert filtered_ids(s, {"k": 0}) == zero
        assert filtered_ids(s, {"k": 1}) == {f"v{i}" for i in range(1, 30, 3)} - {"v1"} | {"v0"}
        assert "v3" in filtered_ids(s, {"k": 2})
