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
from docarray.base_doc.mixins.io import _type_to_protobuf
from docarray.proto import DictOfAnyProto, DocProto, NodeProto
from docarray.typing import ID, NdArray
from docarray.typing.proto_register import _PROTO_TYPE_NAME_TO_CLASS
from pydantic import Field

from finetune.images import has_image

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


# The plain values docarray 0.41 writes as one NodeProto field each (by exact type: `bool`
# before `int`, as docarray's own checks go), and the kinds it reads back as they are.
_PLAIN_KINDS = {str: "text", float: "float", int: "integer", bool: "boolean", bytes: "blob"}
_PLAIN_KIND_NAMES = frozenset(_PLAIN_KINDS.values())


def _to_node(value: Any) -> NodeProto:
    """`value` as docarray's `_type_to_protobuf` writes it, its type checks skipped for the
    common cases (plain values, ids, None, an empty dict)."""
    kind = _PLAIN_KINDS.get(type(value))
    if kind is not None:
        return NodeProto(**{kind: value})
    if type(value) is ID:
        return NodeProto(text=value, type=ID._proto_type_name)
    if value is None:
        return NodeProto()
    if type(value) is dict and not value:
        return NodeProto(dict=DictOfAnyProto())
    return _type_to_protobuf(value)


class FastProtobuf:
    """docarray's protobuf message for a document, written and read without docarray's
    per-field type dispatch (a mixin before `BaseDoc`).

    Every executor on a request's path reads and writes every document it gets, and so does
    the client. docarray 0.41 works out each field's type again for every value; here plain
    values, ids, None and empty dicts take a short path, and anything else (arrays, nested
    documents, dicts with content) goes through docarray's own per-field code. The messages
    are the same; the tests compare them. Measured side by side (`FastProtobuf` vs docarray):
    an image document read in 38 -> 15 us, an embedded one written in 37 -> 18 us, 10 matches
    written in 155 -> 70 us and read in 205 -> 72 us. Indexing through the Flow gained ~4%
    (the image encoder reads and writes every image document).
    """

    def to_protobuf(self) -> DocProto:
        try:
            return DocProto(data={name: _to_node(value) for name, value in self})
        except Exception:  # noqa: BLE001 - docarray's own path says which field is wrong
            return super().to_protobuf()

    @classmethod
    def from_protobuf(cls, pb_msg: DocProto) -> Any:
        known = cls._docarray_fields()
        extra = cls.model_config["_load_extra_fields_from_protobuf"]
        fields: dict[str, Any] = {}
        for name, node in pb_msg.data.items():
            if name not in known and not extra:
                continue  # as docarray does: a field this schema lacks is not read
            kind = node.WhichOneof("content")
            if kind is None:
                fields[name] = None
            elif node.WhichOneof("docarray_type") and node.type in _PROTO_TYPE_NAME_TO_CLASS:
                fields[name] = _PROTO_TYPE_NAME_TO_CLASS[node.type].from_protobuf(
                    getattr(node, kind)
                )  # an id, an array
            elif kind in _PLAIN_KIND_NAMES:
                fields[name] = getattr(node, kind)
            elif kind == "dict" and not node.dict.data:
                fields[name] = {}
            else:  # nested documents, lists, dicts with content: docarray's own code
                fields[name] = cls._get_content_from_node_proto(node, name)
        return cls(**fields)


class Match(FastProtobuf, BaseDoc):
    """One search hit: the stored fields of an indexed document and its cosine score."""

    score: float = 0.0
    uri: str | None = None
    text: str | None = None
    tags: dict[str, Any] = {}


class SearchDoc(FastProtobuf, BaseDoc):
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


def is_text_query(doc: SearchDoc) -> bool:
    """Whether a document carries text and no image (it then is the text encoder's)."""
    return doc.text is not None and not has_image(doc)
