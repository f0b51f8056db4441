"""Hostile input never gives a 500 and never costs a good neighbour, without a Flow: lone
surrogates, deep nesting, integers beyond what doubles carry, numbers that overflow, huge
embeddings and a folder as an image, as the HTTP API reads them, as the client checks them
before sending, and as the core stores them. Each named failure is reproduced; property tests
(Hypothesis, tests/hostile.py) then throw generated documents and parameters at the same
functions. tests/test_hostile_flow.py sends fewer of them to a running Flow."""

from __future__ import annotations

import json

import numpy as np
import pytest
from docarray import DocList
from hostile import PARAMETERS, Raw, body, deep, deep_object, documents, python_value
from hypothesis import given, settings
from hypothesis import strategies as st
from jina import Executor
from jina.proto import jina_pb2
from jina.types.request.data import DataRequest

from client.api import MAX_JSON_DEPTH as CLIENT_MAX_JSON_DEPTH
from client.api import ClientError, IndexItem, SearchClient
from client.wire import MAX_EXACT_INT as WIRE_MAX_EXACT_INT
from client.wire_docs import SearchDoc
from executors import clip_encoders, hnsw_indexer
from executors.gateway import EXECUTOR_CLASSES, scrubbed
from executors.http_api import Refused, read_request, reply_body
from imagepairs.documents import Document
from imagepairs.images import ImageError
from imagepairs.pairs import load_pairs
from search.hnsw_store import HNSWStore, check_vector
from search.image_policy import ImagePolicy
from search.index_shard import IndexShard
from search.limits import MAX_ERROR_CHARS, MAX_EXACT_INT, MAX_JSON_DEPTH, short_error, tags_error

DIM = 8
GOOD = {"id": "good", "text": "a good neighbour"}
EXECUTORS = ("image_encoder", "text_encoder", "indexer")
# a few hundred examples in all, the same ones on every run
PROPERTY = settings(max_examples=150, derandomize=True, deadline=None, database=None)


def read(endpoint: str, payload, **kwargs):
    return read_request(
        endpoint, payload if isinstance(payload, bytes) else body(payload), **kwargs
    )


def refusal(endpoint: str, payload) -> Refused:
    with pytest.raises(Refused) as refused:
        read(endpoint, payload, executors=EXECUTORS)
    return refused.value


def travels(docs: DocList, parameters: dict) -> None:
    """What the gateway does next with an accepted request: encode it for the executors
    (this raised UnicodeEncodeError, ValueError and DecodeError for the inputs below)."""
    request = DataRequest()
    request.data.docs = docs
    request.parameters = parameters
    decoded = DataRequest(request.proto_with_data.SerializePartialToString())
    decoded.document_array_cls = type(docs)
    assert len(decoded.docs) == len(docs) and decoded.parameters == request.parameters


# --- the HTTP API reads hostile bodies -----------------------------------------------------


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"id": "b", "text": "\ud800"}, "text"),
        ({"id": "\udc00", "text": "x"}, "id"),
        ({"id": "b", "text": "x", "tags": {"\ud800": 1}}, "tags.\\ud800"),
        ({"id": "b", "text": "x", "tags": {"k": ["ok", "\udfff"]}}, "tags.k[1]"),
        ({"id": "b", "uri": "a\ud800.png"}, "uri"),
    ],
)
def test_a_document_with_a_lone_surrogate_gets_its_error_and_its_neighbour_travels(bad, field):
    request = read("/index", {"data": [bad, GOOD]})
    bad_doc, good_doc = request.docs
    assert bad_doc.error == (
        f"field {field} is not valid Unicode text: it holds a lone surrogate (such as JSON's "
        f"\\ud800)"
    )
    assert bad_doc.id == "b" if bad["id"] == "b" else bad_doc.id != bad["id"]  # a fresh one
    assert bad_doc.text is None  # nothing of it travels but its error
    assert (good_doc.id, good_doc.error, good_doc.text) == ("good", None, GOOD["text"])
    travels(request.docs, request.parameters)


def test_a_query_with_a_lone_surrogate_gets_its_error_beside_the_good_one():
    request = read("/search", {"data": [{"text": "\ud800"}, {"text": "a dog"}]})
    assert "lone surrogate" in request.docs[0].error and request.docs[1].error is None
    travels(request.docs, request.parameters)


