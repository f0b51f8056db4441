"""The search service's documents, declared once: what is indexed, queried, stored and answered.

Every layer works on these fields: the index stores the ones marked `stored` (its database
has a column for each, `search.item_db`), the search core works on `Document` and `Match`,
the wire's models are made from them (`client.wire`), the HTTP API's schema describes them
(`executors.http_schema`), and `SearchClient` returns them. A new field is declared here, with
its JSON type and what it means, and the layers carry it.

A `Document` carries an image (`blob` bytes, an HxWxC uint8 `tensor`, or a `uri`), or a
`text`, or a ready `embedding`, plus an `id`, stored `tags` (and, for an image being indexed,
its `thumbnail`), and after processing either an `error` (why this document could not be
handled; its neighbours are unaffected) or, for a query, `matches`. An encoder that embeds a
document sets `embedded_by` (which tower made the embedding) and, on documents to be stored,
adds its tower to `towers`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from imagepairs.images import has_image

_TEXT = {"type": ["string", "null"]}
_OBJECT = {"type": "object"}
_NUMBERS = {"type": ["array", "null"], "items": {"type": "number"}}


def _about(description: str, json: dict[str, Any], stored: bool = False) -> dict[str, Any]:
    """A field's metadata: what it means, its JSON Schema as it travels (bytes as `data:`
    URIs, arrays as nested lists), and whether the index stores it."""
    return {"description": description, "json": json, "stored": stored}


@dataclass
class Match:
    """One search hit: the stored fields of an indexed document and its cosine score."""

    id: str
    score: float = field(default=0.0, metadata=_about("cosine similarity", {"type": "number"}))
    uri: str | None = field(default=None, metadata=_about("the image's uri, as indexed", _TEXT))
    text: str | None = field(default=None, metadata=_about("its stored caption or text", _TEXT))
    tags: dict[str, Any] = field(default_factory=dict, metadata=_about("its stored tags", _OBJECT))
    thumbnail: str | None = field(
        default=None, metadata=_about("a data: URI, when the search asked for thumbnails", _TEXT)
    )


@dataclass
class Document:
    """A document to index, update, get or delete, a query, or an answer with its `matches`."""

    id: str | None = None
    text: str | None = field(
        default=None, metadata=_about("a caption to store, or a text query", _TEXT, stored=True)
    )
    uri: str | None = field(
        default=None,
        metadata=_about("an image file under IMAGE_ROOTS, or a data: URI", _TEXT, stored=True),
    )
    blob: bytes | None = field(
        default=None, metadata=_about("image bytes (over HTTP: a data: URI)", _TEXT)
    )
    tensor: np.ndarray | None = field(
        default=None,
        metadata=_about(
            "an HxWxC image of 0..255 values (over HTTP: nested lists)",
            {"type": ["array", "null"]},
        ),
    )
    embedding: np.ndarray | None = field(
        default=None, metadata=_about("the vector to store or search with", _NUMBERS)
    )
    tags: dict[str, Any] = field(
        default_factory=dict,
        metadata=_about("values to filter on: scalars or lists of scalars", _OBJECT, stored=True),
    )
    thumbnail: bytes | None = field(
        default=None,
        metadata=_about(
            "JPEG, made by the image encoder while indexing; not sent by callers", _TEXT
        ),
    )
    embedded_by: str | None = field(
        default=None,
        metadata=_about(
            "the tower that made the embedding (clip-text:FINGERPRINT), set by the encoders; "
            "None for an embedding the caller gave, unless the caller vouches for one",
            _TEXT,
            stored=True,
        ),
    )
    towers: dict[str, str] = field(
        default_factory=dict,
        metadata=_about(
            "tower name -> fingerprint of the encoders a document to store passed; set by the "
            "encoders, not sent by callers",
            {"type": "object", "additionalProperties": {"type": "string"}},
        ),
    )
    error: str | None = field(
        default=None,
        metadata=_about("why the document was not processed; set by the service", _TEXT),
    )
    matches: list[Match] = field(
        default_factory=list,
        metadata=_about(
            "a query's hits, best first; set by searches",
            {"type": "array", "items": {"$ref": "#/components/schemas/Match"}},
        ),
    )

    @property
    def has_image(self) -> bool:
        """An image document is embedded as an image; its `text`, if any, is its caption."""
        return has_image(self)

    @property
    def is_text_query(self) -> bool:
        """Text and no image: the text encoder's."""
        return self.text is not None and not self.has_image

    def drop_payloads(self) -> None:
        """Forget the large fields once they have served (answers stay small)."""
        self.blob = None
        self.tensor = None
        self.embedding = None
        self.thumbnail = None


# The fields of a `Document` that the index stores beside its id and embedding, in order.
STORED_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Document) if f.metadata.get("stored")
)

Fields = TypeVar("Fields", Match, Document)


def from_plain(cls: type[Fields], data: dict[str, Any]) -> Fields:
    """A `Match` or `Document` from a plain dict (an answer's JSON, a reply read over gRPC):
    the keys it declares, each missing or None one at its default; others are ignored. A
    `Document`'s matches become `Match`es."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = data.get(f.name)
        if value is None:
            continue
        if f.name == "matches":
            value = [from_plain(Match, m) for m in value]
        elif f.name == "score":
            value = float(value)
        values[f.name] = value
    return cls(**values)


def pending(docs: list[Document]) -> list[Document]:
    """The documents no earlier step has failed."""
    return [d for d in docs if d.error is None]


def set_errors(docs: list[Document], errors: list[str | None]) -> None:
    for doc, error in zip(docs, errors, strict=True):
        doc.error = error
