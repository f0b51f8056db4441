"""Hostile input against a running flow.yml, over HTTP and gRPC (issue 18): each failure of the
hostile re-test reproduced, a Hypothesis fuzz that sends generated documents and parameters
beside a good document over both protocols, and the published OpenAPI schema checked against
the live API. One Flow (with a token, and an image root holding a folder) serves the module;
tests run in file order, the one that kills an executor last."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time

import numpy as np
import pytest
import requests
from docarray import DocList
from hostile import PARAMETERS, Raw, body, deep, deep_object, documents, python_value
from hypothesis import event, given, settings
from jsonschema import Draft202012Validator

from client.api import ClientError, SearchClient
from client.grpc_transport import GatewayError, GrpcTransport, _request
from client.wire_docs import SearchDoc
from demo import BASE_MODEL_DIR
from search.limits import MAX_DOCS_PER_REQUEST

pytestmark = pytest.mark.slow

TOKEN = "hostile-flow-token"
DIM = json.loads((BASE_MODEL_DIR / "config.json").read_text())["model_cfg"]["embed_dim"]
BEARER = {"Authorization": f"Bearer {TOKEN}"}
# fewer examples than the pure property tests (tests/test_hostile_input.py): each is a few
# requests through the Flow
FUZZ = settings(max_examples=80, derandomize=True, deadline=None, database=None)
GOOD_IDS = (f"good-fuzz-{n}" for n in itertools.count())


@pytest.fixture(scope="module")
def served(start_flow, tmp_path_factory):
    images = tmp_path_factory.mktemp("hostile-images")
    (images / "folder").mkdir()
    flow = start_flow("hostile", image_root=images, API_TOKEN=TOKEN)
    yield flow
    flow.kill()  # the last test killed its indexer: jina's stop would wait for it


@pytest.fixture(scope="module")
def http(served):
    with requests.Session() as session:  # kept alive across every refusal
        session.headers.update(BEARER)
        yield session


@pytest.fixture(scope="module")
def grpc_client(served):
    with SearchClient(served.grpc, token=TOKEN, timeout=60) as client:
        yield client


def post(http, served, endpoint: str, payload) -> requests.Response:
    raw = payload if isinstance(payload, bytes) else body(payload)
    return http.post(served.http + endpoint, data=raw, timeout=60)


def stored(http, served, doc_id: str) -> bool:
    [answer] = post(http, served, "/get", {"data": [{"id": doc_id}]}).json()["data"]
    return answer["error"] is None


# --- the hostile re-test, over HTTP --------------------------------------------------------

BIG = Raw("1" + "0" * 400)
# (endpoint, body, status, what the answer says: the bad document's error, or the refusal)
HTTP_CASES = {
    "surrogate in text": ("/index", [{"id": "b", "text": "\ud800"}], 200, "lone surrogate"),
    "surrogate in an id": ("/index", [{"id": "\ud800", "text": "x"}], 200, "lone surrogate"),
    "surrogate in a tag key": ("/index", [{"text": "x", "tags": {"\udc00": 1}}], 200, "tags."),
    "surrogate in a tag value": ("/index", [{"text": "x", "tags": {"k": "\udc00"}}], 200, "tags.k"),
    "surrogate in a query": ("/search", [{"text": "\ud800"}], 200, "field text is not valid"),
    "surrogate in a filter": (
        "/search",
        {"parameters": {"filter": {"colour": "\ud800"}}},
        400,
        "parameters.filter.colour is not valid Unicode",
    ),
    "surrogate in parameters.ids": (
        "/delete",
        {"parameters": {"ids": ["\ud800"]}},
        400,
        "parameters.ids[0] is not valid Unicode",
    ),
    "tags 50 deep": ("/index", [{"text": "x", "tags": deep_object(50)}], 400, "MAX_JSON_DEPTH"),
    "tags 1,000 deep": ("/index", [{"text": "x", "tags": deep_object(1000)}], 400, "MAX_JSON"),
    "parameters 200 deep": ("/search", {"parameters": deep_object(200)}, 400, "MAX_JSON_DEPTH"),
    "filter 200 deep": ("/search", {"parameters": {"filter": deep(200)}}, 400, "MAX_JSON_DEPTH"),
    "a 64-bit SKU": ("/index", [{"text": "x", "tags": {"sku": 2**64}}], 200, "field tags.sku is"),
    "2^53 + 1": ("/index", [{"text": "x", "tags": {"n": 2**53 + 1}}], 200, "MAX_EXACT_INT"),
    "limit 1e400": ("/search", {"parameters": {"limit": Raw("1e400")}}, 400, "limit is Infinity"),
    "a 400-digit limit": ("/search", {"parameters": {"limit": BIG}}, 400, "parameters.limit is"),
    "a 400-digit ef": ("/search", {"parameters": {"ef": BIG}}, 400, "parameters.ef is an"),
    "a 400-digit $lt": (
        "/search",
        {"parameters": {"filter": {"p": {"$lt": BIG}}}},
        400,
        "parameters.filter.p.$lt is an integer",
    ),
    "ef 1e300": ("/search", {"parameters": {"ef": 1e300}}, 200, "ef is 1e+300, more than"),
    "a parameter named after an executor": (
        "/search",
        {"parameters": {"indexer": 5}},
        400,
        "parameters.indexer must be a JSON object",
    ),
    "a parameter named after an executor's class": (
        "/search",
        {"parameters": {"HNSWIndexer": 5}},
        400,
        "parameters.HNSWIndexer must be a JSON object",
    ),
    "a folder as an image": ("/index", [{"uri": "folder"}], 200, "folder is a directory, not an"),
    "an embedding of a 400-digit integer": ("/search", [{"embedding": [BIG, 1]}], 200, "field em"),
}


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_hostile_input_over_http_is_never_a_500_and_keeps_its_neighbour(served, http, case):
    endpoint, sent, status, says = HTTP_CASES[case]
    good = {"text": "a good neighbour"}
    if endpoint == "/index":
        good["id"] = f"good-case-{list(HTTP_CASES).index(case)}"
    payload = {"data": [*sent, good]} if isinstance(sent, list) else {"data": [good], **sent}
    r = post(http, served, endpoint, payload)
    assert r.status_code == status, r.text
    if status == 200 and isinstance(sent, list):
        bad, answered = r.json()["data"]
        assert says in (bad["error"] or "") and answered["error"] is None, (bad, answered)
    elif status == 200:  # a bad parameter is every query's error
        [answered] = r.json()["data"]
        assert says in answered["error"], answered
    else:
        assert says in r.json()["error"], r.json()
    if endpoint == "/index":
        assert stored(http, served, good["id"]) == (status == 200)
    assert post(http, served, "/status", {}).status_code == 200  # the connection serves on


@pytest.mark.parametrize("endpoint", ["/status", "/health"])
def test_a_status_body_with_a_huge_integer_is_a_422(served, http, endpoint):
    r = post(http, served, endpoint, {"data": [{"info": {"n": 2**64}}]})
    assert r.status_code == 422 and r.json()["error"].startswith(f"{endpoint}: document 0: ")


def test_a_huge_embedding_is_stored_as_its_direction_over_both_protocols(served, http, grpc_client):
    huge = [1e200] * DIM
    huge[0] = -1e200
    for doc_id, index in (("huge-http", None), ("huge-grpc", grpc_client)):
        doc = {"id": doc_id, "embedding": huge}
        if index is None:
            assert post(http, served, "/index", {"data": [doc]}).json()["data"][0]["error"] is None
        else:
            assert index.post("/index", [doc])[0].get("error") is None
        [got] = post(http, served, "/get", {"data": [{"id": doc_id}]}).json()["data"]
        assert np.linalg.norm(got["embedding"]) == pytest.approx(1.0, abs=1e-5)  # not zeros
    [answer] = post(http, served, "/search", {"data": [{"embedding": huge}]}).json()["data"]
    assert {m["id"] for m in answer["matches"][:2]} == {"huge-http", "huge-grpc"}


# --- over gRPC -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc, says",
    [
        ({"id": "b", "text": "\ud800"}, "field text is not valid Unicode"),  # UnicodeEncodeError
        ({"id": "b", "text": "x", "tags": {"sku": 2**64}}, "field tags.sku is"),  # ValueError
        ({"id": "b", "text": "x", "tags": python_value(deep_object(50))}, "field tags.k.k"),
    ],
)
def test_hostile_input_over_grpc_is_a_client_error_naming_the_document(grpc_client, doc, says):
    with pytest.raises(ClientError, match=f"document 0, {says}"):
        grpc_client.post("/index", [doc, {"id": "good-grpc", "text": "fine"}])
    assert grpc_client.post("/index", [{"id": "good-grpc", "text": "fine"}])[0].get("error") is None
    with pytest.raises(ClientError, match=r"parameters\.filter\.p\.\$lt is an integer"):
        grpc_client.search("a dog", filter={"p": {"$lt": 10**400}})  # OverflowError
    outcome = grpc_client.post("/index", [{"id": "folder", "uri": "folder"}])[0]
    assert outcome["error"] == "folder is a directory, not an image file"


def test_grpc_replies_carry_no_token_and_no_stack_trace(served):
    transport = GrpcTransport(served.grpc.split("://")[1])
    try:
        docs = DocList[SearchDoc]([SearchDoc(text="a dog")])
        for parameters in (
            {"token": TOKEN},
            {"indexer__token": TOKEN},
            {"indexer": {"token": TOKEN}},
        ):
            reply = transport.reply("/search", docs, {**parameters, "limit": 2})
            assert TOKEN not in json.dumps(reply.parameters), reply.parameters
        # an object array that docarray pickles and the executor cannot read: it raises
        bad = DocList[SearchDoc]([SearchDoc(embedding=np.array([1, 2], dtype=object))])
        with pytest.raises(GatewayError) as error:
            transport.reply("/search", bad)
        raw = transport._call(_request("/search", bad, {}))  # the reply as any caller gets it
    finally:
        transport.close()
    assert "an executor failed the request" in str(error.value)
    assert "Traceback" not in raw.decode("utf-8", "replace")
    assert "site-packages" not in raw.decode("utf-8", "replace") and len(raw) < 2_000


# --- the fuzz --------------------------------------------------------------------------------


@FUZZ
@given(doc=documents(DIM), parameters=PARAMETERS)
def test_fuzz_over_http(served, http, doc, parameters):
    good = {"id": next(GOOD_IDS), "text": "a good neighbour"}
    r = post(http, served, "/index", {"data": [doc, good], "parameters": parameters})
    assert r.status_code < 500, r.text
    event(f"/index: HTTP {r.status_code}")
    if r.status_code == 200:
        answers = r.json()["data"]
        assert len(answers) == 2 and answers[1]["error"] is None, answers
        event(f"the other document {'stored' if answers[0]['error'] is None else 'refused'}")
    else:  # refused whole, saying why: nothing was stored, and the good document alone is
        assert r.json()["error"]
        assert not stored(http, served, good["id"])
        retry = post(http, served, "/index", {"data": [good]})
        assert retry.json()["data"][0]["error"] is None
    assert stored(http, served, good["id"])
    r = post(http, served, "/search", {"data": [doc, {"text": "a dog"}], "parameters": parameters})
    assert r.status_code < 500 and (r.status_code != 200 or len(r.json()["data"]) == 2), r.text


@FUZZ
@given(doc=documents(DIM), parameters=PARAMETERS)
def test_fuzz_over_grpc(grpc_client, doc, parameters):
    doc, parameters = python_value(doc), python_value(parameters)
    good = {"id": next(GOOD_IDS), "text": "a good neighbour"}
    try:
        answers = grpc_client.post("/index", [doc, good], parameters)
        assert len(answers) == 2 and answers[1].get("error") is None, answers
        event(f"the other document {'refused' if answers[0].get('error') else 'stored'}")
    except ClientError as refused:  # by the client, before sending: then the good one alone
        assert refused_before_sending(refused)
        event("refused before sending")
        assert grpc_client.post("/index", [good])[0].get("error") is None
    assert grpc_client.post("/get", [{"id": good["id"]}])[0].get("error") is None
    try:
        assert len(grpc_client.post("/search", [doc, {"text": "a dog"}], parameters)) == 2
    except ClientError as refused:
        assert refused_before_sending(refused)


def refused_before_sending(error: ClientError) -> bool:
    """A request the client refused without sending it, as opposed to one the service
    failed (which would be the gRPC side of a 500)."""
    message = str(error)
    return message.endswith("(checked before sending)") or "nothing was sent" in message


# --- the OpenAPI schema against the live API ----------------------------------------------

PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AA"
    "AAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)
# one request per route that the schema admits, and that must be answered 200
VALID = {
    "/index": {"data": [{"id": "api-1", "text": "a red dress", "tags": {"colour": "red", "n": 3}}]},
    "/search": {"data": [{"text": "a dress"}], "parameters": {"limit": 3, "thumbnails": True}},
    "/search_by_image": {"data": [{"blob": PNG}], "parameters": {"filter": {"n": {"$gte": 1}}}},
    "/get": {"data": [{"id": "api-1"}]},
    "/update": {"data": [{"id": "api-1", "tags": {"colour": "blue"}}]},
    "/delete": {"data": [], "parameters": {"ids": ["api-1"]}},
    "/status": {},
    "/health": {"data": []},
}
# answers that are not 200, by the status they must have
REFUSED = {
    400: [b'{"data": [', b'{"parameters": {"limit": NaN}}', body({"data": deep(40)})],
    413: [body({"data": [{"text": "x"}] * (MAX_DOCS_PER_REQUEST + 1)})],
}


@pytest.fixture(scope="module")
def spec(served):
    r = requests.get(f"{served.http}/openapi.json", timeout=60)
    assert r.status_code == 200
    return r.json()


def schema_of(spec, pointer: dict) -> Draft202012Validator:
    """A validator of `pointer` (a schema that may `$ref` the spec's components)."""
    return Draft202012Validator({**pointer, "components": spec["components"]})


def check_answer(spec, endpoint: str, r: requests.Response) -> None:
    responses = spec["paths"][endpoint]["post"]["responses"]
    assert str(r.status_code) in responses, (endpoint, r.status_code, r.text)
    schema = responses[str(r.status_code)]["content"]["application/json"]["schema"]
    errors = list(schema_of(spec, schema).iter_errors(r.json()))
    assert not errors, (endpoint, r.status_code, errors[0].message)


def test_the_openapi_schema_documents_every_route_and_status(spec):
    posts = {path: item["post"] for path, item in spec["paths"].items() if "post" in item}
    assert set(spec["paths"]) - set(posts) == {"/"}  # jina's GET / liveness check
    codes = {path: set(post["responses"]) for path, post in posts.items()}
    searchdoc = {"200", "400", "413", "500", "503"}
    assert codes == {
        **{path: searchdoc for path in VALID if path not in ("/status", "/health")},
        "/status": searchdoc | {"422"},
        "/health": searchdoc | {"422"},
    }
    Draft202012Validator.check_schema({"$defs": spec["components"]["schemas"]})
    fields = set(spec["components"]["schemas"]["Document"]["properties"])
    assert fields == set(SearchDoc.model_fields)  # the schema keeps up with the wire's
    answered = set(spec["components"]["schemas"]["Answer"]["properties"])
    assert answered == set(SearchDoc.model_fields) - {"blob", "tensor", "thumbnail"}


def test_requests_the_schema_admits_are_answered_as_documented(served, http, spec):
    for endpoint, payload in VALID.items():
        request_schema = spec["paths"][endpoint]["post"]["requestBody"]["content"]
        schema_of(spec, request_schema["application/json"]["schema"]).validate(payload)
        r = post(http, served, endpoint, payload)
        assert r.status_code == 200, (endpoint, r.text)
        check_answer(spec, endpoint, r)
        assert all(d.get("error") is None for d in r.json()["data"]), (endpoint, r.json())


def test_refusals_are_answered_as_documented(served, http, spec):
    for status, bodies in REFUSED.items():
        for raw in bodies:
            r = post(http, served, "/search", raw)
            assert r.status_code == status, r.text
            check_answer(spec, "/search", r)
    r = post(http, served, "/status", {"data": [{"info": 5}]})
    assert r.status_code == 422
    check_answer(spec, "/status", r)
    error = schema_of(spec, {"$ref": "#/components/schemas/Error"})
    for r in (http.post(f"{served.http}/nowhere", json={}), http.get(f"{served.http}/search")):
        assert r.status_code in (404, 405) and not list(error.iter_errors(r.json())), r.text


def test_a_dead_executor_is_a_documented_503_and_a_short_grpc_error(served, http, spec):
    os.kill(served.pid_of("indexer/rep-0"), signal.SIGKILL)
    time.sleep(1)
    r = post(http, served, "/search", {"data": [{"text": "a dog"}]})
    assert r.status_code == 503
    check_answer(spec, "/search", r)
    with SearchClient(served.grpc, timeout=60) as client:
        with pytest.raises(ClientError) as error:
            client.search("a dog")
    assert "Traceback" not in str(error.value) and "indexer" in str(error.value)
