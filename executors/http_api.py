"""The service's HTTP API: jina's convention (`POST /<endpoint>` with `{"data": [documents],
"parameters": {...}}`, answered `{"data": [...], "parameters": {...}}`), with its guarantees.

- A request is sent to the Flow whole, as one request, or refused whole: over
  `MAX_DOCS_PER_REQUEST` documents or `MAX_REQUEST_BYTES` of body it is a 413 naming the limit.
  (jina 3.34's own HTTP gateway cut requests into chunks of 100 and answered with the first.)
- A document that does not fit the wire schema (`tags` a list, `text` a number) gets its own
  error naming the field, and the documents beside it go through.
- A body that is not JSON, or holds NaN or Infinity (not JSON, though Python writes them), is
  a 400 naming where; never a 500.
- `Authorization: Bearer TOKEN` carries the write token (`search.access`) to the executors as
  `parameters.token`, and the token is never echoed back.

`http_app(send)` builds the FastAPI app around `send`, which carries one request through the
Flow: `executors.gateway` gives it jina's streamer; tests can give it anything.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from docarray import BaseDoc, DocList
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from client.wire import (
    DELETE,
    GET,
    HEALTH,
    INDEX,
    SEARCH_IMAGE,
    SEARCH_TEXT,
    STATUS,
    UPDATE,
    SearchDoc,
    StatusDoc,
    schema_error,
)
from search.access import TOKEN_PARAMETER
from search.limits import MAX_REQUEST_BYTES, request_error

# endpoint -> (its documents' schema, what it does: the API page at /docs shows it)
ENDPOINTS: dict[str, tuple[type[BaseDoc], str]] = {
    INDEX: (SearchDoc, "Store images (blob as a data: URI, or uri) or texts, with id, text, tags"),
    SEARCH_TEXT: (SearchDoc, "Text queries (or embeddings): parameters limit, ef, filter"),
    SEARCH_IMAGE: (SearchDoc, "Image queries (blob as a data: URI): parameters as /search"),
    GET: (SearchDoc, "Stored fields and embedding of ids"),
    UPDATE: (SearchDoc, "Change what each document names of its id (tags merged); the rest stays"),
    DELETE: (SearchDoc, "Delete ids (documents, or parameters.ids)"),
    STATUS: (StatusDoc, "The index's counts, parameters and tags"),
    HEALTH: (StatusDoc, "Every executor and shard answers: 200 when all did"),
}
# Bytes never sent back as JSON: images travel in, and thumbnails out as data: URIs in matches.
_BINARY_FIELDS = {"blob", "thumbnail", "tensor"}
# jina's names for the failures a request can meet in the Flow -> the HTTP status that says it.
_STATUS_OF_EXCEPTION = {"ShardsMissing": 503, "TowersMismatch": 503}


class Refused(Exception):
    """A request refused whole before it reaches the Flow: `status` and a message saying why
    and what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class FlowRequest:
    """What one HTTP request asks of the Flow."""

    endpoint: str
    docs: DocList
    parameters: dict[str, Any]


@dataclass
class FlowReply:
    """What the Flow answered: documents and parameters, or a failure (`error`, and the
    name of jina's exception and of the executor when it says them)."""

    docs: DocList | None = None
    parameters: dict[str, Any] | None = None
    error: str | None = None
    exception: str | None = None
    executor: str | None = None
    unreachable: bool = False


Send = Callable[[FlowRequest], Awaitable[FlowReply]]


def read_request(endpoint: str, body: bytes, authorization: str | None = None) -> FlowRequest:
    """The request a body asks for, or `Refused`. Documents that do not fit the schema get
    their error here and travel on (every executor leaves a document with an error alone)."""
    doc_type = ENDPOINTS[endpoint][0]
    payload = _json(body)
    if not isinstance(payload, dict):
        raise Refused(
            400,
            f'the body must be a JSON object {{"data": [...], "parameters": {{}}}}, '
            f"got {type(payload).__name__}",
        )
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise Refused(400, f"parameters must be a JSON object, got {type(parameters).__name__}")
    data = payload.get("data")
    raws = [] if data is None else data if isinstance(data, list) else [data]
    ids = parameters.get("ids") if endpoint == DELETE else None
    error = request_error(len(raws) + (len(ids) if isinstance(ids, list) else 0))
    if error:
        raise Refused(413, error)
    parameters = dict(parameters)
    token = _bearer(authorization)
    if token is not None:
        parameters[TOKEN_PARAMETER] = token
    docs = [_document(raw, doc_type, endpoint, n) for n, raw in enumerate(raws)]
    return FlowRequest(endpoint, DocList[doc_type](docs), parameters)


