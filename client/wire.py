"""The service's wire format: the docarray documents every request and answer carries, and
the endpoints. The client owns it; the Flow's executors speak it.

One schema end to end keeps the Flow simple: the encoders fill `embedding`, the indexer stores
or searches, and a document that cannot be processed gets `error` set (and no embedding)
instead of failing the request, so the good documents beside it go through.
"""

# No `from __future__ import annotations` here: jina builds the gateway's schema from these
# classes at start-up and needs real (not string) annotations.
from typing import Any

from docarray import BaseDoc, DocList
from docarray.typing import NdArray
from pydantic import Field, ValidationError

# Each endpoint passes only the executors that bind it: text search goes gateway -> text
# encoder -> indexer, image search through the image encoder, /delete and /status straight
# to the indexer.
INDEX = "/index"
SEARCH_TEXT = "/search"
SEARCH_IMAGE = "/search_by_image"
UPDATE = "/update"
DELETE = "/delete"
GET = "/get"  # stored fields and embedding by id ("more like this")
STATUS = "/status"
# Every executor (each shard, one replica of each encoder) adds its `StatusDoc` to the answer;
# the sharded index's merger fails the request when a shard did not answer.
HEALTH = "/health"


class Match(BaseDoc):
    """One search hit: the stored fields of an indexed document and its cosine score."""

    score: float = 0.0
    uri: str | None = None
    text: str | None = None
    tags: dict[str, Any] = {}
    thumbnail: str | None = None  # data: URI, with parameters {"thumbnails": true}


class SearchDoc(BaseDoc):
    text: str | None = None
    uri: str | None = None
    blob: bytes | None = None
    tensor: NdArray | None = None
    embedding: NdArray | None = None
    tags: dict[str, Any] = {}
    thumbnail: bytes | None = None  # JPEG, from the image encoder to the indexer
    # Which tower made `embedding` (`clip-text:FINGERPRINT`, `clip-vision:…`): set by the
    # encoders, checked by the index against the towers that embedded it; None for an
    # embedding the caller gave. `towers`: the encoders a document to store passed.
    embedded_by: str | None = None
    towers: dict[str, str] = {}
    # A factory, not a default instance: pydantic deep-copies a mutable default for every new
    # document, and a DocList copies by pickling. The schema keeps `"default": []`: jina's
    # gateway rebuilds the model from it, and without a default there the HTTP endpoint would
    # require `matches` in every request.
    matches: DocList[Match] = Field(
        default_factory=DocList[Match], json_schema_extra={"default": []}
    )
    error: str | None = None


class StatusDoc(BaseDoc):
    """Answer of `/status` (counts and index parameters) and, one per executor reached, of
    `/health` (`{"executor": runtime name, "shard": number or None}`)."""

    info: dict[str, Any] = {}


def schema_error(error: ValidationError) -> str:
    """The first fault of a document that does not fit its schema, naming the field:
    `field tags: Input should be a valid dictionary`."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "?"
    return f"field {field}: {first['msg']}"
