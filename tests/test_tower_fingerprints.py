"""The index knows the towers that embedded it (issue: restarting a Flow on its workspace with
other towers of the same dimension searched the old vectors with the new towers, silently).

Each tower has a fingerprint (its config and weights); every embedding an encoder makes carries
it; the index records the Flow's towers at its first write and refuses other towers' embeddings
per document and per query, `/health` fails while the Flow runs other towers, and
`COMPATIBLE_TOWERS` accepts a named tower on purpose. Also: the client's `get` and `update` over
both protocols, and a store written before sources were recorded.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import requests
import torch

from client.api import SearchClient
from demo import BASE_MODEL_DIR, REPO
from demo.served_flow import ServedFlow, flow_env
from finetune.artifact import FINGERPRINT, load_model, read_tower_config, save_towers
from finetune.tower_ids import TEXT_TOWER, VISION_TOWER, tower_id
from finetune.towers import load_tower, tower_from_bundle
from imagepairs.documents import Document
from search.hnsw_store import UNRECORDED, HNSWStore
from search.index_shard import IndexShard
from search.towers import COMPATIBLE_SETTING, parse_compatible, tower_error, towers_error

RED, BLUE, GREEN = (220, 30, 30), (30, 60, 220), (30, 170, 30)


def nudged_base_model():
    """The base model with every weight nudged: other towers of the same shape and dimension."""
    bundle = load_model(BASE_MODEL_DIR)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in bundle.model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return bundle


@pytest.fixture(scope="module")
def other_towers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("other")
    save_towers(nudged_base_model(), folder)
    return folder


def fingerprint_of(folder, tower: str) -> str:
    return read_tower_config(folder / tower, tower)[FINGERPRINT]


# --- fingerprints ------------------------------------------------------------------------------


def test_a_fingerprint_is_recorded_at_save_and_names_the_weights(other_towers, tmp_path):
    bundle = load_model(BASE_MODEL_DIR)
    save_towers(bundle, tmp_path / "fp32")
    save_towers(nudged_base_model(), tmp_path / "fp16", dtype=torch.float16)
    for tower in (TEXT_TOWER, VISION_TOWER):
        recorded = json.loads((tmp_path / "fp32" / tower / "config.json").read_text())
        assert len(recorded[FINGERPRINT]) == 16
        # the same weights, however they were loaded, have the same fingerprint
        assert recorded[FINGERPRINT] == tower_from_bundle(bundle, tower).config[FINGERPRINT]
        # the committed base model was written before fingerprints: computed from its weights
        assert "fingerprint" not in json.loads((BASE_MODEL_DIR / tower / "config.json").read_text())
        assert (
            load_tower(BASE_MODEL_DIR / tower, tower).config[FINGERPRINT] == recorded[FINGERPRINT]
        )
        # other weights: another fingerprint; and other text and vision towers differ
        assert fingerprint_of(other_towers, tower) != recorded[FINGERPRINT]
        fp16 = fingerprint_of(tmp_path / "fp16", tower)
        assert fp16 != fingerprint_of(other_towers, tower)  # rounded weights are other weights
        assert load_tower(tmp_path / "fp16" / tower, tower).config[FINGERPRINT] == fp16


def test_tower_errors_name_both_sides_and_the_way_on():
    recorded = {TEXT_TOWER: "aaaa", VISION_TOWER: "bbbb"}
    assert tower_error("clip-text:aaaa", recorded) is None
    assert tower_error(None, recorded) is None  # an embedding the caller gave
    assert tower_error("clip-text:cccc", {VISION_TOWER: "bbbb"}) is None  # not recorded yet
    error = tower_error("clip-text:cccc", recorded)
    assert "embedded by clip-text:cccc" in error
    assert "clip-text:aaaa and clip-vision:bbbb" in error
    assert f"{COMPATIBLE_SETTING}=clip-text:cccc" in error and "new WORKSPACE" in error
    assert tower_error("clip-text:cccc", recorded, {"clip-text:cccc"}) is None
    assert towers_error({TEXT_TOWER: "aaaa", VISION_TOWER: "bbbb"}, recorded) is None
    both = towers_error({TEXT_TOWER: "cccc", VISION_TOWER: "dddd"}, recorded)
    assert "the service runs clip-text:cccc, clip-vision:dddd" in both
    assert parse_compatible("clip-text:aa, clip-vision:bb") == {"clip-text:aa", "clip-vision:bb"}
    with pytest.raises(ValueError, match="not a tower id"):
        parse_compatible("aaaa")


def test_the_index_records_its_first_towers_and_refuses_others(tmp_path):
    index = IndexShard(HNSWStore(tmp_path / "ws"))
    vec = np.ones(8, np.float32)
    assert index.towers == {}
    given = index.index([Document(id="given", embedding=vec)])  # no tower: recorded nothing
    assert given[0].error is None and index.towers == {}
    first = [
        Document(
            id="a",
            embedding=vec,
            embedded_by="clip-vision:v1",
            towers={TEXT_TOWER: "t1", VISION_TOWER: "v1"},
        )
    ]
    assert index.index(first)[0].error is None
    assert index.towers == {TEXT_TOWER: "t1", VISION_TOWER: "v1"}
    answers = index.index(
        [
            Document(id="b", embedding=vec, embedded_by="clip-vision:v2"),
            Document(id="c", embedding=vec, embedded_by="clip-vision:v1"),
            Document(id="d", embedding=vec),
        ]
    )
    assert "embedded by clip-vision:v2" in answers[0].error
    assert [a.error for a in answers[1:]] == [None, None]
    [query] = index.search([Document(embedding=vec, embedded_by="clip-text:t2")], {})
    assert "embedded by clip-text:t2" in query.error and not query.matches
    [query] = index.search([Document(embedding=vec, embedded_by="clip-text:t1")], {})
    assert query.error is None and query.matches
    status = index.status()
    assert status["towers"] == {TEXT_TOWER: "t1", VISION_TOWER: "v1"}
    index.close()
    # on purpose: the operator names the new tower
    index = IndexShard(HNSWStore(tmp_path / "ws"), compatible_towers={"clip-text:t2"})
    [query] = index.search([Document(embedding=vec, embedded_by="clip-text:t2")], {})
    assert query.error is None and index.towers_error({TEXT_TOWER: "t2"}) is None
    assert index.towers_error({VISION_TOWER: "v2"})
    index.close()


def test_a_store_written_before_sources_were_recorded_is_migrated(tmp_path, png):
    """A format-1 store (no `embedded_by` column): opened, its rows are marked unrecorded; a
    new caption then keeps the embedding of a row that has a thumbnail (an image) and embeds
    again the text of one that has none."""
    folder = tmp_path / "ws"
    folder.mkdir()
    db = sqlite3.connect(folder / "store.sqlite")
    db.executescript(
        """
        CREATE TABLE items (label INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
            seq INTEGER NOT NULL, uri TEXT, text TEXT, tags TEXT NOT NULL DEFAULT '{}');
        CREATE TABLE vectors (label INTEGER PRIMARY KEY, embedding BLOB NOT NULL);
        CREATE TABLE tombstones (label INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """
    )
    vectors = np.eye(2, 4, dtype=np.float32)
    for label, doc_id in enumerate(["photo", "note"]):
        db.execute("INSERT INTO items VALUES (?, ?, 1, NULL, 'old', '{\"k\": 1}')", (label, doc_id))
        db.execute("INSERT INTO vectors VALUES (?, ?)", (label, vectors[label].tobytes()))
    db.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("format", "1"), ("dim", "4"), ("last_seq", "1"), ("next_label", "2")],
    )
    db.commit()
    db.close()
    index = IndexShard(HNSWStore(folder))
    index.thumbnails.put([("photo", png(RED))])
    assert [r.embedded_by for r in index.store.get(["photo", "note"])] == [UNRECORDED] * 2
    new = np.array([0, 0, 1, 0], np.float32)
    text_embedded = [
        Document(id=i, text="new", embedding=new, embedded_by="clip-text:t")
        for i in ("photo", "note")
    ]
    assert [d.error for d in index.update(text_embedded)] == [None, None]
    photo, note = index.store.get(["photo", "note"])
    assert np.array_equal(photo.embedding, vectors[0]) and photo.embedded_by == UNRECORDED
    assert np.array_equal(note.embedding, new) and note.embedded_by == "clip-text:t"
    assert (photo.text, photo.tags) == ("new", {"k": 1})
    index.close()


# --- a Flow restarted with other towers ----------------------------------------------------------


def client_cli(host: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client", "--host", host, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def start(tmp, workspace, text=BASE_MODEL_DIR, vision=BASE_MODEL_DIR, **settings) -> ServedFlow:
    env = flow_env(BASE_MODEL_DIR, workspace, tmp, torch_threads=1)
    env.update(TEXT_TOWER=str(text / TEXT_TOWER), VISION_TOWER=str(vision / VISION_TOWER))
    env.update(settings)
    return ServedFlow("flow.yml", env, tmp / "log").start()


@pytest.mark.slow
def test_a_flow_restarted_with_other_towers_refuses_them_until_accepted(
    other_towers, tmp_path, png
):
    base = {
        kind: load_tower(BASE_MODEL_DIR / kind, kind).config[FINGERPRINT]
        for kind in (TEXT_TOWER, VISION_TOWER)
    }
    new_text = tower_id(TEXT_TOWER, fingerprint_of(other_towers, TEXT_TOWER))
    workspace = tmp_path / "ws"
    flow = start(tmp_path, workspace)
    try:
        grpc, http = SearchClient(flow.grpc), SearchClient(flow.http)
        stored = grpc.update([{"id": "nobody", "text": "x"}])
        assert stored[0].error == "unknown id"
        docs = [
            {"id": "red", "blob": png(RED), "text": "red", "tags": {"sku": "A1", "season": "Fall"}},
            {"id": "note", "text": "a note", "tags": {"k": 1}},
        ]
        assert [d.get("error") for d in grpc.post("/index", docs)] == [None, None]
        assert grpc.status()["towers"] == base
        # get and update over both protocols: tags merged, a key removed, the caption alone
        for client, colour in ((grpc, "Off White"), (http, "Blue")):
            [outcome] = client.update(
                [{"id": "red", "text": f"now {colour}", "tags": {"colour": colour, "season": None}}]
            )
            assert outcome.error is None
            [red] = client.get(["red"], embeddings=True)
            assert (red.text, red.tags) == (f"now {colour}", {"sku": "A1", "colour": colour})
            assert red.embedded_by == tower_id(VISION_TOWER, base[VISION_TOWER])
        [found] = http.search(image=png(RED), limit=1)
        assert found.id == "red" and found.score > 0.999  # still its image embedding
        cli = client_cli(flow.grpc, "update", "note", "--tag", "price=59.9", "--untag", "k")
        assert cli.returncode == 0 and "updated note" in cli.stdout, cli.stderr
        cli = client_cli(flow.http, "get", "note", "ghost")
        assert cli.returncode == 1 and "ghost: unknown id" in cli.stderr
        assert json.loads(cli.stdout)["tags"] == {"price": 59.9}
    finally:
        flow.stop()

    # the text tower swapped: refused per query and per document, /health fails naming both
    flow = start(tmp_path, workspace, text=other_towers)
    try:
        health = requests.post(f"{flow.http}/health", json={"data": []}, timeout=60)
        assert health.status_code == 503, health.text
        assert new_text in health.json()["error"] and base[TEXT_TOWER] in health.json()["error"]
        cli = client_cli(flow.grpc, "health")
        assert cli.returncode == 1 and f"{COMPATIBLE_SETTING}={new_text}" in cli.stderr
        grpc = SearchClient(flow.grpc)
        [answer] = grpc.post("/search", [{"text": "red"}])
        assert new_text in answer["error"] and not answer.get("matches")
        assert grpc.search(image=png(RED), limit=1)[0].id == "red"  # the vision tower is the same
        answers = grpc.post(
            "/index", [{"id": "t2", "text": "new text"}, {"id": "g", "blob": png(GREEN)}]
        )
        assert new_text in answers[0]["error"] and answers[1].get("error") is None
        assert grpc.status()["towers"] == base
    finally:
        flow.stop()

    # accepted on purpose
    flow = start(tmp_path, workspace, text=other_towers, **{COMPATIBLE_SETTING: new_text})
    try:
        health = requests.post(f"{flow.http}/health", json={"data": []}, timeout=60)
        assert health.status_code == 200, health.text
        assert SearchClient(flow.http).search("red", limit=3)
        assert SearchClient(flow.grpc).status()["compatible_towers"] == [new_text]
    finally:
        flow.stop()
