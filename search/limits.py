"""Every bound on what one request or one document may carry, in one place.

A request over `MAX_DOCS_PER_REQUEST` documents is refused whole (each document gets the
error, nothing is stored); a document over a per-document limit gets an error naming the limit
and its neighbours go through. The encoders check before any work is done, the index checks
again before anything is stored, so every path (the Flow, `SearchService`, a caller of `Index`)
gets the same rules. Each error names the constant, so an operator can find it here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

# A document's `id` (control characters are refused too, see `search.index.id_error`).
MAX_ID_LENGTH = 512
# Characters of a stored `text` (a caption). Queries are not refused: the text encoder cuts
# them to the model's context length.
MAX_TEXT_CHARS = 10_000
# Characters of a `uri` (stored, or an image path to read).
MAX_URI_CHARS = 2_048
# Tags: a JSON object of at most this many keys, each key at most this long, whose values are
# scalars (str, number, bool, null) or lists of scalars, at most this many bytes as JSON.
MAX_TAGS = 64
MAX_TAG_KEY_CHARS = 128
MAX_TAGS_JSON_BYTES = 16 * 1024
# Documents (and ids, for /delete) in one request: beyond it every document gets the error.
MAX_DOCS_PER_REQUEST = 512
# Bytes of one request: an HTTP body (images as base64 data: URIs) or a gRPC message. Over it
# the gateway refuses the request whole; the client cuts its batches to fit.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
# Pixels the image encoder decodes for one request; images past the budget get an error.
MAX_REQUEST_PIXELS = 256 * 1024 * 1024
# Characters of stored text a search returns per match: texts stored before MAX_TEXT_CHARS
# existed are cut to it, so an answer's size stays bounded whatever the store holds.
MAX_MATCH_TEXT_CHARS = MAX_TEXT_CHARS

_SCALARS = (str, int, float, bool, type(None))


def request_error(count: int) -> str | None:
    """Why a request of `count` documents is refused, or None."""
    if count > MAX_DOCS_PER_REQUEST:
        return (
            f"the request has {count} documents, more than the limit of {MAX_DOCS_PER_REQUEST} "
            f"(MAX_DOCS_PER_REQUEST); nothing in it was processed: send smaller batches"
        )
    return None


def refuse_oversized(docs: Sequence[Any], extra: int = 0) -> bool:
    """Set the request error on every document when there are too many (`extra`: ids given
    beside them); True when refused."""
    error = request_error(len(docs) + extra)
    if error is None:
        return False
    for doc in docs:
        doc.error = error
    return True


def document_error(doc: Any, stored: bool = True) -> str | None:
    """Why a document breaks a per-document limit, or None. `stored`: it is being indexed or
    updated (its text and tags are kept), not a query."""
    if doc.uri is not None:
        if not isinstance(doc.uri, str):
            return f"uri must be a string, got {type(doc.uri).__name__}"
        if len(doc.uri) > MAX_URI_CHARS:
            return _too_long("uri", len(doc.uri), MAX_URI_CHARS, "MAX_URI_CHARS")
    if doc.text is not None and not isinstance(doc.text, str):
        return f"text must be a string, got {type(doc.text).__name__}"
    if not stored:
        return None
    if doc.text is not None and len(doc.text) > MAX_TEXT_CHARS:
        return _too_long("text", len(doc.text), MAX_TEXT_CHARS, "MAX_TEXT_CHARS")
    return tags_error(doc.tags)


def tags_error(tags: Any) -> str | None:
    """Why `tags` cannot be stored, or None (None and {} are no tags)."""
    if tags is None:
        return None
    if not isinstance(tags, dict):
        return (
            f"tags must be a JSON object of scalars or lists of scalars, got {type(tags).__name__}"
        )
    if len(tags) > MAX_TAGS:
        return f"tags has {len(tags)} keys, more than the limit of {MAX_TAGS} (MAX_TAGS)"
    for key, value in tags.items():
        if not isinstance(key, str):
            return f"tag keys must be strings, got {type(key).__name__}"
        if len(key) > MAX_TAG_KEY_CHARS:
            return _too_long("tag key", len(key), MAX_TAG_KEY_CHARS, "MAX_TAG_KEY_CHARS")
        for element in value if isinstance(value, list) else (value,):
            if not isinstance(element, _SCALARS):
                return (
                    f"tag {key[:40]!r}: values must be a string, number, bool, null or a list "
                    f"of those, got {'a list holding ' if isinstance(value, list) else ''}"
                    f"{type(element).__name__}"
                )
            if isinstance(element, float) and not math.isfinite(element):
                return f"tag {key[:40]!r}: {element} is not a JSON number"
    size = len(json.dumps(tags, ensure_ascii=False).encode("utf-8"))
    if size > MAX_TAGS_JSON_BYTES:
        return (
            f"tags are {size} bytes as JSON, more than the limit of {MAX_TAGS_JSON_BYTES} "
            f"(MAX_TAGS_JSON_BYTES)"
        )
    return None


def pixel_budget_error(pixels: int, left: int) -> str:
    """The error of an image that does not fit in what is left of its request's budget."""
    return (
        f"image of {pixels} pixels does not fit in what is left ({left}) of the request's "
        f"budget of {MAX_REQUEST_PIXELS} decoded pixels (MAX_REQUEST_PIXELS); send it in "
        f"another request"
    )


def bounded_text(text: str | None) -> str | None:
    """A stored text as a search returns it: at most `MAX_MATCH_TEXT_CHARS` characters."""
    if text is None or len(text) <= MAX_MATCH_TEXT_CHARS:
        return text
    return text[:MAX_MATCH_TEXT_CHARS]


def _too_long(what: str, length: int, limit: int, name: str) -> str:
    return f"{what} is {length} characters long, more than the limit of {limit} ({name})"
