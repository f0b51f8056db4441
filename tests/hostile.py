"""Hostile input for the property tests (tests/test_hostile_input.py, test_hostile_flow.py).

Documents and parameters are shaped by the wire schema (`client.wire.SearchDoc`'s fields, and
the parameters limit, ef, filter, ids, thumbnails and token); their values come from plausible
ones and from the classes a hostile caller sends: lone surrogates, deep nesting, integers
beyond what doubles carry, numbers that overflow float64, huge embeddings and odd types.

JSON has literals Python cannot write (`1e400`, nesting deeper than its recursion limit), so
those are `Raw` text: `body` puts them into an HTTP body as they are, and `python_value` turns
them into what a Python caller would pass instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from client.wire_docs import SearchDoc

# The Flow's executors: a parameter of that name is theirs (jina), not a hostile input.
EXECUTOR_NAMES = ("image_encoder", "text_encoder", "indexer")
GOOD_PREFIX = "good-"


@dataclass(frozen=True)
class Raw:
    """JSON text that goes into a body as it is; `levels` > 0: lists (`[`) or objects (`{`)
    nested that deep."""

    text: str
    levels: int = 0
    bracket: str = "["


def deep(levels: int) -> Raw:
    """A list nested `levels` deep."""
    return Raw("[" * levels + "1" + "]" * levels, levels, "[")


def deep_object(levels: int) -> Raw:
    """An object nested `levels` deep (`{"k": {"k": ...}}`)."""
    return Raw('{"k": ' * levels + '"x"' + "}" * levels, levels, "{")


def body(payload: Any) -> bytes:
    """`payload` as the JSON an HTTP caller sends: lone surrogates as `\\ud800` escapes, NaN
    and Infinity as those literals, `Raw` text as it is."""
    raws: list[str] = []

    def marked(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value.text)
            return f"@@raw{len(raws) - 1}@@"
        if isinstance(value, dict):
            return {key: marked(item) for key, item in value.items()}
        if isinstance(value, list):
            return [marked(item) for item in value]
        return value

    text = json.dumps(marked(payload))
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@raw{i}@@"', raw, 1)
    return text.encode("utf-8")


def python_value(value: Any) -> Any:
    """`value` with each `Raw` as the Python value its JSON reads as (built without
    recursion, however deep)."""
    if isinstance(value, Raw):
        if not value.levels:
            return json.loads(value.text)  # NaN, Infinity, 1e400 (inf), a 400-digit integer
        built: Any = 1 if value.bracket == "[" else "x"
        for _ in range(value.levels):
            built = [built] if value.bracket == "[" else {"k": built}
        return built
    if isinstance(value, dict):
        return {key: python_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [python_value(item) for item in value]
    return value


# --- values ------------------------------------------------------------------------------

SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udc80", "\ud83d"])
TEXTS = st.text(max_size=12) | st.text(st.characters(categories=["Cs", "Ll", "Cc"]), max_size=4)
BIG_INTS = st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**63, 2**64, 10**30])
OVERFLOWING = st.sampled_from(["1e400", "-1e400", "1" + "0" * 400, "NaN", "Infinity", "2e308"])
NESTING = st.integers(14, 1200).map(deep) | st.integers(14, 1200).map(deep_object)
SCALARS = (
    TEXTS
    | SURROGATES
    | st.integers()
    | BIG_INTS
    | st.floats()
    | st.booleans()
    | st.none()
    | OVERFLOWING.map(Raw)
)
HOSTILE = st.recursive(
    SCALARS | NESTING,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXTS, children, max_size=3),
    max_leaves=8,
)


def huge_embeddings(dim: int) -> st.SearchStrategy[list[float]]:
    """Embeddings of values so large (or small) that their squares overflow (underflow)."""
    big = st.floats(1e150, 1.7e308) | st.floats(-1.7e308, -1e150) | st.floats(1e-320, 1e-160)
    return st.lists(big, min_size=dim, max_size=dim)


def documents(dim: int) -> st.SearchStrategy[dict[str, Any]]:
    """A document of the wire schema: each field absent, plausible, or hostile; sometimes
    keys the schema does not know. Its id never collides with a good neighbour's."""
    fields = {
        "id": TEXTS | HOSTILE,
        "text": TEXTS | HOSTILE,
        "uri": st.sampled_from(["folder", "/etc/passwd", "../x.png", "http://example.com/a.png"])
        | TEXTS
        | HOSTILE,
        "blob": st.sampled_from(["data:image/png;base64,iVBORw0KGgo=", "data:,", "xyz"]) | HOSTILE,
        "tensor": st.lists(st.lists(st.lists(st.integers(-5, 300), max_size=3), max_size=3))
        | HOSTILE,
        "embedding": st.lists(st.floats(), max_size=dim) | huge_embeddings(dim) | HOSTILE,
        "tags": st.dictionaries(TEXTS, SCALARS | st.lists(SCALARS, max_size=3), max_size=4)
        | HOSTILE,
        "matches": st.lists(HOSTILE, max_size=2),
        "error": st.none() | TEXTS,
        "thumbnail": HOSTILE,
        "embedded_by": st.sampled_from(["clip-text:0123456789abcdef", "clip-vision:x", "clip-"])
        | TEXTS
        | HOSTILE,
        "towers": st.dictionaries(st.sampled_from(["clip-text", "clip-vision"]) | TEXTS, TEXTS)
        | HOSTILE,
    }
    assert set(fields) == set(SearchDoc.model_fields)  # every field of the wire schema
    known = st.fixed_dictionaries({}, optional=fields)
    unknown = st.dictionaries(TEXTS, HOSTILE, max_size=2)
    return (known | unknown).filter(lambda doc: not _names_good(doc.get("id")))


def _names_good(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(GOOD_PREFIX)


NUMBERS = (
    st.integers(-3, 2000) | BIG_INTS | st.floats() | OVERFLOWING.map(Raw) | TEXTS | st.booleans()
)
BOUNDS = st.fixed_dictionaries(
    {},
    optional={
        "$in": st.lists(SCALARS, max_size=3) | HOSTILE,
        **{op: NUMBERS | HOSTILE for op in ("$gt", "$gte", "$lt", "$lte")},
    },
)
PARAMETERS = st.fixed_dictionaries(
    {},
    optional={
        "limit": NUMBERS | HOSTILE,
        "ef": NUMBERS | HOSTILE,
        "filter": st.dictionaries(TEXTS, SCALARS | BOUNDS | HOSTILE, max_size=3) | HOSTILE,
        "ids": st.lists(TEXTS | HOSTILE, max_size=3) | HOSTILE,
        "thumbnails": st.booleans() | HOSTILE,
        "token": TEXTS | HOSTILE,
    },
).flatmap(
    lambda known: st.dictionaries(
        TEXTS.filter(lambda key: key not in EXECUTOR_NAMES), HOSTILE, max_size=2
    ).map(lambda extra: {**extra, **known})
)
