"""The Flow's document schema: routing helpers and the docarray id-parsing fix."""

from __future__ import annotations

import pytest
from docarray import DocList
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
