"""Wire documents (docarray, `client.wire`) to the core's `Document`s and back."""

from __future__ import annotations

import numpy as np
from docarray import DocList

from client.wire_docs import Match as WireMatch
from client.wire_docs import SearchDoc
from executors.service_metrics import ServiceMetrics
from search.access import token_error
from search.documents import Document, Match


def to_core(docs: DocList[SearchDoc]) -> list[Document]:
    return [
        Document(
            id=d.id,
            text=d.text,
            uri=d.uri,
            blob=d.blob,
            tensor=None if d.tensor is None else np.asarray(d.tensor),
            embedding=None if d.embedding is None else np.asarray(d.embedding),
            tags=dict(d.tags or {}),
            thumbnail=d.thumbnail,
            embedded_by=d.embedded_by,
            towers=dict(d.towers or {}),
            error=d.error,
            matches=[
                Match(m.id, m.score, m.uri, m.text, dict(m.tags or {}), m.thumbnail)
                for m in d.matches
            ],
        )
        for d in docs
    ]


def to_wire(docs: list[Document]) -> DocList[SearchDoc]:
    return DocList[SearchDoc](
        [
            SearchDoc(
                id=d.id,
                text=d.text,
                uri=d.uri,
                blob=d.blob,
                tensor=d.tensor,
                embedding=d.embedding,
                tags=d.tags,
                thumbnail=d.thumbnail,
                embedded_by=d.embedded_by,
                towers=d.towers,
                error=d.error,
                matches=DocList[WireMatch]([wire_match(m) for m in d.matches]),
            )
            for d in docs
        ]
    )


def wire_match(match: Match) -> WireMatch:
    return WireMatch(
        id=match.id,
        score=match.score,
        uri=match.uri,
        text=match.text,
        tags=match.tags,
        thumbnail=match.thumbnail,
    )


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
