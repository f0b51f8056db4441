"""HNSWIndexer and MatchMerger: every endpoint and bad input in-process, two shards with their
merger in-process, and one real sharded Flow (gRPC and HTTP, polled as flow.scaled.yml) whose
global top-k must equal brute force and whose `/index` must be an upsert by id."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml
from docarray import DocList

from client.wire_docs import Match, SearchDoc, StatusDoc
from demo.served_flow import ServedFlow
from executors.hnsw_indexer import HNSWIndexer, MatchMerger
from search.index_shard import IMAGE, NO_CONTENT_ERROR, TEXT, WRONG_MODALITY, positive_int
from search.sharding import NOT_OWNER, OWNER_DID_NOT_ANSWER, owner_shard

IMAGE_TO_TEXT_SEARCH = WRONG_MODALITY[TEXT]
TEXT_TO_IMAGE_SEARCH = WRONG_MODALITY[IMAGE]

DIM = 8
SCALED_FLOW = Path(__file__).resolve().parents[1] / "flow.scaled.yml"


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def docs(*items: SearchDoc) -> DocList[SearchDoc]:
    return DocList[SearchDoc](list(items))


@pytest.fixture
def indexer(tmp_path):
    ex = HNSWIndexer(workspace=str(tmp_path), max_limit=5)
    yield ex
    ex.close()


@pytest.fixture
def filled(indexer):
    """An indexer holding d0..d9 (vectors(10)), with text and tags."""
    x = vectors(10)
    batch = [SearchDoc(id=f"d{i}", embedding=x[i], text=f"t{i}", tags={"i": i}) for i in range(10)]
    assert all(d.error is None for d in indexer.index(docs=docs(*batch)))
    return indexer, x


def search(indexer, *embeddings, **parameters) -> DocList[SearchDoc]:
    return indexer.search(
        docs=docs(*(SearchDoc(embedding=e) for e in embeddings)), parameters=parameters
    )


# ---------------------------------------------------------------------- /index


def test_index_good_docs_beside_bad_ones(indexer):
    x = vectors(4)
    answer = indexer.index(
        docs=docs(
            SearchDoc(id="good", embedding=x[0], uri="a.jpg", blob=b"jpeg", tensor=np.ones((2, 2))),
            SearchDoc(id="short", embedding=np.ones(3)),
            SearchDoc(id="none"),
            SearchDoc(id="caption", text="an image that failed upstream would carry an error"),
            SearchDoc(id="pre", embedding=x[1], error="cannot decode image"),
            SearchDoc(id="dup", embedding=x[2]),
            SearchDoc(id="dup", embedding=x[3], text="second"),
            SearchDoc(id="nan", embedding=np.full(DIM, np.nan)),
        )
    )
    errors = {(d.id, d.text): d.error for d in answer}
    assert errors[("good", None)] is None and errors[("dup", "second")] is None
    assert errors[("none", None)] == NO_CONTENT_ERROR
    assert next(d.error for d in answer if d.id == "caption") == "no embedding to index"
    assert errors[("pre", None)] == "cannot decode image"  # untouched
    assert "duplicate" in errors[("dup", None)] and "NaN" in errors[("nan", None)]
    assert errors[("short", None)] == f"embedding has dimension 3, the index expects {DIM}"
    assert all(d.blob is None and d.tensor is None and d.embedding is None for d in answer)
    status = indexer.status(docs=DocList[StatusDoc]())[0].info
    assert (status["count"], status["dim"]) == (2, DIM)


def test_index_fixes_dim_from_the_first_vector_and_assigns_missing_ids(indexer):
    x = vectors(2)
    first = indexer.index(docs=docs(SearchDoc(id="a", embedding=x[0])))
    assert first[0].error is None
    doc = SearchDoc(embedding=x[1])
    doc.id = None  # what an HTTP client that sends no id gets
    answer = indexer.index(docs=docs(doc, SearchDoc(id="short", embedding=np.ones(3))))
    assert answer[0].error is None and answer[0].id
    assert answer[1].error == f"embedding has dimension 3, the index expects {DIM}"
    assert search(indexer, x[1], limit=1)[0].matches[0].id == answer[0].id


# ---------------------------------------------------------------------- /search


def test_search_matches_best_first(filled):
    indexer, x = filled
    answer = search(indexer, x[3], x[7], limit=3)
    assert [d.matches[0].id for d in answer] == ["d3", "d7"]
    best = answer[0].matches[0]
    assert (best.text, best.tags, best.score) == ("t3", {"i": 3}, pytest.approx(1.0, abs=1e-5))
    scores = [m.score for m in answer[0].matches]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert answer[0].embedding is None  # the query vector is not sent back
    assert len(search(indexer, x[0])[0].matches) == 5  # default 10, clamped to max_limit=5


@pytest.mark.parametrize(
    ("limit", "error"),
    [
        (0, "limit must be >= 1"),
        (-3, "limit must be >= 1"),
        ("ten", "limit must be an integer, got 'ten'"),
        (2.5, "limit must be an integer, got 2.5"),
        (None, "limit must be an integer, got None"),
        (True, "limit must be an integer, got True"),
    ],
)
def test_search_bad_limit_is_a_per_doc_error(filled, limit, error):
    indexer, x = filled
    answer = search(indexer, x[0], limit=limit)
    assert answer[0].error == error and len(answer[0].matches) == 0


@pytest.mark.parametrize(
    ("parameters", "error"),
    [
        ({"limit": float("nan")}, "limit must be an integer, got nan"),
        ({"limit": float("inf")}, "limit must be an integer, got inf"),
        ({"limit": [3]}, "limit must be an integer, got [3]"),
        ({"ef": float("-inf")}, "ef must be an integer, got -inf"),
        ({"ef": {"a": 1}}, "ef must be an integer, got {'a': 1}"),
        ({"filter": {"i": float("nan")}}, "filter.i: equality needs a finite number, got NaN"),
        ({"filter": [1]}, "filter must be an object of field: condition, got list"),
        ({"thumbnails": "yes"}, "thumbnails must be true or false, got 'yes'"),
        ({"thumbnails": 1.0}, "thumbnails must be true or false, got 1.0"),
    ],
)
def test_nan_infinity_and_wrong_types_in_parameters_are_each_querys_error(
    filled, parameters, error
):
    indexer, x = filled
    answer = indexer.search(
        docs=docs(SearchDoc(embedding=x[0]), SearchDoc(embedding=x[1])), parameters=parameters
    )
    assert [d.error for d in answer] == [error, error]
    assert all(len(d.matches) == 0 for d in answer)


@pytest.mark.parametrize(("limit", "expected"), [(3.0, 3), ("2", 2), (10**9, 5)])
def test_search_limit_from_protobuf_floats_strings_and_clamping(filled, limit, expected):
    indexer, x = filled
    assert len(search(indexer, x[0], limit=limit)[0].matches) == expected


def test_search_bad_queries_beside_good_ones(filled):
    indexer, x = filled
    query_docs = docs(
        SearchDoc(embedding=np.ones(3)),
        SearchDoc(text="no embedding"),
        SearchDoc(embedding=x[4], error="text encoder failed"),
        SearchDoc(embedding=np.zeros(DIM)),
        SearchDoc(embedding=x[5]),
    )
    answer = indexer.search(docs=query_docs, parameters={"limit": 2, "ef": 4.0})
    assert "dimension 3" in answer[0].error
    assert answer[1].error == "no embedding to search with"
    assert answer[2].error == "text encoder failed" and len(answer[2].matches) == 0
    assert answer[3].error == "embedding is a zero vector"
    assert answer[4].error is None and answer[4].matches[0].id == "d5"
    bad_ef = indexer.search(docs=docs(SearchDoc(embedding=x[5])), parameters={"ef": "x"})
    assert bad_ef[0].error == "ef must be an integer, got 'x'"


def test_queries_sent_to_the_other_modalitys_search_are_told_where_to_go(filled):
    indexer, x = filled
    sent = [SearchDoc(blob=b"png"), SearchDoc(text="a cat"), SearchDoc(), SearchDoc(embedding=x[5])]
    by_text = indexer.search(docs=docs(*[d.model_copy() for d in sent]))
    by_image = indexer.search_by_image(docs=docs(*[d.model_copy() for d in sent]))
    assert [d.error for d in by_text] == [
        IMAGE_TO_TEXT_SEARCH,
        "no embedding to search with",
        NO_CONTENT_ERROR,
        None,
    ]
    assert [d.error for d in by_image] == [
        "no embedding to search with",
        TEXT_TO_IMAGE_SEARCH,
        NO_CONTENT_ERROR,
        None,
    ]
    assert by_text[3].matches[0].id == by_image[3].matches[0].id == "d5"


def test_positive_int():
    assert positive_int(7.0, "n") == (7, None)
    assert positive_int(float("inf"), "n")[1] == "n must be an integer, got inf"
    assert positive_int([], "n")[1] == "n must be an integer, got []"


# ---------------------------------------------------------------------- /delete, /update


def test_delete_by_docs_and_parameters(filled):
    indexer, x = filled
    nameless = SearchDoc()
    nameless.id = None
    answer = indexer.delete(
        docs=docs(SearchDoc(id="d1"), SearchDoc(id="ghost"), nameless),
        parameters={"ids": ["d2", "d2", "phantom"]},
    )
    assert [(d.id, d.error) for d in answer] == [
        ("d1", None),
        ("ghost", "unknown id"),
        (None, "missing id"),
        ("d2", None),
        ("d2", None),
        ("phantom", "unknown id"),
    ]
    found = {m.id for m in search(indexer, x[1], x[2], limit=5)[0].matches}
    assert not {"d1", "d2"} & found
    assert indexer.status(docs=DocList[StatusDoc]())[0].info["count"] == 8
    only_param = indexer.delete(docs=docs(), parameters={"ids": "d3"})
    assert [(d.id, d.error) for d in only_param] == [("d3", None)]
    indexer.index(docs=docs(SearchDoc(id="42", embedding=x[0])))
    numeric = indexer.delete(docs=docs(), parameters={"ids": 42.0})  # 42 after protobuf
    assert [(d.id, d.error) for d in numeric] == [("42", None)]


def test_update(filled):
    indexer, x = filled
    new = vectors(2, seed=9)
    answer = indexer.update(
        docs=docs(
            SearchDoc(id="d0", text="renamed"),
            SearchDoc(id="d1", embedding=new[0], tags={"moved": True}),
            SearchDoc(id="ghost", embedding=new[1]),
            SearchDoc(id="d2", embedding=np.ones(3)),
            SearchDoc(id="d3", text="skip me", error="encoder failed"),
        )
    )
    assert [d.error for d in answer][:3] == [None, None, "unknown id"]
    assert "dimension 3" in answer[3].error and answer[4].error == "encoder failed"
    d0 = search(indexer, x[0], limit=1)[0].matches[0]
    assert (d0.id, d0.text, d0.tags) == ("d0", "renamed", {"i": 0})  # tags {} leaves them
    d1 = search(indexer, new[0], limit=1)[0].matches[0]
    assert (d1.id, d1.text, d1.tags) == ("d1", "t1", {"i": 1, "moved": True})  # merged
    assert search(indexer, x[3], limit=1)[0].matches[0].text == "t3"
    replaced = indexer.update(
        docs=docs(SearchDoc(id="d1", tags={"only": 1})), parameters={"replace_tags": True}
    )
    assert replaced[0].error is None
    assert search(indexer, new[0], limit=1)[0].matches[0].tags == {"only": 1}
    bad_flag = indexer.update(docs=docs(SearchDoc(id="d1")), parameters={"replace_tags": "yes"})
    assert bad_flag[0].error == "replace_tags must be true or false, got 'yes'"


def test_status_and_reopen(tmp_path):
    x = vectors(3)
    with HNSWIndexer(workspace=str(tmp_path), M=8) as first:
        first.index(docs=docs(*(SearchDoc(id=f"d{i}", embedding=x[i]) for i in range(3))))
        info = first.status(docs=DocList[StatusDoc]())[0].info
        assert (info["count"], info["dim"], info["M"]) == (3, DIM, 8)
        assert "path" not in info and str(tmp_path) not in str(info)  # no paths to callers
    with HNSWIndexer(workspace=str(tmp_path), M=8) as again:
        assert search(again, x[2], limit=1)[0].matches[0].id == "d2"


# ---------------------------------------------------------------------- MatchMerger


def shard_answer(*matches: list[tuple[str, float]], errors=None) -> DocList[SearchDoc]:
    errors = errors or [None] * len(matches)
    return docs(
        *(
            SearchDoc(
                id=f"q{i}", error=e, matches=DocList[Match]([Match(id=m, score=s) for m, s in ms])
            )
            for i, (ms, e) in enumerate(zip(matches, errors, strict=True))
        )
    )


def test_merger_takes_the_global_top_k_per_query():
    merger = MatchMerger()
    shard0 = shard_answer([("a", 0.9), ("b", 0.5)], [("x", 0.3)])
    shard1 = shard_answer([("c", 0.7), ("d", 0.6)], [("y", 0.8)], errors=[None, None])
    merged = merger.merge_matches(
        docs=shard0, docs_matrix=[shard0, shard1], parameters={"limit": 3.0}
    )
    assert [[m.id for m in d.matches] for d in merged] == [["a", "c", "d"], ["y", "x"]]


def test_merger_keeps_search_errors_and_needs_one_shard_for_delete_and_update():
    merger = MatchMerger()
    ok = shard_answer([], [])
    bad = shard_answer([], [], errors=["embedding has dimension 3, the index expects 8", None])
    merged = merger.merge_matches(docs=ok, docs_matrix=[ok, bad], parameters={})
    assert [d.error for d in merged] == ["embedding has dimension 3, the index expects 8", None]
    s0 = shard_answer([], [], [], errors=[None, "unknown id", "unknown id"])
    s1 = shard_answer([], [], [], errors=["unknown id", "unknown id", "bad embedding"])
    merged = merger.merge_outcomes(docs=s0, docs_matrix=[s0, s1])
    assert [d.error for d in merged] == [None, "unknown id", "bad embedding"]
    s0 = shard_answer([], [], [], errors=[None, "unknown id", "unknown id"])
    single = merger.merge_outcomes(docs=s0, docs_matrix=None)  # one shard: as it is
    assert [d.error for d in single] == [None, "unknown id", "unknown id"]


def test_merger_sums_status():
    shards = [
        DocList[StatusDoc](
            [StatusDoc(info={"count": 2, "deleted_slots": 1, "capacity": 8, "dim": None})]
        ),
        DocList[StatusDoc](
            [StatusDoc(info={"count": 3, "deleted_slots": 0, "capacity": 8, "dim": 4})]
        ),
    ]
    info = MatchMerger().merge_status(docs=shards[0], docs_matrix=shards)[0].info
    assert (info["count"], info["deleted_slots"], info["capacity"], info["dim"]) == (5, 1, 16, 4)
    assert len(info["shards"]) == 2


# ---------------------------------------------------------------------- two shards in-process


def test_owner_shard_is_fixed_and_spreads_ids():
    # Fixed values: the owner of an id must not change between processes or releases.
    assert {i: (owner_shard(i, 2), owner_shard(i, 3)) for i in ("d0", "d3", "ключ", "")} == {
        "d0": (1, 0),
        "d3": (0, 0),
        "ключ": (0, 2),
        "": (0, 0),
    }
    assert owner_shard("red_square.png", 2) == 0 and owner_shard("red_square.png", 3) == 2
    assert all(owner_shard(f"d{i}", 1) == 0 for i in range(10))
    for shards in (2, 3):
        counts = np.bincount([owner_shard(f"d{i}", shards) for i in range(3000)])
        assert len(counts) == shards and counts.min() > 0.9 * 3000 / shards


@pytest.fixture
def two_shards(tmp_path):
    shards = [
        HNSWIndexer(workspace=str(tmp_path), runtime_args={"shards": 2, "shard_id": i})
        for i in range(2)
    ]
    yield shards
    for shard in shards:
        shard.close()


def post(shards, endpoint: str, batch=(), order=(0, 1), **parameters) -> DocList[SearchDoc]:
    """What a Flow does with polling ALL: each shard gets its own copy of the request, the
    merger their answers (in ``order``: jina does not promise one)."""
    method = endpoint.strip("/")
    answers = [
        getattr(shard, method)(docs=docs(*copy.deepcopy(list(batch))), parameters=parameters)
        for shard in shards
    ]
    matrix = [answers[i] for i in order]
    merger = MatchMerger()
    merge = merger.merge_matches if endpoint == "/search" else merger.merge_outcomes
    kwargs = {"parameters": parameters} if endpoint == "/search" else {}
    return merge(docs=matrix[0], docs_matrix=matrix, **kwargs)


def counts(shards) -> list[int]:
    return [s.status(docs=DocList[StatusDoc]())[0].info["count"] for s in shards]


def test_two_shards_upsert_each_id_on_its_owner_only(two_shards):
    x, new = vectors(20), vectors(5, seed=1)
    ids = [f"d{i}" for i in range(20)]
    first = post(
        two_shards, "/index", [SearchDoc(id=i, embedding=v) for i, v in zip(ids, x, strict=True)]
    )
    assert [(d.id, d.error) for d in first] == [(i, None) for i in ids]
    owned = [sum(owner_shard(i, 2) == k for i in ids) for k in range(2)]
    assert counts(two_shards) == owned and min(owned) > 0
    for k, shard in enumerate(two_shards):
        stored = shard.shard.store.get(ids)
        assert [r is not None for r in stored] == [owner_shard(i, 2) == k for i in ids]

    nameless = SearchDoc(embedding=x[0] + 1)
    nameless.id = None  # an HTTP client's document: both shards must derive the same id
    again = [SearchDoc(id=i, embedding=new[n] if n < 5 else x[n]) for n, i in enumerate(ids)]
    batch = [*again[:10], SearchDoc(id="bad", embedding=np.ones(3)), nameless, *again[10:]]
    for order in ((0, 1), (1, 0)):
        answer = post(two_shards, "/index", batch, order=order)
        assert [d.id for d in answer][:11] == [*ids[:10], "bad"]
        assert [d.error for d in answer] == [None] * 10 + [
            f"embedding has dimension 3, the index expects {DIM}",  # the owner's, not masked
            None,
            *[None] * 10,
        ]
        assert answer[11].id and sum(counts(two_shards)) == 21

    hits = post(two_shards, "/search", [SearchDoc(embedding=v) for v in (*new, x[7])], limit=30)
    assert [d.matches[0].id for d in hits] == [*ids[:5], "d7"]
    assert all(len({m.id for m in d.matches}) == len(d.matches) == 21 for d in hits)

    updated = post(
        two_shards,
        "/update",
        [SearchDoc(id="d5", text="five"), SearchDoc(id="ghost", text="boo")],
        order=(1, 0),
    )
    assert [(d.id, d.error) for d in updated] == [("d5", None), ("ghost", "unknown id")]
    deleted = post(two_shards, "/delete", [SearchDoc(id="d6")], ids=["nope", "d8"])
    assert [(d.id, d.error) for d in deleted] == [
        ("d6", None),
        ("nope", "unknown id"),
        ("d8", None),
    ]
    assert sum(counts(two_shards)) == 19


def test_merger_reports_a_missing_owner_answer():
    owner_answer = docs(SearchDoc(id="a", error="embedding is a zero vector"))
    other = docs(SearchDoc(id="a", error=NOT_OWNER))
    merger = MatchMerger()
    for matrix in ([owner_answer, other], [other, owner_answer]):
        merged = merger.merge_outcomes(docs=matrix[0], docs_matrix=copy.deepcopy(matrix))
        assert [d.error for d in merged] == ["embedding is a zero vector"]
    alone = merger.merge_outcomes(docs=other, docs_matrix=[other])  # the owner shard failed
    assert [d.error for d in alone] == [OWNER_DID_NOT_ANSWER]


def test_a_merger_missing_a_shard_says_so_instead_of_a_partial_answer():
    merger = MatchMerger(shards=2)
    one = shard_answer([("a", 0.9)], [], errors=[None, "embedding is a zero vector"])
    merged = merger.merge_matches(docs=one, docs_matrix=[one], parameters={"limit": 3})
    partial = "1 of 2 index shards did not answer; results would be partial"
    assert [d.error for d in merged] == [partial, "embedding is a zero vector"]
    assert [len(d.matches) for d in merged] == [0, 0]
    answered = shard_answer([], [], errors=[None, "unknown id"])
    deleted = merger.merge_outcomes(docs=answered, docs_matrix=[answered])
    assert [d.error for d in deleted] == [
        None,  # deleted where it was
        "1 of 2 index shards did not answer; unknown id on the shards that answered",
    ]
    status = DocList[StatusDoc]([StatusDoc(info={"count": 2, "dim": 4})])
    info = merger.merge_status(docs=status, docs_matrix=[status])[0].info
    assert info["missing_shards"] == 1 and info["count"] == 2
    both = [status, copy.deepcopy(status)]
    assert merger.merge_status(docs=status, docs_matrix=both)[0].info["missing_shards"] == 0
    both = [shard_answer([("a", 0.9)]), shard_answer([("b", 0.8)])]
    merged = merger.merge_matches(docs=both[0], docs_matrix=both, parameters={})
    assert merged[0].error is None and [m.id for m in merged[0].matches] == ["a", "b"]


# ---------------------------------------------------------------------- a real sharded Flow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scaled_polling() -> dict[str, str]:
    """The indexer's polling in flow.scaled.yml, so that the test runs what is deployed."""
    config = yaml.safe_load(SCALED_FLOW.read_text())
    (indexer,) = [e for e in config["executors"] if e["uses"] == "HNSWIndexer"]
    assert indexer["uses_after"] == "MatchMerger" and indexer["shards"] == 2
    return indexer["polling"]


