"""The Flow's document schema: routing helpers and the docarray id-parsing fix."""

from __future__ import annotations

import numpy as np
import pytest
from docarray import BaseDoc, DocList
from docarray.typing import ID
from pydantic import TypeAdapter

from executors.schemas import Match, SearchDoc, has_image, is_text_query


@pytest.mark.parametrize("doc_id", ["a/b/img 0.png", "42", "ünïcødé-✓", "x" * 300])
def test_ids_survive_protobuf_and_parse_as_pydantic_would(doc_id):
    docs = DocList[SearchDoc]([SearchDoc(id=doc_id, matches=DocList[Match]([Match(id=doc_id)]))])
    [back] = DocList[SearchDoc].from_protobuf(docs.to_protobuf())
    assert back.id == doc_id and back.matches[0].id == doc_id
    assert isinstance(back.id, ID) and isinstance(back.matches[0].id, ID)
    # the same result as the TypeAdapter that docarray would build for every call
    assert ID.from_protobuf(doc_id) == TypeAdapter(ID).validate_python(doc_id)


def test_which_encoder_a_document_is_for():
    assert has_image(SearchDoc(uri="a.jpg")) and has_image(SearchDoc(blob=b"x", text="caption"))
    assert is_text_query(SearchDoc(text="a cat")) and not is_text_query(
        SearchDoc(text="c", uri="u")
    )
    assert not has_image(SearchDoc(text="t")) and not is_text_query(SearchDoc())


def test_reading_documents_builds_no_pydantic_type_adapter(monkeypatch):
    """docarray's own `ID.from_protobuf` built one per document (see executors/schemas.py)."""
    built = []
    original = TypeAdapter.__init__

    def counting_init(self, *args, **kwargs):
        built.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(TypeAdapter, "__init__", counting_init)
    pb = DocList[SearchDoc]([SearchDoc(id=str(i), text="t") for i in range(8)]).to_protobuf()
    assert [d.id for d in DocList[SearchDoc].from_protobuf(pb)] == [str(i) for i in range(8)]
    assert built == []


def test_new_documents_get_their_own_empty_matches_and_the_schema_keeps_its_default():
    first, second = SearchDoc(), SearchDoc(text="q")
    first.matches.append(Match(id="m"))
    assert len(second.matches) == 0 and len(SearchDoc().matches) == 0
    # jina's gateway rebuilds the model from this schema: a default keeps `matches` optional
    assert SearchDoc.model_json_schema()["properties"]["matches"]["default"] == []


MATCHES = [
    Match(id="img-1", score=0.73, uri="/data/a.jpg", text="a red car", tags={}),
    Match(id="img-2", score=1, uri=None, text=None),  # an int score, unset fields
    Match(
        id="img-3",
        score=-0.25,
        uri="a.png",
        tags={"shop": "x", "price": 3, "ratio": 0.5, "ok": True, "sizes": [1, 2], "m": {"a": None}},
    ),
    Match(),  # a generated id
]
RNG = np.random.default_rng(0)
DOCS = [
    *MATCHES,
    SearchDoc(text="a red car"),  # a text query
    SearchDoc(id="a/b.jpg", uri="a/b.jpg", blob=b"\xff\xd8 jpeg bytes", text="caption"),
    SearchDoc(tensor=RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8), tags={"k": [1, "x"]}),
    SearchDoc(
        text="q",
        embedding=RNG.standard_normal(8).astype(np.float32),
        matches=DocList[Match](MATCHES),
    ),
    SearchDoc(id="bad", error="image blob: cannot identify image file", blob=b""),
]


@pytest.mark.parametrize("doc", DOCS, ids=range(len(DOCS)))
def test_documents_protobuf_is_the_message_docarray_writes_and_reads(doc):
    fast, general = doc.to_protobuf(), BaseDoc.to_protobuf(doc)
    assert fast == general
    assert fast.SerializeToString(deterministic=True) == general.SerializeToString(
        deterministic=True
    )
    cls = type(doc)
    back = cls.from_protobuf(general)
    assert back == BaseDoc.from_protobuf.__func__(cls, general)
    assert _plain(back) == _plain(doc)
    assert isinstance(back.id, ID)


def _plain(doc: BaseDoc) -> dict:
    """A document's fields as comparable values (arrays as lists, nested documents as dicts)."""
    out = {}
    for name, value in doc:
        if isinstance(value, np.ndarray):
            value = (value.dtype.str, value.tolist())
        elif isinstance(value, DocList):
            value = [_plain(d) for d in value]
        out[name] = float(value) if name == "score" else value
    return out


def test_a_search_answer_round_trips_with_its_matches():
    answer = DocList[SearchDoc]([SearchDoc(text="q", matches=DocList[Match](MATCHES))])
    [back] = DocList[SearchDoc].from_protobuf(answer.to_protobuf())
    assert [_plain(m) for m in back.matches] == [_plain(m) for m in MATCHES]


def test_fields_the_fast_path_does_not_know_take_docarray_own_code():
    class RankedMatch(Match):
        rank: int = 0
        parent: Match | None = None

    ranked = RankedMatch(id="r", score=0.5, rank=3, parent=Match(id="p", score=0.1))
    assert ranked.to_protobuf() == BaseDoc.to_protobuf(ranked)
    back = RankedMatch.from_protobuf(ranked.to_protobuf())
    assert back.rank == 3 and back.parent.id == "p"
    # a field this schema lacks is not read, as docarray does it
    assert Match.from_protobuf(ranked.to_protobuf()) == Match(id="r", score=0.5)


def test_a_value_protobuf_cannot_hold_fails_as_docarray_says():
    doc = SearchDoc(tags={"when": object()})
    with pytest.raises(Exception, match="tags"):
        doc.to_protobuf()