def reply_body(docs: DocList, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON answer: each document's fields (no bytes), and the parameters without the
    token."""
    out = []
    for doc in docs:
        exclude = _BINARY_FIELDS & set(type(doc).model_fields)
        out.append(json.loads(doc.model_dump_json(exclude=exclude, warnings=False)))
    kept = {k: v for k, v in (parameters or {}).items() if k != TOKEN_PARAMETER}
    return {"data": out, "parameters": kept}


def failure_status(reply: FlowReply) -> int:
    """The HTTP status of a request the Flow failed: 503 when part of it is down (a shard
    missing, an executor unreachable), else 500."""
    if reply.unreachable:
        return 503
    return _STATUS_OF_EXCEPTION.get(reply.exception or "", 500)


def http_app(send: Send, title: str = "CLIP search") -> FastAPI:
    """The HTTP API over `send`: one route per endpoint of `ENDPOINTS`."""
    app = FastAPI(
        title=title,
        description=(
            'POST /<endpoint> with {"data": [documents], "parameters": {...}}; each document '
            "comes back in order, with `error` set when it could not be processed. "
            "Write endpoints take `Authorization: Bearer TOKEN` when the service has one."
        ),
    )
    for endpoint, (_, summary) in ENDPOINTS.items():
        _add_route(app, endpoint, summary, send)
    return app


def _add_route(app: FastAPI, endpoint: str, summary: str, send: Send) -> None:
    async def route(request: Request) -> Response:
        try:
            body = await _read_body(request)
            flow_request = read_request(endpoint, body, request.headers.get("authorization"))
        except Refused as refused:
            return _error(refused.status, refused.message)
        reply = await send(flow_request)
        if reply.error is not None:
            return _error(failure_status(reply), reply.error, reply.executor)
        return JSONResponse(reply_body(reply.docs or [], reply.parameters))

    app.add_api_route(endpoint, route, methods=["POST"], summary=summary, name=endpoint)


async def _read_body(request: Request) -> bytes:
    """The body, or `Refused` (413) as soon as it is known to be over `MAX_REQUEST_BYTES`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise Refused(413, _too_large(int(declared)))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise Refused(413, _too_large(size, at_least=True))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, at_least: bool = False) -> str:
    return (
        f"the request body is {'over ' if at_least else ''}{size} bytes, more than the limit of "
        f"{MAX_REQUEST_BYTES} (MAX_REQUEST_BYTES); nothing in it was processed: send smaller "
        f"batches"
    )


def _error(status: int, message: str, executor: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if executor:
        body["executor"] = executor
    return JSONResponse(body, status_code=status)


class _NotJson(ValueError):
    pass


def _json(body: bytes) -> Any:
    """The parsed body; `Refused` (400) for what is not JSON, naming where NaN or Infinity
    stands."""

    def constant(name: str) -> float:
        raise _NotJson(name)

    try:
        return json.loads(body or b"{}", parse_constant=constant)
    except _NotJson as bad:
        raise Refused(
            400,
            f"{_where_constant(body, str(bad))} is {bad}: JSON numbers must "
            f"be finite (NaN and Infinity are not JSON)",
        ) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise Refused(400, f"the body is not JSON: {e}") from None


def _where_constant(body: bytes, name: str) -> str:
    """The path (`parameters.limit`) of the first NaN/Infinity in `body`."""
    marker = object()
    found = json.loads(body, parse_constant=lambda _: marker)

    def walk(value: Any, path: str) -> str | None:
        if value is marker:
            return path
        items = (
            value.items()
            if isinstance(value, dict)
            else (enumerate(value) if isinstance(value, list) else ())
        )
        for key, item in items:
            where = walk(item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}")
            if where:
                return where
        return None

    return (walk(found, "") or "").lstrip(".") or f"a value ({name})"


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _document(raw: Any, doc_type: type[BaseDoc], endpoint: str, position: int) -> BaseDoc:
    """`raw` as a document of `doc_type`; one that does not fit gets the error naming its
    field (its id kept when that is a string), or `Refused` (422) where the schema has no
    `error` to carry it."""
    if isinstance(raw, dict):
        fields = {k: v for k, v in raw.items() if not (k == "id" and v is None)}
        try:
            return doc_type.model_validate(fields)
        except ValidationError as e:
            error = schema_error(e)
    else:
        error = f"a document must be a JSON object, got {type(raw).__name__}"
    if "error" not in doc_type.model_fields:
        raise Refused(422, f"{endpoint}: document {position}: {error}")
    raw_id = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(raw_id, str) and raw_id:
        return doc_type(id=raw_id, error=error)
    return doc_type(error=error)
