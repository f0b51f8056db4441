"""The docarray (v2) documents that every executor of the search Flow takes and returns.

One schema end to end keeps the Flow simple: the text encoder fills `embedding` for docs with
`text`, the image encoder for docs with an image (`blob`, `tensor` or `uri`), and the indexer
stores or searches them. A document that cannot be processed gets `error` set (and no
embedding) instead of failing the request, so the good documents beside it go through.
"""

# No `from __future__ import annotations` here: Jina builds the gateway's schema from these
# classes at start-up and needs real (not string) annotations.
from typing import Any

from docarray import BaseDoc, DocList
from docarray.typing import NdArray

# The Flow's search endpoints, one per query modality. Each passes only the encoder it needs
# (jina's gateway skips an executor that does not bind the endpoint), because every executor
# on the path costs a network hop: text search is gateway -> text encoder -> indexer.
SEARCH_TEXT = "/search"
SEARCH_IMAGE = "/search_by_image"


class Match(BaseDoc):
    """One search hit: the stored fields of an indexed document and its cosine score."""

    score: float = 0.0
    uri: str | None = None
    text: str | None = None
    tags: dict[str, Any] = {}


class SearchDoc(BaseDoc):
    text: str | None = None
    uri: str | None = None
    blob: bytes | None = None
    tensor: NdArray | None = None
    embedding: NdArray | None = None
    tags: dict[str, Any] = {}
    matches: DocList[Match] = DocList[Match]()
    error: str | None = None


class StatusDoc(BaseDoc):
    """Answer of `/status`: counts and index parameters."""

    info: dict[str, Any] = {}


def has_image(doc: SearchDoc) -> bool:
    """Whether a document carries an image (it then is the image encoder's document)."""
    return doc.blob is not None or doc.tensor is not None or bool(doc.uri)


def is_text_query(doc: SearchDoc) -> bool:
    """Whether a document carries text and no image (it then is the text encoder's)."""
    return doc.text is not None and not has_image(doc)
