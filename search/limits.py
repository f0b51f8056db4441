"""Every bound on what one request or one document may carry, in one place.

A request over `MAX_DOCS_PER_REQUEST` documents is refused whole (each document gets the
error, nothing is stored); a document over a per-document limit gets an error naming the limit
and its neighbours go through. The encoders check before any work is done, the index checks
again before anything is stored, so every path (the Flow, `SearchService`, a caller of `IndexShard`)
gets the same rules. Each error names the constant, so an operator can find it here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

# A document's `id` (control characters are refused too, see `search.index_shard.id_error`).
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
# Nesting of an HTTP body (its outer object is level 1), and of tags kept by `HNSWStore`: the
# service's own bodies need at most 7 levels, and protobuf, which carries requests between the
# Flow's processes, refuses to decode a few dozen. Deeper bodies are refused whole (HTTP 400).
MAX_JSON_DEPTH = 16
# Integers travel as doubles (docarray's tags, protobuf's Struct for parameters) and filters
# compare numbers as doubles: an integer beyond this magnitude would not arrive or compare
# exactly, so it is refused (send a 64-bit SKU as a string).
MAX_EXACT_INT = 2**53
# Characters of a whole-request failure's message sent back to the caller: its first line, cut
# to this; the Flow's log has the rest (stack traces and paths stay on the server).
MAX_ERROR_CHARS = 600

_SCALARS = (str, int, float, bool, type(None))
NOT_UNICODE = "is not valid Unicode text (it holds a lone surrogate, such as JSON's \\ud800)"
# A filesystem path of two or more parts, which an error sent to a caller leaves out.
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][\w.\-]+){2,}")


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
    for name in ("uri", "text"):
        if getattr(doc, name) is not None and not encodable(getattr(doc, name)):
            return f"{name} {NOT_UNICODE}"
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
        if not encodable(key):
            return f"tag key {key[:40]!r} {NOT_UNICODE}"
        for element in value if isinstance(value, list) else (value,):
            if not isinstance(element, _SCALARS):
                return (
                    f"tag {key[:40]!r}: values must be a string, number, bool, null or a list "
                    f"of those, got {'a list holding ' if isinstance(value, list) else ''}"
                    f"{type(element).__name__}"
                )
            if isinstance(element, float) and not math.isfinite(element):
                return f"tag {key[:40]!r}: {element} is not a JSON number"
            if isinstance(element, int) and abs(element) > MAX_EXACT_INT:
                return f"tag {key[:40]!r}: {inexact_int_error(element)}"
            if isinstance(element, str) and not encodable(element):
                return f"tag {key[:40]!r}: the value {NOT_UNICODE}"
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


def inexact_int_error(number: int) -> str:
    """The error of an integer beyond `MAX_EXACT_INT`, which would not arrive exactly."""
    return (
        f"the integer {shown(number)} is beyond +-{MAX_EXACT_INT} (MAX_EXACT_INT): numbers "
        f"travel as doubles and would not arrive exactly; send it as a string"
    )


def encodable(text: str) -> bool:
    """Whether `text` is Unicode that UTF-8 (the wire, SQLite) can carry: JSON's `\\ud800`
    escape makes a lone surrogate, which it cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_depth(value: Any, stop: int = MAX_JSON_DEPTH) -> int:
    """Levels of nested lists and dicts in `value` (a scalar has 0), counted up to `stop + 1`
    and without recursion, so that any nesting is measured safely."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > stop:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def shown(value: Any, chars: int = 40) -> str:
    """`value` as an error message shows it: its repr, cut to `chars`."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's limit on digits to print
        return f"<an integer of {value.bit_length()} bits>"
    return text if len(text) <= chars else text[: chars - 3] + "..."


def short_error(message: str) -> str:
    """A whole-request failure's message as the caller gets it: the first line, filesystem
    paths left out, at most `MAX_ERROR_CHARS` (the server's log keeps the whole)."""
    lines = message.strip().splitlines()
    first = _PATH.sub("<path>", lines[0] if lines else "")
    return first if len(first) <= MAX_ERROR_CHARS else first[: MAX_ERROR_CHARS - 3] + "..."


def _too_long(what: str, length: int, limit: int, name: str) -> str:
    return f"{what} is {length} characters long, more than the limit of {limit} ({name})"
