"""The bounds of `search.limits`, on every path that stores or searches: the core `IndexShard`, the
encoders (checked before any work), and the jina indexer. Each oversized document gets an
error naming its limit while its neighbours go through; an oversized request is refused whole.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import png

from client.api import IndexItem
from demo import BASE_MODEL_DIR
from imagepairs.documents import Document
from imagepairs.images import ImageError
from search import limits
from search.encoders import ImageEncoder, TextEncoder
from search.hnsw_store import HNSWStore
from search.image_policy import ImagePolicy, PixelBudget
from search.index_shard import IndexShard
from search.limits import (
    MAX_DOCS_PER_REQUEST,
    MAX_MATCH_TEXT_CHARS,
    MAX_TAG_KEY_CHARS,
    MAX_TAGS,
    MAX_TAGS_JSON_BYTES,
    MAX_TEXT_CHARS,
    MAX_URI_CHARS,
    tags_error,
)

DIM = 4


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


@pytest.fixture
def index(tmp_path):
    idx = IndexShard(HNSWStore(tmp_path / "ws", dim=DIM))
    yield idx
    idx.close()


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("text", "x" * (MAX_TEXT_CHARS + 1), "MAX_TEXT_CHARS"),
        ("uri", "a/" * MAX_URI_CHARS, "MAX_URI_CHARS"),
        ("tags", {f"k{i}": i for i in range(MAX_TAGS + 1)}, "MAX_TAGS"),
        ("tags", {"k" * (MAX_TAG_KEY_CHARS + 1): 1}, "MAX_TAG_KEY_CHARS"),
        ("tags", {"k": ["v" * 1000] * 20}, "MAX_TAGS_JSON_BYTES"),
        ("tags", {"k": {"nested": 1}}, "values must be"),
        ("tags", {"k": [[1, 2]]}, "a list holding list"),
        ("tags", {"k": float("nan")}, "not a JSON number"),
        ("tags", ["a", "b"], "tags must be a JSON object"),
        ("tags", "colour=red", "tags must be a JSON object"),
        ("text", 5, "text must be a string"),
    ],
)
def test_an_oversized_or_malformed_document_is_refused_beside_good_ones(index, field, value, named):
    bad = Document(id="bad", embedding=vec(0))
    setattr(bad, field, value)
    good = Document(id="good", embedding=vec(1), text="t" * MAX_TEXT_CHARS, tags={"a": [1, "x"]})
    out = index.index([bad, good])
    assert named in out[0].error, out[0].error
    assert out[1].error is None
    assert index.status()["count"] == 1
    [updated] = index.update([Document(id="good", **{field: value})])
    assert named in updated.error


def test_tags_within_the_limits_are_accepted():
    edge = {f"k{i}": [None, True, 1.5, "v"] for i in range(MAX_TAGS)}
    assert tags_error(edge) is None and tags_error({}) is None and tags_error(None) is None
    assert len(str(edge)) < MAX_TAGS_JSON_BYTES


def test_a_request_over_the_document_limit_is_refused_whole(index):
    docs = [Document(id=f"d{i}", embedding=vec(i)) for i in range(MAX_DOCS_PER_REQUEST + 1)]
    out = index.index(docs)
    assert {d.error for d in out} == {limits.request_error(MAX_DOCS_PER_REQUEST + 1)}
    assert str(MAX_DOCS_PER_REQUEST) in out[0].error and "MAX_DOCS_PER_REQUEST" in out[0].error
    assert index.status()["count"] == 0  # nothing stored
    fresh = [Document(id=f"d{i}", embedding=vec(i)) for i in range(MAX_DOCS_PER_REQUEST)]
    assert all(d.error is None for d in index.index(fresh))
    # searches, gets and deletes (ids given as a parameter count too) are bounded alike
    queries = [Document(embedding=vec(0)) for _ in range(MAX_DOCS_PER_REQUEST + 1)]
    assert all("MAX_DOCS_PER_REQUEST" in d.error for d in index.search(queries, {}))
    deleted = index.delete([Document(id="d0")], ids=[f"d{i}" for i in range(MAX_DOCS_PER_REQUEST)])
    assert all("MAX_DOCS_PER_REQUEST" in d.error for d in deleted)
    assert index.status()["count"] == MAX_DOCS_PER_REQUEST
    gets = index.get([Document(id="d0")] * (MAX_DOCS_PER_REQUEST + 1))
    assert all("MAX_DOCS_PER_REQUEST" in d.error for d in gets)


def test_a_search_returns_at_most_the_bounded_text_per_match(index):
    # a text stored before the limit existed (straight into the store) comes back cut
    index.store.upsert(["old"], [vec(0)], text=["y" * (3 * MAX_MATCH_TEXT_CHARS)])
    [answer] = index.search([Document(embedding=vec(0))], {"limit": 1})
    assert answer.matches[0].text == "y" * MAX_MATCH_TEXT_CHARS


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder(BASE_MODEL_DIR / "clip-text", num_threads=1)


def test_encoders_check_the_limits_before_any_work(text_encoder):
    long = "word " * MAX_TEXT_CHARS
    stored = [Document(text=long), Document(text="a dog", uri="u" * (MAX_URI_CHARS + 1))]
    stored.append(Document(text="a cat", tags={"k": {"x": 1}}))
    stored.append(Document(text="a cow"))
    assert text_encoder.embed(stored, indexing=True) == 3
    assert "MAX_TEXT_CHARS" in stored[0].error and "MAX_URI_CHARS" in stored[1].error
    assert "values must be" in stored[2].error and stored[3].embedding is not None
    assert all(d.embedding is None for d in stored[:3])
    # a query is cut to the model's context length, not refused; its tags are not kept
    query = Document(text=long, tags={"k": {"x": 1}})
    assert text_encoder.embed([query]) == 0 and query.embedding is not None
    many = [Document(text="a dog") for _ in range(MAX_DOCS_PER_REQUEST + 1)]
    assert text_encoder.embed(many) == len(many)
    assert all(d.embedding is None and "MAX_DOCS_PER_REQUEST" in d.error for d in many)


def test_the_pixel_budget_refuses_images_before_decoding_them():
    policy = ImagePolicy.create()
    budget = PixelBudget(100 * 100 + 50 * 50)
    assert policy.load(Document(blob=png(size=(100, 100))), budget).size == (100, 100)
    with pytest.raises(ImageError, match="MAX_REQUEST_PIXELS"):
        policy.load(Document(blob=png(size=(60, 60))), budget)
    assert budget.left == 50 * 50  # a refused image spends nothing
    policy.load(Document(tensor=np.zeros((50, 50, 3), np.uint8)), budget)
    assert budget.left == 0
    # an undecodable blob spends nothing and keeps its own error
    with pytest.raises(ImageError, match="cannot decode"):
        policy.load(Document(blob=b"not an image"), PixelBudget(0))


def test_the_image_encoder_spends_one_budget_per_request():
    budget = 3 * 200 * 200 + 20 * 20
    encoder = ImageEncoder(BASE_MODEL_DIR / "clip-vision", num_threads=1, max_request_pixels=budget)
    docs = [Document(blob=png((i * 40, 0, 0), (200, 200))) for i in range(5)]
    docs.insert(4, Document(blob=png(size=(20, 20))))  # still fits after the 4th image did not
    assert encoder.embed(docs, indexing=True) == 2
    assert [d.embedding is not None for d in docs] == [True, True, True, False, True, False]
    assert "MAX_REQUEST_PIXELS" in docs[3].error and "MAX_REQUEST_PIXELS" in docs[5].error
    assert encoder.embed([Document(blob=png(size=(200, 200)))]) == 0  # a new request, a new budget


def test_held_images_are_encoded_early_and_embed_as_in_one_batch(monkeypatch):
    import search.encoders as encoders

    encoder = ImageEncoder(BASE_MODEL_DIR / "clip-vision", num_threads=1, minibatch_size=8)
    images = [png((i * 30, 90, 200 - i * 20), (120, 90)) for i in range(6)]
    whole = [Document(blob=b) for b in images]
    encoder.embed(whole)
    monkeypatch.setattr(encoders, "MAX_HELD_PIXELS", 2 * 120 * 90)  # a flush every 2 images
    early = [Document(blob=b) for b in images]
    encoder.embed(early)
    for a, b in zip(whole, early, strict=True):
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)


def test_the_client_cuts_its_requests_to_the_service_limits(tmp_path):
    from client.api import MAX_DOCS, MAX_REQUEST_BYTES, SearchClient, _request_batches

    assert (MAX_DOCS, MAX_REQUEST_BYTES) == (MAX_DOCS_PER_REQUEST, limits.MAX_REQUEST_BYTES)
    # by count: at most MAX_DOCS documents, whatever batch size is asked for
    texts = [{"id": str(i), "text": "t"} for i in range(1_100)]
    assert [len(b) for b in _request_batches(texts, 10_000)] == [512, 512, 76]
    # by bytes: images of a quarter of the request each, base64 (4/3) and all, fit 2 a request
    quarter = b"x" * (MAX_REQUEST_BYTES // 4)
    images = [{"id": str(i), "blob": quarter} for i in range(5)]
    batches = list(_request_batches(images, 32))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert all(sum(len(d["blob"]) for d in b) * 4 / 3 < MAX_REQUEST_BYTES for b in batches)
    # a file that no request could carry is reported by the client, not sent
    big = tmp_path / "big.png"
    big.write_bytes(b"x" * (MAX_REQUEST_BYTES // 2 + 1))
    outcomes = []
    sent = list(
        SearchClient("grpc://127.0.0.1:9")._index_docs(
            [IndexItem("big", str(big))], outcomes.extend
        )
    )
    assert sent == [] and "more than one request carries" in outcomes[0].error
