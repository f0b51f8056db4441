"""ItemDB on its own: the change sequence and its counters, what changed since a number,
callers' meta, all-or-nothing batches, lookups, and the format check and migration on open."""

from __future__ import annotations

import dataclasses
import sqlite3

import numpy as np
import pytest

from imagepairs.documents import STORED_FIELDS, Match
from search.field_mirror import HIT_COLUMNS
from search.item_db import COLUMNS, DB_FILE, UNRECORDED, ItemDB, Row

DIM = 4


def row(db: ItemDB, doc_id: str, vector, label: int | None = None, **fields) -> Row:
    label = db.take_label() if label is None else label
    vec = np.asarray(vector, np.float32)
    return Row(doc_id, label, vec, fields.get("uri"), fields.get("text"), fields.get("tags", "{}"))


def rows(db: ItemDB, n: int) -> list[Row]:
    return [row(db, f"v{i}", np.eye(DIM)[i % DIM] + i) for i in range(n)]


def set_meta(path, **values: str) -> None:
    with sqlite3.connect(path / DB_FILE) as db:
        db.executemany(
            "UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in values.items()]
        )
    db.close()


@pytest.fixture
def db(tmp_path):
    items = ItemDB(tmp_path, DIM)
    yield items
    items.close()


def test_each_batch_takes_the_next_number_and_the_counters_persist(tmp_path):
    db = ItemDB(tmp_path, None)
    assert (db.dim, db.seq, db.next_label) == (None, 0, 0)
    db.dim = DIM  # as the store does with the first valid vector
    batch = rows(db, 3)
    assert db.commit(batch, batch, []) == 1
    assert db.commit([], [], [0]) == 2
    db.close()
    db = ItemDB(tmp_path, None)
    assert (db.dim, db.seq, db.next_label) == (DIM, 2, 3)
    assert db.labels_of(["v0", "v1"]) == {"v1": 1}
    assert db.commit([row(db, "v0", np.ones(DIM))], [], []) == 3
    assert db.labels_of(["v0"]) == {"v0": 3}  # a deleted id comes back with a fresh label
    db.close()


def test_what_changed_since_a_number(db):
    first = rows(db, 3)
    db.commit(first, first, [])
    moved = [first[1]._replace(vector=np.full(DIM, 7, np.float32)), row(db, "v3", np.ones(DIM))]
    db.commit(moved, moved, [])
    db.commit([], [], [0])
    assert [label for label, _ in db.vectors_since(1)] == [1, 3]
    assert [label for label, _ in db.vectors_since(2)] == []
    assert [label for label, _ in db.all_vectors()] == [1, 2, 3]
    assert dict(db.all_vectors())[1].tolist() == [7] * DIM
    assert (db.deleted_since(2), db.deleted_since(3)) == ([0], [])
    db.prune_tombstones(3)  # once a snapshot reflects change 3
    assert db.deleted_since(0) == []


def test_a_row_without_a_new_vector_keeps_the_stored_one(db):
    first = row(db, "a", [1, 2, 3, 4], text="old", tags='{"k": 1}')
    db.commit([first], [first], [])
    changed = first._replace(vector=None, text="new", embedded_by="clip")
    db.commit([changed], [], [])
    ((label, record),) = db.fetch(["a"]).values()
    assert (label, record.text, record.tags, record.embedded_by) == (0, "new", {"k": 1}, "clip")
    assert record.embedding.tolist() == [1, 2, 3, 4]


def test_callers_meta_is_committed_with_rows_only(tmp_path, db):
    db.commit([], [], [0], meta={"k": "lost"})  # a deletion carries no meta
    assert db.user_meta("k") is None
    batch = rows(db, 1)
    db.commit(batch, batch, [], meta={"k": "v", "dim": "not the store's dim"})
    assert (db.user_meta("k"), db.user_meta("dim"), db.user_meta("nope")) == (
        "v",
        "not the store's dim",
        None,
    )
    db.close()
    assert ItemDB(tmp_path, DIM).dim == DIM  # the callers' keys live apart from the store's