@pytest.mark.parametrize(
    "parameters, where",
    [
        ({"filter": {"colour": "\ud800"}}, "parameters.filter.colour"),
        ({"filter": {"\ud800": 1}}, "parameters.filter.\\ud800"),
        ({"ids": ["ok", "\ud800"]}, "parameters.ids[1]"),
        ({"token": "\udc80"}, "parameters.token"),
    ],
)
def test_a_lone_surrogate_in_the_parameters_is_a_400_saying_where(parameters, where):
    refused = refusal("/delete", {"data": [GOOD], "parameters": parameters})
    assert refused.status == 400 and refused.message.startswith(f"{where} is not valid Unicode")


@pytest.mark.parametrize(
    "payload, where",
    [
        ({"data": [{**GOOD, "tags": deep_object(50)}]}, "data[0].tags.k.k"),
        ({"data": [{**GOOD, "tags": deep_object(1000)}]}, None),
        ({"data": [{**GOOD, "tags": {"a": deep(100_000)}}]}, None),
        ({"data": [GOOD], "parameters": deep_object(200)}, "parameters.k.k"),
        ({"data": [GOOD], "parameters": {"filter": deep_object(200)}}, "parameters.filter.k"),
        ({"data": deep(MAX_JSON_DEPTH)}, "data[0]"),
        ({"other": deep(MAX_JSON_DEPTH)}, "other[0]"),
    ],
)
def test_nesting_past_the_bound_is_a_400_naming_it(payload, where):
    refused = refusal("/index", payload)
    assert refused.status == 400 and "MAX_JSON_DEPTH" in refused.message, refused.message
    assert refused.message.startswith(where or "the body is nested deeper than")


def test_nesting_up_to_the_bound_is_read():
    # the body is level 1, parameters 2, so the bound leaves MAX_JSON_DEPTH - 2 levels in it
    inner = python_value(deep(MAX_JSON_DEPTH - 2))
    request = read("/search", {"data": [{"text": "a"}], "parameters": {"x": inner}})
    travels(request.docs, request.parameters)
    refused = refusal("/search", {"data": [{"text": "a"}], "parameters": {"x": [inner]}})
    assert refused.status == 400


@pytest.mark.parametrize("number", [2**53 + 1, -(2**53) - 1, 2**63, 2**64, 10**400])
def test_an_integer_beyond_doubles_is_that_documents_error_naming_the_field(number):
    request = read("/index", {"data": [{"id": "b", "text": "x", "tags": {"sku": number}}, GOOD]})
    bad_doc, good_doc = request.docs
    assert bad_doc.error.startswith("field tags.sku is ") and "MAX_EXACT_INT" in bad_doc.error
    assert "send it as a string" in bad_doc.error and good_doc.error is None
    travels(request.docs, request.parameters)
    assert read("/index", {"data": [{**GOOD, "tags": {"sku": 2**53}}]}).docs[0].error is None


def test_an_embedding_of_an_integer_beyond_float64_is_that_documents_error():
    # docarray made an object array of it, which the text encoder failed on: a 500
    request = read("/search", {"data": [{"embedding": [10**400, 1]}, {"text": "a dog"}]})
    assert request.docs[0].error.startswith("field embedding[0] is an integer of")
    travels(request.docs, request.parameters)


@pytest.mark.parametrize("endpoint", ["/status", "/health"])
def test_a_status_body_that_cannot_travel_is_a_422(endpoint):
    for info in ({"n": 2**64}, {"\ud800": 1}):
        refused = refusal(endpoint, {"data": [{"info": info}]})
        assert refused.status == 422 and refused.message.startswith(f"{endpoint}: document 0")


