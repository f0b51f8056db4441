"""The HTTP API's OpenAPI description: each route's request body and every status it answers,
with JSON Schemas of the documents, parameters, answers and the error body.

The schemas describe the JSON form of the documents (`imagepairs.documents`, whose fields
declare it: bytes travel as `data:` URIs, arrays as (nested) lists), not the pydantic models'
schema, which says what Python accepts rather than what travels as JSON. `executors.http_api`
puts them in `/openapi.json`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from imagepairs.documents import Document, Match
from search.limits import (
    MAX_DOCS_PER_REQUEST,
    MAX_EXACT_INT,
    MAX_ID_LENGTH,
    MAX_TAG_KEY_CHARS,
    MAX_TAGS,
)

_REF = "#/components/schemas/"
_SCALAR = {"type": ["string", "number", "boolean", "null"]}
_TEXT = {"type": ["string", "null"]}
_TAGS = {  # the limits on tags, beside their declaration
    "maxProperties": MAX_TAGS,
    "propertyNames": {"maxLength": MAX_TAG_KEY_CHARS},
    "additionalProperties": {"anyOf": [_SCALAR, {"type": "array", "items": _SCALAR}]},
}
_NUMBER_BOUND = {"type": "number"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _listed(item: str, description: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(item), "description": description}


def _properties(shape: type) -> dict[str, dict[str, Any]]:
    """The JSON Schema of each field of a document of `imagepairs.documents` as it travels,
    with its description, from the field's declaration (`id` apart)."""
    return {
        f.name: {**f.metadata["json"], "description": f.metadata["description"]}
        for f in dataclasses.fields(shape)
        if f.name != "id"
    }


_DOCUMENT = _properties(Document)
_DOCUMENT["tags"] = {**_DOCUMENT["tags"], **_TAGS}
# What answers leave out: the images a request carried, and the thumbnails (a search's
# matches carry theirs as data: URIs).
_NOT_ANSWERED = ("blob", "tensor", "thumbnail")

SCHEMAS: dict[str, dict[str, Any]] = {
    "Document": {
        "type": "object",
        "description": "An image (blob, tensor or uri), a text, or an embedding, with its id",
        "properties": {
            "id": {
                "type": ["string", "null"],
                "maxLength": MAX_ID_LENGTH,
                "description": "stable id (re-indexing it replaces the document); given one when "
                "absent",
            },
            **_DOCUMENT,
        },
    },
    "StatusDocument": {
        "type": "object",
        "properties": {"id": {"type": "string"}, "info": {"type": "object"}},
    },
    "Parameters": {
        "type": "object",
        "description": "what the endpoint takes; other keys travel to the executors untouched",
        "properties": {
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_EXACT_INT, "default": 10},
            "ef": {"type": "integer", "minimum": 1, "maximum": MAX_EXACT_INT},
            "filter": {
                "type": "object",
                "description": "tag: value, or tag: {$in: [...]} or {$gt|$gte|$lt|$lte: number}",
                "additionalProperties": {
                    "anyOf": [
                        {"type": ["string", "number", "boolean"]},
                        {
                            "type": "object",
                            "properties": {
                                "$in": {
                                    "type": "array",
                                    "items": {"type": ["string", "number", "boolean"]},
                                },
                                "$gt": _NUMBER_BOUND,
                                "$gte": _NUMBER_BOUND,
                                "$lt": _NUMBER_BOUND,
                                "$lte": _NUMBER_BOUND,
                            },
                            "additionalProperties": False,
                        },
                    ]
                },
            },
            "thumbnails": {"type": "boolean"},
            "ids": {"type": "array", "items": {"type": "string"}, "description": "/delete"},
            "token": {"type": "string", "description": "the write token, if not sent as Bearer"},
        },
    },
    "Request": {
        "type": "object",
        "properties": {
            "data": {**_listed("Document", "the documents"), "maxItems": MAX_DOCS_PER_REQUEST},
            "parameters": _ref("Parameters"),
        },
    },
    "StatusRequest": {
        "type": "object",
        "properties": {
            "data": _listed("StatusDocument", "ignored by /status; /health adds to it"),
            "parameters": {"type": "object"},
        },
    },
    "Match": {
        "type": "object",
        "required": ["id", "score"],
        "properties": {"id": {"type": "string"}, **_properties(Match)},
    },
    "Answer": {
        "type": "object",
        "description": "One sent document, in order: `error` says why it was not processed",
        "required": ["id", "error"],
        "properties": {
            "id": {"type": "string"},
            **{k: v for k, v in _DOCUMENT.items() if k not in _NOT_ANSWERED},
        },
    },
    "StatusAnswer": {
        "type": "object",
        "required": ["id", "info"],
        "properties": {"id": {"type": "string"}, "info": {"type": "object"}},
    },
    "Reply": {
        "type": "object",
        "required": ["data", "parameters"],
        "properties": {"data": _listed("Answer", "one per document sent"), "parameters": {}},
    },
    "StatusReply": {
        "type": "object",
        "required": ["data", "parameters"],
        "properties": {"data": _listed("StatusAnswer", ""), "parameters": {}},
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "why, and what to do"},
            "executor": {"type": "string", "description": "the executor that failed, if known"},
        },
        "additionalProperties": False,
    },
}

_REFUSED = {
    400: "refused whole: the body is not JSON, holds NaN or Infinity, is nested deeper than "
    "MAX_JSON_DEPTH, or has parameters that cannot travel (integers beyond MAX_EXACT_INT, "
    "lone surrogates, a parameter named after an executor that is not an object)",
    413: "refused whole: more than MAX_DOCS_PER_REQUEST documents or MAX_REQUEST_BYTES of body",
    500: "the Flow failed the request (the Flow's log says more)",
    503: "part of the Flow is down: an executor or an index shard, named",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def request_body(status_endpoint: bool) -> dict[str, Any]:
    """The `requestBody` of a route (`status_endpoint`: /status and /health)."""
    schema = _ref("StatusRequest" if status_endpoint else "Request")
    return {"required": False, **_json(schema, "jina's convention: data and parameters")}


def responses(status_endpoint: bool) -> dict[int, dict[str, Any]]:
    """Every status a route answers, each with its JSON body."""
    reply = "StatusReply" if status_endpoint else "Reply"
    out = {200: _json(_ref(reply), "every document's outcome, in order")}
    out.update({code: _json(_ref("Error"), text) for code, text in _REFUSED.items()})
    if status_endpoint:  # their documents have no `error` to carry a fault
        out[422] = _json(_ref("Error"), "a document does not fit the StatusDocument schema")
    return dict(sorted(out.items()))
