"""The service's HTTP API (executors/http_api.py, served by executors/gateway.py): each request
reaches the Flow whole or is refused whole with a 4xx that says why; a malformed document gets
its own error beside the good ones; the token travels as `Authorization: Bearer`.

The first tests read requests without a Flow; the rest run flow.yml with a token, as any HTTP
caller (curl, a browser, another language) meets it."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import requests
from docarray import DocList

from client.api import ClientError, SearchClient
from client.wire_docs import SearchDoc
from executors.gateway import deployments_at
from executors.http_api import FlowReply, Refused, failure_status, read_request, reply_body
from search.access import TOKEN_PARAMETER
from search.limits import MAX_DOCS_PER_REQUEST, MAX_REQUEST_BYTES, request_error

TOKEN = "http-api-test-token"


def body(data, parameters=None) -> bytes:
    return json.dumps({"data": data, "parameters": parameters or {}}).encode()


def refusal(endpoint: str, raw: bytes, authorization: str | None = None) -> Refused:
    with pytest.raises(Refused) as refused:
        read_request(endpoint, raw, authorization)
    return refused.value


# --- reading requests, no Flow ---------------------------------------------------------------


def test_a_request_over_the_document_limit_is_refused_whole_with_413():
    many = [{"text": str(i)} for i in range(MAX_DOCS_PER_REQUEST + 1)]
    refused = refusal("/index", body(many))
    assert (refused.status, refused.message) == (413, request_error(MAX_DOCS_PER_REQUEST + 1))
    assert len(read_request("/index", body(many[:-1])).docs) == MAX_DOCS_PER_REQUEST
    # /delete counts the ids in its parameters too
    half = MAX_DOCS_PER_REQUEST // 2
    ids = {"ids": [str(i) for i in range(half + 1)]}
    assert refusal("/delete", body(many[:half], ids)).status == 413


@pytest.mark.parametrize(
    "raw, message",
    [
        (b'{"data": [{"text": "a"}], "parameters": {"limit": NaN}}', "parameters.limit is NaN"),
        (
            b'{"data": [], "parameters": {"filter": {"price": {"$lt": -Infinity}}}}',
            "parameters.filter.price.$lt is -Infinity",
        ),
        (b'{"data": [{"embedding": [1, Infinity]}]}', "data[0].embedding[1] is Infinity"),
        (b'{"data": [', "the body is not JSON"),
        (b"\xff\xfe", "the body is not JSON"),
        (b'[{"text": "a"}]', "the body must be a JSON object"),
        (b'{"data": [], "parameters": [1]}', "parameters must be a JSON object, got list"),
    ],
)
def test_a_body_that_is_not_json_is_a_400_saying_where(raw, message):
    refused = refusal("/search", raw)
    assert refused.status == 400 and message in refused.message, refused.message


def test_a_mistyped_document_gets_its_own_error_and_its_neighbours_go_through():
    request = read_request(
        "/index",
        body(
            [
                {"id": "good", "text": "fine", "tags": {"colour": "red"}},
                {"id": "tags-list", "text": "t", "tags": [1, 2]},
                {"id": "text-number", "text": 5},
                "not an object",
                {"id": None, "text": "no id"},
                {"text": "also fine", "embedding": [0.5, 0.5]},
            ]
        ),
    )
    docs = request.docs
    assert [d.error for d in docs] == [
        None,
        "field tags: Input should be a valid dictionary",
        "field text: Input should be a valid string",
        "a document must be a JSON object, got str",
        None,
        None,
    ]
    assert [d.id for d in docs[:3]] == ["good", "tags-list", "text-number"]
    assert docs[0].tags == {"colour": "red"} and docs[4].id  # an id is given to the id-less
    assert np.allclose(docs[5].embedding, [0.5, 0.5])
    # /status and /health documents have no `error` to carry it: the request is refused
    refused = refusal("/status", body([{"info": "not a dict"}]))
    assert refused.status == 422 and "/status: document 0: field info" in refused.message


def test_the_bearer_token_reaches_the_executors_and_is_never_echoed():
    request = read_request("/index", body([], {"a": 1}), f"Bearer {TOKEN}")
    assert request.parameters == {"a": 1, TOKEN_PARAMETER: TOKEN}
    for header in (None, "", "Basic abc", "Bearer ", TOKEN):
        assert TOKEN_PARAMETER not in read_request("/index", body([]), header).parameters
    answer = reply_body(request.docs, request.parameters)
    assert answer == {"data": [], "parameters": {"a": 1}}


def test_a_reply_carries_each_documents_fields_and_no_bytes():
    docs = DocList[SearchDoc](
        [SearchDoc(id="a", blob=b"\xff\x00", thumbnail=b"\xff", embedding=np.ones(2), text="t")]
    )
    [doc] = reply_body(docs, None)["data"]
    assert doc["id"] == "a" and doc["text"] == "t" and doc["embedding"] == [1.0, 1.0]
    assert not {"blob", "thumbnail", "tensor"} & set(doc)


def test_an_unreachable_address_is_named_by_its_deployment():
    addresses = {"indexer": ["grpc://127.0.0.1:5001"], "text_encoder": ["grpc://10.0.0.2:80"]}
    assert deployments_at(json.dumps(addresses), ["127.0.0.1:5001"]) == ["indexer"]
    assert deployments_at(addresses, {"10.0.0.2:80", "127.0.0.1:5001"}) == [
        "indexer",
        "text_encoder",
    ]
    assert deployments_at(addresses, "127.0.0.1:9") == deployments_at(None, None) == []


def test_a_failed_request_says_whether_part_of_the_flow_is_down():
    assert failure_status(FlowReply(error="x", exception="ShardsMissing")) == 503
    assert failure_status(FlowReply(error="x", unreachable=True)) == 503
    assert failure_status(FlowReply(error="x", exception="ValueError")) == 500


# --- flow.yml over HTTP ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(start_flow):
    return start_flow("http", API_TOKEN=TOKEN)


def post(url: str, payload, token: str | None = None, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = payload if isinstance(payload, bytes) else json.dumps(payload)
    return requests.post(url, data=data, headers=headers, timeout=120, **kwargs)


@pytest.mark.slow
def test_writes_take_the_bearer_token_and_bad_documents_keep_their_neighbours(served):
    good = [{"id": "good-1", "text": "a stored caption"}, {"id": "good-2", "text": "another"}]
    bad = [{"id": "bad-tags", "text": "x", "tags": ["a"]}, {"id": "bad-text", "text": 5}]
    sent = {"data": [good[0], bad[0], bad[1], good[1]]}
    refused = post(f"{served.http}/index", sent).json()
    assert {d["error"] for d in refused["data"]} >= {
        "this service requires a token for /index (set SEARCH_TOKEN or --token)"
    }
    assert post(f"{served.http}/index", sent, token="wrong").json()["data"][0]["error"]
    r = post(f"{served.http}/index", {**sent, "parameters": {"keep": 1}}, token=TOKEN)
    assert r.status_code == 200 and r.json()["parameters"] == {"keep": 1}  # no token echoed
    assert TOKEN not in r.text
    errors = {d["id"]: d["error"] for d in r.json()["data"]}
    assert errors == {
        "good-1": None,
        "bad-tags": "field tags: Input should be a valid dictionary",
        "bad-text": "field text: Input should be a valid string",
        "good-2": None,
    }
    got = post(f"{served.http}/get", {"data": [{"id": i} for i in errors]}).json()["data"]
    assert [d["error"] for d in got] == [None, "unknown id", "unknown id", None]
    # reads stay open; the client sends its token the same way
    assert SearchClient(served.http).search("a stored caption", limit=1)[0].id == "good-1"
    assert SearchClient(served.http, token=TOKEN).delete(["good-2"])[0].error is None


@pytest.mark.slow
def test_refused_requests_are_4xx_and_the_connection_serves_on(served):
    with requests.Session() as session:  # kept alive across the refusals
        r = session.post(
            f"{served.http}/search",
            data=b'{"data": [{"text": "a"}], "parameters": {"limit": NaN}}',
            timeout=60,
        )
        assert (r.status_code, r.json()) == (
            400,
            {
                "error": "parameters.limit is NaN: JSON numbers must be finite (NaN and Infinity "
                "are not JSON)"
            },
        )
        many = {"data": [{"text": "x"}] * (MAX_DOCS_PER_REQUEST + 1)}
        r = session.post(f"{served.http}/search", json=many, timeout=60)
        assert r.status_code == 413 and "MAX_DOCS_PER_REQUEST" in r.json()["error"]
        r = session.post(f"{served.http}/search", json={"data": [{"text": "a"}]}, timeout=60)
        assert r.status_code == 200 and r.json()["data"][0]["error"] is None
    assert requests.post(f"{served.http}/nowhere", json={}, timeout=60).status_code == 404
    assert requests.get(f"{served.http}/docs", timeout=60).status_code == 200


@pytest.mark.slow
def test_a_request_over_the_byte_limit_is_refused_on_both_protocols(served):
    blob = "data:image/png;base64," + "A" * (MAX_REQUEST_BYTES + 1024)
    r = post(f"{served.http}/index", {"data": [{"id": "huge", "blob": blob}]}, token=TOKEN)
    assert r.status_code == 413 and "MAX_REQUEST_BYTES" in r.json()["error"]
    with SearchClient(served.grpc, token=TOKEN) as client:
        with pytest.raises(ClientError, match="(?i)larger than max|resource"):
            client.post("/index", [{"id": "huge", "blob": b"\0" * (MAX_REQUEST_BYTES + 1024)}])
        assert client.post("/get", [{"id": "huge"}])[0]["error"] == "unknown id"
        assert client.status()["count"] >= 1  # the gateway serves on


@pytest.mark.slow
def test_a_dead_executor_is_named_over_both_protocols(served):
    os.kill(served.pid_of("indexer/rep-0"), signal.SIGKILL)
    time.sleep(1)
    r = post(f"{served.http}/search", {"data": [{"text": "a stored caption"}]})
    assert r.status_code == 503, r.text
    assert r.json()["error"].startswith("indexer could not be reached at 127.0.0.1:"), r.text
    assert post(f"{served.http}/health", {}).status_code == 503
    health = SearchClient(served.http).health()
    assert not health.healthy and "indexer could not be reached" in health.error
    with pytest.raises(ClientError, match=r"indexer could not be reached.*\(HTTP 503\)"):
        SearchClient(served.http).search("a stored caption")
    # over gRPC, jina's gateway names it in the call's status details
    with SearchClient(served.grpc) as client:
        health = client.health()
        assert not health.healthy and "with deployment indexer" in health.error, health
        with pytest.raises(ClientError, match="with deployment indexer"):
            client.search("a stored caption")
    served.kill()
