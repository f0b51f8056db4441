"""The plain documents the search core works on: what is indexed, queried and answered.

A `Document` carries an image (`blob` bytes, an HxWxC uint8 `tensor`, or a `uri`), or a
`text`, or a ready `embedding`, plus an `id`, stored `tags` (and, for an image being indexed,
its `thumbnail`), and after processing either an
`error` (why this document could not be handled; its neighbours are unaffected) or, for a
query, `matches`. An encoder that embeds a document sets `embedded_by` (which tower made the
embedding, `search.towers`) and, on documents to be stored, adds its tower to `towers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imagepairs.images import has_image


@dataclass
class Match:
    """One search hit: the stored fields of an indexed document and its cosine score."""

    id: str
    score: float
    uri: str | None = None
    text: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    thumbnail: str | None = None  # a data: URI, when the search asked for thumbnails


@dataclass
class Document:
    id: str | None = None
    text: str | None = None
    uri: str | None = None
    blob: bytes | None = None
    tensor: np.ndarray | None = None
    embedding: np.ndarray | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    thumbnail: bytes | None = None  # JPEG, made by the image encoder while indexing
    embedded_by: str | None = None  # `clip-text:FINGERPRINT` or `clip-vision:…`; None: given
    towers: dict[str, str] = field(default_factory=dict)  # tower name -> fingerprint
    error: str | None = None
    matches: list[Match] = field(default_factory=list)

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


def pending(docs: list[Document]) -> list[Document]:
    """The documents no earlier step has failed."""
    return [d for d in docs if d.error is None]


def set_errors(docs: list[Document], errors: list[str | None]) -> None:
    for doc, error in zip(docs, errors, strict=True):
        doc.error = error
