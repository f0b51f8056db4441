"""The wire's fields are declared once (`client.wire`, plain pydantic) and its docarray documents
(`client.wire_docs`) are made from them: both have the same fields, and a document is refused
the same way whichever an HTTP or a gRPC client checks it against."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from docarray import DocList
from docarray.typing import NdArray

from client.wire import (
    DocumentError,
    MatchFields,
    SearchFields,
    StatusFields,
    checked_documents,
)
from client.wire_docs import Match, SearchDoc, StatusDoc


@pytest.mark.parametrize(
    ("plain", "document"),
    [(SearchFields, SearchDoc), (MatchFields, Match), (StatusFields, StatusDoc)],
)
def test_each_docarray_document_has_the_plain_fields_and_its_id(plain, document):
    assert list(document.model_fields) == ["id", *plain.model_fields]
    assert document.__doc__ == plain.__doc__
    for field, info in plain.model_fields.items():
        assert document.model_fields[field].get_default(call_default_factory=True) == (
            info.get_default(call_default_factory=True)
        )


def test_arrays_and_nested_documents_are_docarray_types_in_the_documents():
    doc = SearchDoc(embedding=[0.5, 1.0], tensor=np.zeros((2, 2, 3)))
    assert isinstance(doc.embedding, NdArray) and isinstance(doc.tensor, NdArray)
    assert isinstance(doc.matches, DocList) and doc.matches.doc_type is Match
    assert SearchDoc().matches is not SearchDoc().matches  # a fresh empty list each


DOCUMENTS: dict[str, dict[str, Any]] = {
    "good": {"id": "a", "text": "x", "tags": {"k": 1}, "embedding": [0.1, 0.2]},
    "an image": {"id": "a", "blob": b"\x89PNG", "uri": "a.png"},
    "an array embedding": {"embedding": np.ones(4, dtype=np.float32)},
    "tags a list": {"text": "x", "tags": [1, 2]},
    "text a number": {"text": 5},
    "uri a list": {"uri": ["a"]},
    "towers not text": {"towers": {"clip-text": 1}},
    "error a number": {"error": 3},
    "an embedding as a dict": {"embedding": {"a": 1}},
    "an embedding as a bool": {"embedding": True},
    "a tensor as a dict": {"tensor": {"a": 1}},
    "a lone surrogate": {"text": "\ud800"},
    "a 64-bit integer": {"tags": {"sku": 2**64}},
}
ARRAY_FIELDS = ("embedding", "tensor")  # docarray's NdArray words its refusals its own way


@pytest.mark.parametrize("case", DOCUMENTS)
def test_a_document_is_refused_alike_by_the_plain_fields_and_the_docarray_document(case):
    doc = DOCUMENTS[case]
    verdicts = []
    for model in (SearchFields, SearchDoc):
        try:
            checked_documents("/index", [{"id": "ok"}, doc], model)
            verdicts.append(None)
        except DocumentError as e:
            verdicts.append(str(e))
    plain, docarray = verdicts
    if any(field in doc for field in ARRAY_FIELDS) and plain is not None:
        assert docarray is not None and docarray.split(":")[:2] == plain.split(":")[:2], verdicts
    else:
        assert plain == docarray, verdicts
    if plain is not None:
        assert plain.startswith("/index refused the request: document 1, field ")
        assert plain.endswith("(checked before sending)")
