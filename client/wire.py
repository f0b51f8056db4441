"""The service's wire format in plain Python: the endpoints, the limits of what travels, the
fields of the documents every request and answer carries, and the checks a document passes
before it is sent. The client owns it; the Flow's executors speak it.

The documents' fields are declared once, in `imagepairs.documents`; here they become plain
pydantic models (`SearchFields`, `MatchFields`, beside `StatusFields`): an HTTP client checks
documents against them without docarray, and `client.wire_docs` makes the docarray documents
that jina and gRPC carry from them.

One schema end to end keeps the Flow simple: the encoders fill `embedding`, the indexer stores
or searches, and a document that cannot be processed gets `error` set (and no embedding)
instead of failing the request, so the good documents beside it go through.
"""

# No `from __future__ import annotations` here: the docarray documents are made from these
# fields, and jina builds the gateway's schema from them at start-up with real (not string)
# annotations.
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import numpy as np
from pydantic import BaseModel, Field, GetCoreSchemaHandler, ValidationError, create_model
from pydantic_core import core_schema

from imagepairs.documents import Document, Match

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

# Integers travel as doubles (docarray's tags, protobuf's Struct for parameters): beyond this
# magnitude they would not arrive exactly. The service's MAX_EXACT_INT (search/limits.py, which
# the client may not import; a test checks they agree).
MAX_EXACT_INT = 2**53


# How deep a request's JSON may nest (MAX_JSON_DEPTH, likewise): deeper documents or
# parameters would be refused whole, or fail to decode inside the Flow over gRPC.
MAX_JSON_DEPTH = 16


class Array:
    """The type of a field holding an array. docarray's `NdArray` in the wire's documents
    (`client.wire_docs`); in the plain fields a numpy array, or (nested) lists or tuples of
    numbers, taken as given: the service reads them."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(_array)


def _array(value: Any) -> Any:
    if isinstance(value, list | tuple) or hasattr(value, "__array__"):
        return value
    raise ValueError(
        f"expected an array (a numpy array, or nested lists of numbers), got {type(value).__name__}"
    )


def replaced_type(annotation: Any, types: dict[Any, Any]) -> Any:
    """`annotation` with each type that is a key of `types` replaced by its value, also inside
    a union and as a list's item type (unless the list type itself is a key)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        return Union[tuple(replaced_type(arg, types) for arg in args)]  # noqa: UP007
    if origin is list and args[0] in types and annotation not in types:
        return list[types[args[0]]]
    return types.get(annotation, annotation)


def _fields_model(
    name: str, shape: type, nested: dict[type, type[BaseModel]] | None = None
) -> type[BaseModel]:
    """The pydantic model of a document of `imagepairs.documents` as it travels: its fields
    but `id` (docarray's documents bring their own), their types on the wire (an array an
    `Array`, a nested document its model in `nested`), defaults and descriptions, and its
    docstring."""
    wire_types = {np.ndarray: Array, **(nested or {})}
    hints = get_type_hints(shape)
    definitions: dict[str, Any] = {}
    for f in dataclasses.fields(shape):
        if f.name == "id":
            continue
        about = f.metadata.get("description")
        if f.default_factory is not dataclasses.MISSING:
            # A factory, not a default instance (an empty DocList in the docarray document):
            # pydantic deep-copies a mutable default for every new document, and a DocList
            # copies by pickling. The schema keeps the default (`[]`, `{}`): jina's gateway
            # rebuilds the model from it, and without one there the HTTP endpoint would
            # require the field in every request.
            info = Field(
                default_factory=f.default_factory,
                description=about,
                json_schema_extra={"default": f.default_factory()},
            )
        else:
            info = Field(default=f.default, description=about)
        definitions[f.name] = (replaced_type(hints[f.name], wire_types), info)
    return create_model(name, __module__=__name__, __doc__=shape.__doc__, **definitions)


MatchFields = _fields_model("MatchFields", Match)
SearchFields = _fields_model("SearchFields", Document, {Match: MatchFields})


class StatusFields(BaseModel):
    """Answer of `/status` (counts and index parameters) and, one per executor reached, of
    `/health` (`{"executor": runtime name, "shard": number or None}`)."""

    info: dict[str, Any] = {}


