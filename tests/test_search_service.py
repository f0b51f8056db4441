"""The search core on its own: a whole index -> search -> update -> delete -> restart cycle in
one process, with no jina (checked in a fresh interpreter), and the sharding rules."""

from __future__ import annotations

import base64
import copy
import io
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import png
from PIL import Image

from demo import BASE_MODEL_DIR, REPO
from finetune.onnx_export import export_onnx
from imagepairs.documents import Document, Match
from search.hnsw_store import HNSWStore
from search.index_shard import IndexShard
from search.service import SearchError, SearchService
from search.sharding import (
    NOT_OWNER,
    OWNER_DID_NOT_ANSWER,
    UNKNOWN_ID,
    merge_matches,
    merge_outcome,
    merge_status,
    owner_shard,
)

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


@pytest.fixture
def service(tmp_path):
    with SearchService.open(BASE_MODEL_DIR, tmp_path / "ws", num_threads=1) as s:
        yield s


def test_index_search_update_delete_and_restart(service, tmp_path):
    docs = [
        Document(id=name, blob=png(rgb), text=f"a {name} square", tags={"colour": name})
        for name, rgb in COLOURS.items()
    ]
    bad = Document(id="bad", blob=b"not an image")
    answer = service.index([*docs, bad])
    assert [d.error for d in answer[:3]] == [None, None, None]
    assert "cannot decode image" in answer[3].error
    assert all(d.blob is None and d.embedding is None for d in answer)  # answers stay small
    assert service.status()["count"] == 3

    # an image query finds its own image first, with its stored fields
    [best, *_] = service.search(image=png(COLOURS["green"]), limit=3)
    assert isinstance(best, Match) and best.id == "green" and best.score > 0.99
    assert best.text == "a green square" and best.tags == {"colour": "green"}
    assert len(service.search(text="a red square", limit=2)) == 2

    # update: new tags only, so the stored vector and caption are kept
    [updated] = service.update([Document(id="red", tags={"colour": "crimson"})])
    assert updated.error is None
    hits = {h.id: h for h in service.search(image=png(COLOURS["red"]), limit=3)}
    assert hits["red"].tags == {"colour": "crimson"} and hits["red"].text == "a red square"
    assert hits["red"].score > 0.99
    # an update that carries content is embedded again (as /update through the Flow is)
    [updated] = service.update([Document(id="red", blob=png(COLOURS["blue"]))])
    assert updated.error is None
    assert service.search(image=png(COLOURS["blue"]), limit=1)[0].id in ("red", "blue")

    deleted = service.delete(["blue", "nope"])
    assert [(d.id, d.error) for d in deleted] == [("blue", None), ("nope", UNKNOWN_ID)]
    service.close()

    with SearchService.open(BASE_MODEL_DIR, tmp_path / "ws", num_threads=1) as again:
        assert again.status()["count"] == 2
        assert {h.id for h in again.search(text="a square", limit=10)} == {"red", "green"}


def test_query_errors_are_search_errors(service):
    with pytest.raises(SearchError, match="one of a text, an image or a stored id"):
        service.search(text="a", image=png((1, 2, 3)))
    service.index([Document(id="x", blob=png((1, 2, 3)))])
    with pytest.raises(SearchError, match="text is empty"):
        service.search(text="   ")
    with pytest.raises(SearchError, match="limit must be an integer"):
        service.search(text="a", limit=float("nan"))
    with pytest.raises(SearchError, match="cannot decode image"):
        service.search(image=b"junk")


def test_thumbnails_are_stored_replaced_returned_and_deleted(service):
    big = png(COLOURS["red"], size=(640, 480))
    service.index([Document(id="r", blob=big), Document(id="t", text="only a caption")])
    [with_thumbs] = service.search_documents([Document(text="red")], {"thumbnails": True})
    thumbs = {m.id: m.thumbnail for m in with_thumbs.matches}
    assert thumbs["t"] is None  # a text-only document has no image to show
    assert thumbs["r"].startswith("data:image/jpeg;base64,")
    jpeg = Image.open(io.BytesIO(base64.b64decode(thumbs["r"].split(",", 1)[1])))
    assert jpeg.format == "JPEG" and max(jpeg.size) == 256 and jpeg.size == (256, 192)
    # without the parameter, answers stay small
    assert all(m.thumbnail is None for m in service.search(text="red"))
    assert service.status()["thumbnails"] == 1
    assert 0 < service.status()["thumbnail_bytes"] < 20_000

    service.index([Document(id="r", blob=png(COLOURS["blue"], size=(100, 300)))])
    [again] = service.search_documents([Document(text="x")], {"thumbnails": True})
    replaced = next(m.thumbnail for m in again.matches if m.id == "r")
    thumb = Image.open(io.BytesIO(base64.b64decode(replaced.split(",", 1)[1])))
    assert thumb.size == (85, 256) and thumb.getpixel((40, 128))[2] > 150  # the new, blue one
    service.index([Document(id="r", embedding=np.ones(64, np.float32))])  # no image any more
    assert service.status()["thumbnails"] == 0
    service.index([Document(id="r", blob=big)])
    service.delete(["r"])
    assert service.status()["thumbnails"] == 0