@pytest.mark.parametrize(
    "parameters, where",
    [
        ({"limit": Raw("1e400")}, "parameters.limit is Infinity"),
        ({"limit": Raw("1" + "0" * 400)}, "parameters.limit is an integer of"),
        ({"ef": Raw("1" + "0" * 400)}, "parameters.ef is an integer of"),
        ({"ef": Raw("-1e400")}, "parameters.ef is -Infinity"),
        ({"filter": {"price": {"$lt": Raw("1" + "0" * 400)}}}, "parameters.filter.price.$lt"),
        ({"filter": {"price": {"$gte": Raw("2e308")}}}, "parameters.filter.price.$gte is Inf"),
        ({"limit": 2**64}, "parameters.limit is the integer 18446744073709551616"),
    ],
)
def test_numbers_that_overflow_in_the_parameters_are_a_400(parameters, where):
    refused = refusal("/search", {"data": [{"text": "a"}], "parameters": parameters})
    assert refused.status == 400 and refused.message.startswith(where), refused.message


def test_a_parameter_named_after_an_executor_must_be_an_object():
    # jina merged it into that executor's parameters with **: a TypeError, a 500
    refused = refusal("/search", {"data": [{"text": "a"}], "parameters": {"indexer": 5}})
    assert refused.status == 400 and refused.message.startswith("parameters.indexer must be")
    read("/search", {"data": [], "parameters": {"indexer": {"limit": 2}}}, executors=EXECUTORS)
    # the executors take their class's name too: the gateway knows them all
    classes = {
        name
        for module in (clip_encoders, hnsw_indexer)
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, Executor)
        and value.__module__ == module.__name__
        and not name.startswith("_")
    }
    assert classes == set(EXECUTOR_CLASSES)


def test_no_answer_echoes_the_token_wherever_it_was_put():
    parameters = {"token": "t", "indexer__token": "t", "indexer": {"token": "t", "x": 1}, "a": 1}
    assert reply_body(DocList[SearchDoc](), parameters)["parameters"] == {
        "indexer": {"x": 1},
        "a": 1,
    }


# --- the gateway's gRPC replies ------------------------------------------------------------


def test_a_grpc_reply_carries_no_token_no_stack_trace_and_no_path():
    reply = DataRequest()
    reply.parameters = {"token": "secret", "limit": 3}
    try:
        raise RuntimeError("cannot open /nowhere/at/all/workspace.bin\nsecond line")
    except RuntimeError as error:
        reply.add_exception(error)
    reply.routes.add(executor="indexer").status.CopyFrom(reply.header.status)  # as the gateway
    assert reply.routes[0].status.exception.stacks  # what jina puts in an executor's failure
    out = scrubbed(reply)
    assert out.parameters == {"limit": 3.0}
    for status in (out.header.status, out.routes[0].status):
        assert status.code == jina_pb2.StatusProto.ERROR and not status.exception.stacks
        assert list(status.exception.args) == ["cannot open <path>"]
        assert status.description == "RuntimeError: cannot open <path>"
    assert "nowhere" not in str(DataRequest(out.proto.SerializePartialToString()).proto)
    assert (
        short_error("a\nTraceback ...") == "a" and len(short_error("x" * 10_000)) == MAX_ERROR_CHARS
    )


# --- the client checks before sending, over both protocols ---------------------------------


@pytest.mark.parametrize("host", ["grpc://127.0.0.1:9", "http://127.0.0.1:9"])
@pytest.mark.parametrize(
    "doc, field",
    [
        ({"id": "b", "text": "\ud800"}, "text is not valid Unicode text"),
        ({"id": "b", "text": "x", "tags": {"sku": 2**64}}, "tags.sku is the integer"),
        ({"id": "b", "text": "x", "tags": python_value(deep_object(50))}, "tags.k.k.k.k"),
        ({"id": "b", "embedding": [1.0, float("inf")]}, "embedding[1] is Infinity"),
    ],
)
def test_the_client_refuses_what_cannot_travel_naming_the_document(host, doc, field):
    # gRPC raised UnicodeEncodeError, ValueError or DecodeError; port 9 is never reached
    with SearchClient(host, timeout=5, token="t") as client:
        with pytest.raises(ClientError) as error:
            client.post("/index", [GOOD, doc])
    assert str(error.value).startswith(f"/index refused the request: document 1, field {field}")
    assert str(error.value).endswith("(checked before sending)")


