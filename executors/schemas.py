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


# How docarray 0.41 writes a Match's fields (`Match.to_protobuf` writes the same).
_SCALAR_KINDS = {str: "text", float: "float", int: "integer", bool: "boolean"}
_SCALAR_KIND_NAMES = frozenset(_SCALAR_KINDS.values())
_MATCH_SCALARS = frozenset({"id", "score", "uri", "text"})
_EMPTY_DICT_NODE = NodeProto(dict=DictOfAnyProto())


def _scalar_node(value: str | float | None) -> NodeProto:
    if value is None:
        return NodeProto()
    kind = _SCALAR_KINDS.get(type(value))
    return NodeProto(**{kind: value}) if kind else _type_to_protobuf(value)


class Match(BaseDoc):
    """One search hit: the stored fields of an indexed document and its cosine score.

    Its protobuf form is docarray's own, written and read without docarray's per-field type
    dispatch: a search answer carries `limit` matches through the indexer, the gateway and the
    client, and docarray's generic path spends ~15 us per match writing and ~20 us reading
    (measured side by side, 10 matches: written in 156 -> 50 us, read in 205 -> 55 us). The
    tests check that the messages are identical.
    """

    score: float = 0.0
    uri: str | None = None
    text: str | None = None
    tags: dict[str, Any] = {}

    def to_protobuf(self) -> DocProto:
        if type(self) is not Match:  # a subclass may add fields: the general path knows them
            return super().to_protobuf()
        no_tags = isinstance(self.tags, dict) and not self.tags  # what most indexes store
        return DocProto(
            data={
                "id": NodeProto() if self.id is None else NodeProto(text=self.id, type="id"),
                "score": _scalar_node(self.score),
                "uri": _scalar_node(self.uri),
                "text": _scalar_node(self.text),
                "tags": _EMPTY_DICT_NODE if no_tags else _type_to_protobuf(self.tags),
            }
        )

    @classmethod
    def from_protobuf(cls, pb_msg: DocProto) -> "Match":
        fields: dict[str, Any] = {}
        for name, node in pb_msg.data.items():
            kind = node.WhichOneof("content")
            if kind is None:
                fields[name] = None
            elif name == "tags" and kind == "dict":
                fields[name] = (
                    cls._get_content_from_node_proto(node, name) if node.dict.data else {}
                )
            elif name in _MATCH_SCALARS and kind in _SCALAR_KIND_NAMES:
                fields[name] = getattr(node, kind)
            else:  # anything else (an extra field, another encoding): the general path
                return super().from_protobuf(pb_msg)
        return cls(**fields)


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