def test_more_like_this_uses_the_stored_embedding(service):
    service.index(
        [Document(id=name, blob=png(rgb), text=name) for name, rgb in COLOURS.items()]
        + [Document(id="red2", blob=png((200, 40, 30)))]
    )
    similar = service.search(like="red", limit=2)
    assert [m.id for m in similar][0] == "red2" and len(similar) == 2
    assert "red" not in [m.id for m in similar]  # the document itself is left out
    with pytest.raises(SearchError, match="nope: unknown id"):
        service.search(like="nope")
    [got] = service.get(["green"])
    assert got.error is None and got.embedding.shape == (64,) and got.text == "green"


@pytest.mark.parametrize(
    "bad_id, expected",
    [("a\0b", "control character"), ("tab\there", "control character"), ("x" * 600, "limit")],
)
def test_bad_ids_are_refused_per_document(service, bad_id, expected):
    answer = service.index(
        [Document(id=bad_id, blob=png((9, 9, 9))), Document(id="a", blob=png((1, 1, 1)))]
    )
    assert expected in answer[0].error and answer[1].error is None
    assert service.status()["count"] == 1
    # a NUL id must not reach SQLite's JSON functions, where it would stand for "a"
    [deleted] = service.delete([bad_id])
    assert expected in deleted.error and service.status()["count"] == 1


def test_filtered_search_and_the_tags_summary(service):
    service.index(
        [
            Document(id=name, blob=png(rgb), tags={"colour": name, "price": price, "sale": on_sale})
            for (name, rgb), price, on_sale in zip(
                COLOURS.items(), (10, 25, 40), (True, False, True), strict=True
            )
        ]
    )

    def ids(**flt):
        return sorted(m.id for m in service.search(text="a square", filter=flt))

    assert ids(colour="red") == ["red"]
    assert ids(colour={"$in": ["red", "blue"]}) == ["blue", "red"]
    assert ids(price={"$gt": 10, "$lte": 40}) == ["blue", "green"]
    assert ids(sale=True, price={"$lt": 30}) == ["red"]
    assert ids(colour="purple") == []
    with pytest.raises(SearchError, match=r"filter.colour: unknown operator \$regex"):
        service.search(text="a square", filter={"colour": {"$regex": "r.*"}})
    tags = service.status()["tags"]
    assert sorted(tags["colour"]["values"]) == ["blue", "green", "red"]
    assert tags["price"] == {"min": 10.0, "max": 40.0}
    assert sorted(tags["sale"]["values"]) == [False, True]


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_the_service_on_exported_onnx_towers(tmp_path, runtime):
    run = tmp_path / "run"
    shutil.copytree(BASE_MODEL_DIR, run)
    export_onnx(run, int8=runtime == "onnx-int8", report=lambda line: None)
    docs = [Document(id=name, blob=png(rgb)) for name, rgb in COLOURS.items()]
    with (
        SearchService.open(run, tmp_path / "ws", num_threads=1, runtime=runtime) as onnx,
        SearchService.open(run, tmp_path / "ws-torch", num_threads=1) as torch,
    ):
        assert onnx.text_encoder.runtime == onnx.image_encoder.runtime == runtime
        assert all(d.error is None for d in onnx.index(copy.deepcopy(docs)))
        torch.index(docs)
        for query in ("a red square", "a blue square"):
            got, expected = onnx.search(text=query, limit=3), torch.search(text=query, limit=3)
            assert [m.id for m in got] == [m.id for m in expected]
            np.testing.assert_allclose(
                [m.score for m in got], [m.score for m in expected], atol=0.02
            )


def test_the_core_runs_without_jina_or_docarray(tmp_path):
    code = textwrap.dedent(
        f"""
        import io, sys
        from PIL import Image
        from imagepairs.documents import Document
        from search.service import SearchService
        buf = io.BytesIO(); Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, "PNG")
        with SearchService.open({str(BASE_MODEL_DIR)!r}, {str(tmp_path)!r}, num_threads=1) as s:
            assert s.index([Document(id="a", blob=buf.getvalue())])[0].error is None
            assert s.search(text="a red square")[0].id == "a"
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("jina", "docarray"))
        print("loaded:", loaded)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "loaded: []" in out.stdout


def test_shards_store_only_their_own_ids_and_answers_merge(tmp_path):
    rng = np.random.default_rng(0)
    shards = [IndexShard(HNSWStore(tmp_path / str(i)), shard_id=i, shards=2) for i in range(2)]
    ids = [f"d{i}" for i in range(12)]
    vectors = rng.normal(size=(12, 8)).astype(np.float32)
    answers = [
        shard.index([Document(id=i, embedding=v) for i, v in zip(ids, vectors, strict=True)])
        for shard in shards
    ]
    for k, answer in enumerate(answers):
        for doc in answer:
            assert doc.error == (None if owner_shard(doc.id, 2) == k else NOT_OWNER)
    merged = [merge_outcome(pair)[1] for pair in zip(*answers, strict=True)]
    assert merged == [None] * 12
    # a document whose owner did not answer is said so, not taken as stored
    lone = [a for a in answers[0] if a.error == NOT_OWNER][:1]
    assert merge_outcome(lone)[1] == OWNER_DID_NOT_ANSWER

    queries = [shard.search([Document(embedding=vectors[3])], {"limit": 4}) for shard in shards]
    matches, error = merge_matches([q[0] for q in queries], limit=4)
    assert error is None and matches[0].id == "d3" and len(matches) == 4
    scores = [m.score for m in matches]
    assert scores == sorted(scores, reverse=True)

    status = merge_status([shard.status() for shard in shards])
    assert status["count"] == 12 and len(status["shards"]) == 2
    assert "path" not in str(status)
    for shard in shards:
        shard.close()