@pytest.mark.parametrize("host", ["grpc://127.0.0.1:9", "http://127.0.0.1:9"])
@pytest.mark.parametrize(
    "search, where",
    [
        ({"filter": {"a": {"$lt": 10**400}}}, "parameters.filter.a.$lt is an integer of"),
        ({"filter": {"a": "\ud800"}}, "parameters.filter.a is not valid Unicode"),
        ({"limit": float("nan")}, "parameters.limit is NaN"),
        ({"filter": python_value(deep_object(30))}, "parameters.filter.k"),
    ],
)
def test_the_client_refuses_parameters_that_cannot_travel(host, search, where):
    with SearchClient(host, timeout=5) as client:
        with pytest.raises(
            ClientError, match=f"^/search refused the request: {where}".replace("$", r"\$")
        ):
            client.post("/search", [{"text": "a"}], search)


def test_an_index_job_reports_an_item_that_cannot_travel_and_sends_the_others(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG")
    items = [IndexItem("sku", str(image), tags={"sku": 2**64}), IndexItem("ok", str(image))]
    outcomes = []
    sent = list(SearchClient("grpc://127.0.0.1:9")._index_docs(items, outcomes.extend))
    assert [d["id"] for d in sent] == ["ok"]
    assert outcomes[0].id == "sku" and outcomes[0].error.startswith("field tags.sku is the")


def test_a_grpc_request_that_cannot_be_encoded_is_a_client_error():
    # a Python object in tags passes pydantic and the wire check; docarray cannot encode it
    with SearchClient("grpc://127.0.0.1:9", timeout=5) as client:
        with pytest.raises(ClientError, match="could not be encoded, nothing was sent"):
            client.post("/index", [{"id": "o", "text": "x", "tags": {"a": object()}}])


def test_a_csv_number_beyond_doubles_stays_text(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,caption,sku,n\na.png,a dog,18446744073709551616,9007199254740992\n")
    [pair] = load_pairs(csv, check_images=False).pairs
    assert pair.tags == {"sku": "18446744073709551616", "n": 2**53}


def test_the_client_and_the_service_agree_on_the_bounds():
    assert (CLIENT_MAX_JSON_DEPTH, WIRE_MAX_EXACT_INT) == (MAX_JSON_DEPTH, MAX_EXACT_INT)


# --- the core: store, index, images --------------------------------------------------------


@pytest.mark.parametrize("value", [1e154, 1e200, 1.7e308, -1e300, 1e-300, 5e-324])
def test_an_embedding_of_huge_or_tiny_values_is_normalised_not_zeroed(value):
    vec, error = check_vector([value] * DIM, DIM)
    assert error is None and np.allclose(vec, np.sign(value) / np.sqrt(DIM), atol=1e-6)


def test_the_store_and_the_index_keep_a_huge_embedding_as_its_direction(tmp_path):
    huge = np.full(DIM, 1e200)
    huge[0] = -1e200
    with HNSWStore(tmp_path / "store", dim=DIM) as store:
        assert store.upsert(["huge", "other"], [huge, np.eye(DIM)[1]]) == [None, None]
        [record] = store.get(["huge"])
        assert np.isclose(np.linalg.norm(record.embedding), 1.0)  # was all zeros
        assert store.search(huge / 1e200, limit=1)[0][0].id == "huge"
    index = IndexShard(HNSWStore(tmp_path / "index", dim=DIM))
    try:
        docs = index.index(
            [Document(id="huge", embedding=huge), Document(id="x", embedding=np.eye(DIM)[2])]
        )
        assert [d.error for d in docs] == [None, None]
        [query] = index.search([Document(embedding=huge)], {"limit": 1})
        assert query.error is None and query.matches[0].id == "huge"
        assert query.matches[0].score == pytest.approx(1.0, abs=1e-5)
    finally:
        index.close()


@pytest.mark.parametrize(
    "parameters, error",
    [
        ({"limit": 10**400}, "limit is 1000000000000000000000000000000000000..., more than"),
        ({"ef": 10**400}, "ef is 1000000000000000000000000000000000000..., more than"),
        ({"ef": 1e300}, "ef is 1e+300, more than the limit of 9007199254740992 (MAX_EXACT_INT)"),
        ({"limit": float("inf")}, "limit must be an integer, got inf"),
        ({"filter": {"p": {"$lt": 10**400}}}, "filter.p: $lt needs a finite number"),
    ],
)
def test_overflowing_search_parameters_are_each_querys_error(tmp_path, parameters, error):
    # OverflowError (limit, ef) and hnswlib's TypeError (an ef beyond a C size_t) failed the
    # request
    index = IndexShard(HNSWStore(tmp_path / "ws", dim=DIM))
    try:
        index.index([Document(id=str(i), embedding=np.eye(DIM)[i]) for i in range(3)])
        [query] = index.search([Document(embedding=np.ones(DIM))], parameters)
        assert query.error.startswith(error), query.error
        [query] = index.search([Document(embedding=np.ones(DIM))], {"ef": 2**53})
        assert query.error is None and len(query.matches) == 3
    finally:
        index.close()


def test_the_index_refuses_text_the_store_cannot_keep(tmp_path):
    # SQLite raised UnicodeEncodeError and failed the whole batch
    index = IndexShard(HNSWStore(tmp_path / "ws", dim=DIM))
    try:
        docs = [
            Document(id="\ud800", embedding=np.eye(DIM)[0]),
            Document(id="t", text="\udc00", embedding=np.eye(DIM)[1]),
            Document(id="g", tags={"sku": 2**64}, embedding=np.eye(DIM)[2]),
            Document(id="good", text="fine", embedding=np.eye(DIM)[3]),
        ]
        errors = [d.error for d in index.index(docs)]
        assert errors[0].startswith("id is not valid Unicode text (it holds a lone surrogate")
        assert errors[1] == errors[0].replace("id", "text", 1)
        assert "MAX_EXACT_INT" in errors[2] and errors[3] is None
    finally:
        index.close()


def test_the_store_refuses_tags_nested_past_the_bound(tmp_path):
    # json.dumps recursed into a RecursionError, which nothing caught
    with HNSWStore(tmp_path / "ws", dim=DIM) as store:
        errors = store.upsert(
            ["deep", "ok"], [np.ones(DIM)] * 2, tags=[python_value(deep_object(5000)), {}]
        )
    assert errors == [
        f"tags are nested more than {MAX_JSON_DEPTH} levels deep (MAX_JSON_DEPTH)",
        None,
    ]


def test_a_folder_as_an_image_is_named_as_one(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ImageError) as error:
        ImagePolicy.create(allowed_roots=[tmp_path]).load(Document(uri="folder"))
    assert str(error.value) == "folder is a directory, not an image file"


# --- properties ----------------------------------------------------------------------------


@PROPERTY
@given(
    endpoint=st.sampled_from(["/index", "/search", "/update", "/delete", "/get", "/status"]),
    docs=st.lists(documents(DIM), max_size=3),
    parameters=PARAMETERS,
)
def test_whatever_the_body_the_http_api_refuses_it_whole_or_it_travels(endpoint, docs, parameters):
    try:
        request = read(endpoint, {"data": [*docs, GOOD], "parameters": parameters})
    except Refused as refused:
        assert refused.status in (400, 413, 422) and refused.message
        json.dumps(refused.message).encode("utf-8")  # an answer that can be sent
        return
    assert len(request.docs) == len(docs) + 1
    if endpoint != "/status":
        assert (request.docs[-1].id, request.docs[-1].error) == ("good", None)
    travels(request.docs, request.parameters)


@PROPERTY
@given(tags=documents(DIM).map(lambda doc: doc.get("tags")))
def test_tags_error_never_raises_and_what_it_accepts_travels(tags):
    tags = python_value(tags)
    error = tags_error(tags)
    assert error is None or (isinstance(error, str) and error.encode("utf-8"))
    if error is None and tags:
        travels(DocList[SearchDoc]([SearchDoc(tags=tags)]), {})


@PROPERTY
@given(
    vec=documents(DIM).map(lambda doc: python_value(doc.get("embedding")))
    | st.lists(st.floats(), min_size=DIM, max_size=DIM)
)
def test_check_vector_gives_a_unit_vector_or_a_reason(vec):
    out, error = check_vector(vec, DIM)
    if out is None:
        assert isinstance(error, str) and error
    else:
        assert error is None and out.shape == (DIM,) and np.isfinite(out).all()
        assert np.linalg.norm(out) == pytest.approx(1.0, abs=1e-5)
