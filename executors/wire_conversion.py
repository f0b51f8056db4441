"""Wire documents (docarray, `client.wire`) to the core's `Document`s and back."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from docarray import DocList

from client.wire_docs import Match as WireMatch
from client.wire_docs import SearchDoc
from executors.service_metrics import ServiceMetrics
from imagepairs.documents import Document, Match
from search.access import token_error


def to_core(docs: DocList[SearchDoc]) -> list[Document]:
    return [
        Document(
            id=d.id,
            **_core_fields(d, _FIELDS),
            matches=[Match(id=m.id, **_core_fields(m, _MATCH_FIELDS)) for m in d.matches],
        )
        for d in docs
    ]


def to_wire(docs: list[Document]) -> DocList[SearchDoc]:
    return DocList[SearchDoc](
        [
            SearchDoc(
                id=d.id,
                **{f.name: getattr(d, f.name) for f in _FIELDS},
                matches=DocList[WireMatch]([wire_match(m) for m in d.matches]),
            )
            for d in docs
        ]
    )


def wire_match(match: Match) -> WireMatch:
    return WireMatch(id=match.id, **{f.name: getattr(match, f.name) for f in _MATCH_FIELDS})


# The fields converted one by one (`id` and `matches` apart): arrays become numpy arrays,
# objects plain dicts, and a missing one its default.
_FIELDS = [f for f in dataclasses.fields(Document) if f.name not in ("id", "matches")]
_MATCH_FIELDS = [f for f in dataclasses.fields(Match) if f.name != "id"]
_ARRAYS = {"tensor", "embedding"}


def _core_fields(doc: Any, fields: list[dataclasses.Field]) -> dict[str, Any]:
    out = {}
    for f in fields:
        value = getattr(doc, f.name)
        if value is None and f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        elif f.name in _ARRAYS and value is not None:
            value = np.asarray(value)
        elif isinstance(value, dict):
            value = dict(value)
        out[f.name] = value
    return out


def refused_without_token(
    docs: DocList[SearchDoc],
    required: str,
    parameters: dict | None,
    endpoint: str,
    metrics: ServiceMetrics,
) -> bool:
    """Set the token error on every document of a write request without the service's token
    (`search.access`); True when refused, so the caller does no work for it. The documents
    no earlier executor refused are counted in `metrics`."""
    error = token_error(required, parameters, endpoint)
    if error is None:
        return False
    before = [doc.error for doc in docs]
    for doc in docs:
        doc.error = error
        doc.blob = doc.tensor = doc.embedding = None  # nothing large travels on
    metrics.outcomes(before, docs)
    return True