def schema_error(error: ValidationError) -> str:
    """The first fault of a document that does not fit its schema, naming the field:
    `field tags: Input should be a valid dictionary`."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "?"
    return f"field {field}: {first['msg']}"


WireDocument = TypeVar("WireDocument", bound=BaseModel)


class DocumentError(ValueError):
    """A document the client will not send; the message names it and its field."""


def checked_documents(
    endpoint: str, docs: list[dict[str, Any]], model: Callable[..., WireDocument], offset: int = 0
) -> list[WireDocument]:
    """`docs` as `model`s (the plain `SearchFields` for HTTP, the docarray `SearchDoc` for
    gRPC), checked before anything is sent: first what the wire cannot carry
    (`document_fault`), then the schema. A `DocumentError` names the first document that does
    not fit, by its position in the job (`offset` + index), and its field."""
    checked = []
    for i, doc in enumerate(docs):
        error = document_fault(doc)
        if error is None:
            try:
                checked.append(model(**doc))
            except ValidationError as e:
                error = schema_error(e)
        if error is not None:
            raise DocumentError(
                f"{endpoint} refused the request: document {offset + i}, {error} (checked "
                f"before sending)"
            )
    return checked


def document_fault(doc: dict[str, Any]) -> str | None:
    """Why a document of a request cannot travel (`wire_fault`), or None; checked before
    anything else reads it."""
    fault = wire_fault(doc, MAX_JSON_DEPTH, depth=3)  # body, data, document
    return None if fault is None else f"field {fault.message()}"


@dataclass(frozen=True)
class WireFault:
    """Something the wire cannot carry, found by `wire_fault`: where (`path`, from the value
    walked: `.tags.sku`, `[0]`), what (`problem`), and whether it refuses the whole request
    (`whole`: nesting past the bound, NaN or Infinity, which JSON itself does not allow) or
    only the document holding it."""

    path: str
    problem: str
    whole: bool = False

    def message(self, prefix: str = "") -> str:
        """`parameters.limit is NaN: ...`, with `prefix` naming the value walked."""
        return f"{(prefix + self.path).lstrip('.') or 'the value'} {self.problem}"


def wire_fault(value: Any, max_depth: int, depth: int = 1) -> WireFault | None:
    """The first thing in `value` (JSON-like, at nesting level `depth`) that the wire cannot
    carry, or None: lists and dicts nested deeper than `max_depth` levels, NaN or Infinity,
    integers beyond `MAX_EXACT_INT`, and text that is not Unicode (lone surrogates, which
    UTF-8 cannot encode). A fault refusing the whole request is reported before one that does
    not. Iterative, so that any nesting is walked safely; other types (bytes, arrays) pass."""
    first: WireFault | None = None
    stack: list[tuple[Any, tuple[str, ...], int]] = [(value, (), depth)]
    while stack:
        item, where, level = stack.pop()
        fault = None
        if isinstance(item, dict | list | tuple):
            if level > max_depth:
                fault = WireFault(
                    "".join(where),
                    f"is nested deeper than {max_depth} levels (MAX_JSON_DEPTH)",
                    whole=True,
                )
            elif isinstance(item, dict):
                entries = [(f".{_shown_key(key)}", key, child) for key, child in item.items()]
                bad = next((p for p, key, _ in entries if not _is_text(str(key))), None)
                if bad is not None:
                    fault = WireFault("".join((*where, bad)), _NOT_TEXT)
                stack.extend((child, (*where, p), level + 1) for p, _, child in reversed(entries))
            elif not _plain_numbers(item):
                stack.extend(
                    (child, (*where, f"[{i}]"), level + 1)
                    for i, child in reversed(list(enumerate(item)))
                )
        else:
            fault = _scalar_fault(item, "".join(where))
        if fault is not None and fault.whole:
            return fault
        first = first or fault
    return first


_NOT_TEXT = "is not valid Unicode text: it holds a lone surrogate (such as JSON's \\ud800)"


def _scalar_fault(value: Any, path: str) -> WireFault | None:
    if isinstance(value, str):
        return None if _is_text(value) else WireFault(path, _NOT_TEXT)
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and abs(value) > MAX_EXACT_INT:
        bits = value.bit_length()  # str() of a huge int is slow, and refused past 4,300 digits
        what = f"the integer {value}" if bits < 200 else f"an integer of {bits} bits"
        return WireFault(
            path,
            f"is {what}, beyond +-{MAX_EXACT_INT} (MAX_EXACT_INT): numbers travel as doubles, "
            f"so it would not arrive exactly; send it as a string",
        )
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return WireFault(path, f"is NaN: {_FINITE}", whole=True)
        sign = "" if value > 0 else "-"
        overflow = "; a number beyond +-1.8e308 reads as Infinity"
        return WireFault(path, f"is {sign}Infinity: {_FINITE[:-1]}{overflow})", whole=True)
    return None


_FINITE = "JSON numbers must be finite (NaN and Infinity are not JSON)"


def _is_text(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown_key(key: Any) -> str:
    """A dict key as a path names it (a lone surrogate escaped, so the message can travel)."""
    return str(key).encode("utf-8", "backslashreplace").decode("utf-8")


def _plain_numbers(items: list | tuple) -> bool:
    """Whether `items` holds only finite ints and floats within +-`MAX_EXACT_INT` (an
    embedding): checked in C, where walking each number would cost a Python step."""
    if not items or not set(map(type, items)) <= {int, float}:
        return False
    try:
        return (
            math.isfinite(sum(items))
            and -MAX_EXACT_INT <= min(items) <= max(items) <= MAX_EXACT_INT
        )
    except OverflowError:  # an int beyond float64 beside floats
        return False
