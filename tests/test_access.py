"""Write endpoints closed by a token when the service has one (`search.access`): the indexer
and the encoders refuse /index, /update and /delete without it, before any work; reads stay
open; the client sends its token with writes only."""

from __future__ import annotations

import numpy as np
import pytest
from docarray import DocList

from client.api import SearchClient
from client.wire import DELETE, INDEX, SEARCH_TEXT, UPDATE
from client.wire_docs import SearchDoc
from demo import BASE_MODEL_DIR
from executors.clip_encoders import CLIPTextEncoder
from executors.hnsw_indexer import HNSWIndexer
from search.access import token_error

TOKEN = "s3cret-token"
REFUSED = "this service requires a token for {} (set SEARCH_TOKEN or --token)"


def docs(*items: SearchDoc) -> DocList[SearchDoc]:
    return DocList[SearchDoc](list(items))


def test_token_error():
    assert token_error("", {}, INDEX) is None  # no token configured: open
    assert token_error(TOKEN, {"token": TOKEN}, INDEX) is None
    for parameters in (None, {}, {"token": "wrong"}, {"token": 5}, {"token": TOKEN + "x"}):
        assert token_error(TOKEN, parameters, INDEX) == REFUSED.format(INDEX)


@pytest.fixture
def indexer(tmp_path):
    ex = HNSWIndexer(workspace=str(tmp_path), token=TOKEN)
    yield ex
    ex.close()


def test_the_indexer_refuses_writes_without_the_token_and_keeps_reads_open(indexer):
    x = np.eye(4, dtype=np.float32)

    def batch() -> DocList[SearchDoc]:
        return docs(*(SearchDoc(id=f"d{i}", embedding=x[i]) for i in range(4)))

    refused = indexer.index(docs=batch(), parameters={"token": "guess"})
    assert [d.error for d in refused] == [REFUSED.format(INDEX)] * 4
    assert all(d.embedding is None for d in refused)
    assert indexer.status(docs=DocList[SearchDoc]())[0].info["count"] == 0
    stored = indexer.index(docs=batch(), parameters={"token": TOKEN})
    assert [d.error for d in stored] == [None] * 4
    hits = indexer.search(docs=docs(SearchDoc(embedding=x[0])), parameters={"limit": 2})
    assert hits[0].matches[0].id == "d0"  # no token needed to search
    update = indexer.update(docs=docs(SearchDoc(id="d0", text="new")), parameters={})
    assert update[0].error == REFUSED.format(UPDATE)
    delete = indexer.delete(docs=docs(SearchDoc(id="d0")), parameters={"ids": ["d1"]})
    assert [d.error for d in delete] == [REFUSED.format(DELETE)]
    assert indexer.status(docs=DocList[SearchDoc]())[0].info["count"] == 4
    deleted = indexer.delete(docs=docs(SearchDoc(id="d0")), parameters={"token": TOKEN})
    assert deleted[0].error is None


def test_an_encoder_refuses_before_embedding_and_answers_queries():
    encoder = CLIPTextEncoder(tower=str(BASE_MODEL_DIR), num_threads=1, token=TOKEN)
    refused = encoder.encode(docs(SearchDoc(text="a dog")), parameters={})
    assert refused[0].error == REFUSED.format(INDEX) and refused[0].embedding is None
    accepted = encoder.encode(docs(SearchDoc(text="a dog")), parameters={"token": TOKEN})
    assert accepted[0].error is None and accepted[0].embedding is not None
    query = encoder.encode_queries(docs(SearchDoc(text="a dog")))
    assert query[0].embedding is not None


def test_the_client_sends_its_token_with_writes_only(monkeypatch):
    monkeypatch.setenv("SEARCH_TOKEN", "from-env")
    assert SearchClient("grpc://127.0.0.1:9").token == "from-env"
    client = SearchClient("grpc://127.0.0.1:9", token=TOKEN)
    for endpoint in (INDEX, UPDATE, DELETE):
        assert client._with_token(endpoint, {"a": 1}) == {"a": 1, "token": TOKEN}
    assert client._with_token(SEARCH_TEXT, {"limit": 3}) == {"limit": 3}
    monkeypatch.delenv("SEARCH_TOKEN")
    assert SearchClient("grpc://127.0.0.1:9").token is None
