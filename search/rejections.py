"""Why a document was refused, as one of a few reasons: the label of the services' rejection
counters (a metric label must take few values, and error texts name ids and sizes).

A pure function of the error text, which the core writes in a few fixed forms (see
`search.limits`, `search.access`, `search.index_shard`, `search.image_policy`).
"""

from __future__ import annotations

UNAUTHORIZED = "unauthorized"
TOO_MANY_DOCUMENTS = "too_many_documents"
OVER_LIMIT = "over_limit"
INVALID_ID = "invalid_id"
INVALID_FIELD = "invalid_field"
NO_CONTENT = "no_content"
NOT_EMBEDDED = "not_embedded"
BAD_IMAGE = "bad_image"
OTHER = "other"
REASONS = (
    UNAUTHORIZED,
    TOO_MANY_DOCUMENTS,
    OVER_LIMIT,
    INVALID_ID,
    INVALID_FIELD,
    NO_CONTENT,
    NOT_EMBEDDED,
    BAD_IMAGE,
    OTHER,
)

# (reason, text that marks it), tried in order: the first match wins.
_MARKS = (
    (UNAUTHORIZED, "requires a token"),
    (TOO_MANY_DOCUMENTS, "(MAX_DOCS_PER_REQUEST)"),
    (INVALID_ID, "id is "),
    (INVALID_ID, "id contains"),
    (INVALID_ID, "missing id"),
    (INVALID_FIELD, "is not valid Unicode text"),
    (INVALID_FIELD, "(MAX_EXACT_INT)"),
    (OVER_LIMIT, "more than the limit"),
    (OVER_LIMIT, "(MAX_"),
    (OVER_LIMIT, "max_bytes"),
    (OVER_LIMIT, "decompression bomb"),
    (OVER_LIMIT, "max_pixels"),
    (INVALID_FIELD, "must be"),
    (INVALID_FIELD, "is not a JSON number"),
    (NO_CONTENT, "neither text nor image"),
    (NOT_EMBEDDED, "no embedding"),
)


def rejection_reason(error: str) -> str:
    """The reason (one of `REASONS`) of a document's `error`: the image reasons are every
    error of reading or decoding an image; `OTHER` what matches nothing known."""
    for reason, mark in _MARKS:
        if mark in error:
            return reason
    lowered = error.lower()
    if any(word in lowered for word in ("image", "uri", "file", "decode", "pixels")):
        return BAD_IMAGE
    return OTHER
