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
from docarray.typing import ID, NdArray
from pydantic import Field

# The Flow's search endpoints, one per query modality. Each passes only the encoder it needs
# (jina's gateway skips an executor that does not bind the endpoint), because every executor
# on the path costs a network hop: text search is gateway -> text encoder -> indexer.
SEARCH_TEXT = "/search"
SEARCH_IMAGE = "/search_by_image"


def _id_from_protobuf(cls: type[ID], pb_msg: str) -> ID:
    return cls._docarray_validate(pb_msg)


# docarray 0.41 reads every document's `id` from protobuf with pydantic's deprecated
# `parse_obj_as`, which builds a new TypeAdapter per call: half the cost of deserialising a
# document, paid by every executor on every hop (measured: 32 image documents 3.0 -> 1.35 ms,
# a search answer with 10 matches 0.79 -> 0.27 ms). The validation that adapter runs is
# `ID._docarray_validate` (the value as a string), so call it directly. Every executor and
# the client import this module, so every process that reads documents gets it.
ID.from_protobuf = classmethod(_id_from_protobuf)


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
    # A factory, not a default instance: pydantic deep-copies a mutable default for every new
    # document, and a DocList copies by pickling (70 us per SearchDoc(), 4 us with this). The
    # schema keeps `"default": []`: jina's gateway rebuilds the model from it, and without a
    # default there the HTTP endpoint would require `matches` in every request.
    matches: DocList[Match] = Field(
        default_factory=DocList[Match], json_schema_extra={"default": []}
    )
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