def test_sharded_flow_returns_the_global_top_k_and_upserts_by_id(tmp_path):
    from jina import Client

    polling = scaled_polling()
    assert set(polling.values()) == {"ALL"}
    grpc_port, http_port = free_port(), free_port()
    # A real `jina flow` process: jina forks its executors, which is unsafe from a test process
    # that has already run torch and gRPC clients.
    yml = tmp_path / "sharded.yml"
    yml.write_text(
        yaml.safe_dump(
            {
                "jtype": "Flow",
                "with": {
                    "protocol": ["grpc", "http"],
                    "port": [grpc_port, http_port],
                    "host": "127.0.0.1",
                },
                "executors": [
                    {
                        "name": "indexer",
                        "uses": "HNSWIndexer",
                        "py_modules": ["executors.hnsw_indexer"],
                        "shards": 2,
                        "polling": polling,
                        "uses_after": "MatchMerger",
                        "workspace": str(tmp_path / "ws"),
                    }
                ],
            },
            sort_keys=False,
        )
    )
    flow = ServedFlow(
        str(yml), {"GRPC_PORT": str(grpc_port), "HTTP_PORT": str(http_port)}, tmp_path / "log"
    )
    x = vectors(50, seed=5)
    queries = vectors(4, seed=6)
    normed = x / np.linalg.norm(x, axis=1, keepdims=True)
    exact = np.argsort(
        -(queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ normed.T, axis=1
    )
    ids = [f"d{i}" for i in range(50)]
    owned = sorted(sum(owner_shard(i, 2) == k for i in ids) for k in range(2))
    with flow:
        clients = [
            Client(host="127.0.0.1", port=p, protocol=proto)
            for p, proto in ((grpc_port, "grpc"), (http_port, "http"))
        ]
        indexed = clients[0].post(
            "/index",
            docs(*(SearchDoc(id=i, embedding=v) for i, v in zip(ids, x, strict=True))),
            request_size=10,
            return_type=DocList[SearchDoc],
        )
        assert len(indexed) == 50 and all(d.error is None for d in indexed)
        for client in clients:
            info = client.post("/status", return_type=DocList[StatusDoc])[0].info
            assert info["count"] == 50 and sorted(s["count"] for s in info["shards"]) == owned
            answer = client.post(
                "/search",
                docs(*(SearchDoc(embedding=q) for q in queries)),
                parameters={"limit": 5},
                return_type=DocList[SearchDoc],
            )
            for doc, order in zip(answer, exact, strict=True):
                assert [m.id for m in doc.matches] == [f"d{i}" for i in order[:5]]

        # Re-index every id, the first 8 with new vectors, beside a wrong-dimension vector:
        # each id still exists once (on its owner), and the owner's error reaches the client.
        new = vectors(8, seed=7)
        again = [SearchDoc(id=i, embedding=new[n] if n < 8 else x[n]) for n, i in enumerate(ids)]
        again.insert(3, SearchDoc(id="bad", embedding=np.ones(3)))
        reindexed = clients[0].post(
            "/index", docs(*again), request_size=10, return_type=DocList[SearchDoc]
        )
        assert [(d.id, d.error) for d in reindexed] == [
            (d.id, f"embedding has dimension 3, the index expects {DIM}" if d.id == "bad" else None)
            for d in again
        ]
        info = clients[1].post("/status", return_type=DocList[StatusDoc])[0].info
        assert info["count"] == 50 and sorted(s["count"] for s in info["shards"]) == owned
        answer = clients[1].post(
            "/search",
            docs(*(SearchDoc(embedding=v) for v in new)),
            parameters={"limit": 100},
            return_type=DocList[SearchDoc],
        )
        assert [d.matches[0].id for d in answer] == ids[:8]
        assert all(sorted(m.id for m in d.matches) == sorted(ids) for d in answer)

        deleted = clients[1].post(
            "/delete", parameters={"ids": ["d0", "nope"]}, return_type=DocList[SearchDoc]
        )
        assert [(d.id, d.error) for d in deleted] == [("d0", None), ("nope", "unknown id")]
        updated = clients[0].post(
            "/update",
            docs(SearchDoc(id="d1", text="one"), SearchDoc(id="d0", text="gone")),
            return_type=DocList[SearchDoc],
        )
        assert [(d.id, d.error) for d in updated] == [("d1", None), ("d0", "unknown id")]
        info = clients[0].post("/status", return_type=DocList[StatusDoc])[0].info
        assert info["count"] == 49 and info["deleted_slots"] == 1
        # "more like this" on a sharded index: the owner answers /get with the stored vector
        for client in clients:
            got = client.post(
                "/get", docs(SearchDoc(id="d9"), SearchDoc(id="d0")), return_type=DocList[SearchDoc]
            )
            assert [(d.id, d.error) for d in got] == [("d9", None), ("d0", "unknown id")]
            np.testing.assert_allclose(got[0].embedding, normed[9], atol=1e-6)


def test_two_shards_filter_on_every_shard_and_merge(two_shards):
    x = vectors(40, seed=3)
    batch = [
        SearchDoc(id=f"d{i}", embedding=v, tags={"colour": ["red", "blue"][i % 2], "price": i})
        for i, v in enumerate(x)
    ]
    assert all(d.error is None for d in post(two_shards, "/index", batch))
    wanted = {"colour": "red", "price": {"$gte": 10, "$lt": 30}}  # d10, d12, ..., d28
    [answer] = post(two_shards, "/search", [SearchDoc(embedding=x[0])], limit=50, filter=wanted)
    assert sorted(int(m.id[1:]) for m in answer.matches) == list(range(10, 30, 2))
    assert all(m.tags["colour"] == "red" and 10 <= m.tags["price"] < 30 for m in answer.matches)
    [bad] = post(two_shards, "/search", [SearchDoc(embedding=x[0])], filter={"price": {"$lt": "x"}})
    assert bad.error == 'filter.price: $lt needs a number, got "x"' and not bad.matches
    infos = [s.status(docs=DocList[StatusDoc]())[0].info for s in two_shards]
    info = MatchMerger().merge_status(docs=[], docs_matrix=[[StatusDoc(info=i)] for i in infos])
    tags = info[0].info["tags"]
    assert sorted(tags["colour"]["values"]) == ["blue", "red"]
    assert (tags["price"]["min"], tags["price"]["max"]) == (0, 39)