def test_a_failed_batch_writes_nothing(tmp_path, db):
    good = rows(db, 2)
    bad = good[1]._replace(vector=None)  # fails after the items rows are written
    with pytest.raises(AttributeError):
        db.commit(good, [good[0], bad], [])
    assert (db.seq, db.labels_of(["v0", "v1"]), list(db.all_vectors())) == (0, {}, [])
    db.close()
    assert ItemDB(tmp_path, DIM).seq == 0


def test_lookups_skip_unknown_and_non_string_ids(db):
    batch = rows(db, 3)
    db.commit(batch, batch, [])
    assert db.labels_of(["v2", "nope", "v0"]) == {"v0": 0, "v2": 2}
    assert db.labels_of([]) == {}
    assert list(db.fetch(["v1", 5, None, "nope"])) == ["v1"]
    found, vectors = db.vectors_of(np.array([2, 0, 9]))
    assert sorted(found.tolist()) == [0, 2] and vectors.shape == (2, DIM)
    assert vectors[found.tolist().index(2)].tolist() == (np.eye(DIM)[2] + 2).tolist()
    assert sorted(db.field_rows(("uri", "text", "tags"))) == [
        (i, f"v{i}", None, None, "{}") for i in range(3)
    ]


def test_format_and_dim_are_checked_on_open(tmp_path):
    ItemDB(tmp_path, DIM).close()
    with pytest.raises(ValueError, match=f"has dim {DIM}, not 5"):
        ItemDB(tmp_path, 5)
    set_meta(tmp_path, format="3")
    with pytest.raises(ValueError, match="has format 3, which this version"):
        ItemDB(tmp_path, DIM)


def test_format_1_is_migrated(tmp_path):
    with sqlite3.connect(tmp_path / DB_FILE) as old:
        old.execute(
            "CREATE TABLE items (label INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
            "seq INTEGER NOT NULL, uri TEXT, text TEXT, tags TEXT NOT NULL DEFAULT '{}')"
        )
        old.execute("INSERT INTO items VALUES (0, 'a', 1, NULL, NULL, '{}')")
        old.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        old.execute("INSERT INTO meta VALUES ('format', '1')")
    old.close()
    db = ItemDB(tmp_path, None)
    db.commit([row(db, "b", np.ones(DIM), label=1)], [], [])
    db.close()
    with sqlite3.connect(tmp_path / DB_FILE) as migrated:
        sources = migrated.execute("SELECT id, embedded_by FROM items ORDER BY id").fetchall()
        version = migrated.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    migrated.close()
    assert sources == [("a", UNRECORDED), ("b", None)] and version == ("2",)


def test_the_store_has_a_column_for_each_stored_field_of_the_documents():
    assert set(COLUMNS) == set(STORED_FIELDS)
    assert set(HIT_COLUMNS) == {f.name for f in dataclasses.fields(Match)} & set(COLUMNS)


def test_a_stored_field_the_database_lacks_is_added_on_open_with_its_old_rows_empty(tmp_path):
    db = ItemDB(tmp_path, DIM)
    first = [row(db, "v0", np.eye(DIM)[0], uri="u0", text="t0")]
    db.commit(first, first, [])
    db.close()
    with sqlite3.connect(tmp_path / DB_FILE) as raw:  # as a version before `text` wrote it
        raw.execute("ALTER TABLE items DROP COLUMN text")
    db = ItemDB(tmp_path, DIM)
    [(_, record)] = db.fetch(["v0"]).values()
    assert (record.uri, record.text) == ("u0", None)
    second = [row(db, "v1", np.eye(DIM)[1], text="t1")]
    db.commit(second, second, [])
    assert db.fetch(["v1"])["v1"][1].text == "t1"
    db.close()
