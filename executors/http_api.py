"""The service's HTTP API: jina's convention (`POST /<endpoint>` with `{"data": [documents],
"parameters": {...}}`, answered `{"data": [...], "parameters": {...}}`), with its guarantees.

- A request is sent to the Flow whole, as one request, or refused whole: over
  `MAX_DOCS_PER_REQUEST` documents or `MAX_REQUEST_BYTES` of body it is a 413 naming the limit.
  (jina 3.34's own HTTP gateway cut requests into chunks of 100 and answered with the first.)
- A document that does not fit the wire schema (`tags` a list, `text` a number) gets its own
  error naming the field, and the documents beside it go through.
- A body that is not JSON, holds NaN or Infinity (not JSON, though Python writes them), is
  nested deeper than `MAX_JSON_DEPTH`, or has parameters the wire cannot carry (integers beyond
  `MAX_EXACT_INT`, lone surrogates) is a 400 naming where; never a 500. A document holding
  such an integer or text gets its own error instead, checked before anything else reads it.
- `Authorization: Bearer TOKEN` carries the write token (`search.access`) to the executors as
  `parameters.token`, and the token is never echoed back.
- `/openapi.json` describes every route: its request body and each status it answers, with
  the JSON error body `{"error": "..."}` (which 404 and 405 use too).

`http_app(send)` builds the FastAPI app around `send`, which carries one request through the
Flow: `executors.gateway` gives it jina's streamer; tests can give it anything.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from docarray import BaseDoc, DocList
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from client.wire import (
    DELETE,
    GET,
    HEALTH,
    INDEX,
    SEARCH_IMAGE,
    SEARCH_TEXT,
    STATUS,
    UPDATE,
    schema_error,
    wire_fault,
)
from client.wire_docs import SearchDoc, StatusDoc
from executors.http_schema import SCHEMAS, request_body, responses
from search.access import TOKEN_PARAMETER, without_token
from search.limits import MAX_JSON_DEPTH, MAX_REQUEST_BYTES, request_error

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


def read_request(
    endpoint: str,
    body: bytes,
    authorization: str | None = None,
    executors: Collection[str] = (),
) -> FlowRequest:
    """The request a body asks for, or `Refused`. Documents that do not fit the schema or the
    wire get their error here and travel on (every executor leaves a document with an error
    alone). `executors`: the Flow's executor names, which jina reads as per-executor
    parameters."""
    doc_type = ENDPOINTS[endpoint][0]
    payload = _json(body)
    if not isinstance(payload, dict):
        raise Refused(
            400,
            f'the body must be a JSON object {{"data": [...], "parameters": {{}}}}, '
            f"got {type(payload).__name__}",
        )
    # everything but the documents (which answer for themselves, below) is refused whole
    fault = wire_fault({k: v for k, v in payload.items() if k != "data"}, MAX_JSON_DEPTH)
    if fault is not None:
        raise Refused(400, fault.message())
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise Refused(400, f"parameters must be a JSON object, got {type(parameters).__name__}")
    for name in executors:  # jina merges them into that executor's parameters with **
        if name in parameters and not isinstance(parameters[name], dict):
            raise Refused(
                400,
                f"parameters.{name} must be a JSON object: it holds the parameters of the "
                f"Flow's executor {name}",
            )
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
    listed = isinstance(data, list)
    docs = [
        # the body is nesting level 1, its data level 2
        _document(raw, doc_type, endpoint, n, f"data[{n}]" if listed else "data", 2 + listed)
        for n, raw in enumerate(raws)
    ]
    return FlowRequest(endpoint, DocList[doc_type](docs), parameters)


def reply_body(docs: DocList, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON answer: each document's fields (no bytes), and the parameters without the
    token."""
    out = []
    for doc in docs:
        exclude = _BINARY_FIELDS & set(type(doc).model_fields)
        out.append(json.loads(doc.model_dump_json(exclude=exclude, warnings=False)))
    return {"data": out, "parameters": without_token(parameters)}


def failure_status(reply: FlowReply) -> int:
    """The HTTP status of a request the Flow failed: 503 when part of it is down (a shard
    missing, an executor unreachable), else 500."""
    if reply.unreachable:
        return 503
    return _STATUS_OF_EXCEPTION.get(reply.exception or "", 500)


def http_app(send: Send, title: str = "CLIP search", executors: Collection[str] = ()) -> FastAPI:
    """The HTTP API over `send`: one route per endpoint of `ENDPOINTS`, described in full at
    `/openapi.json`. `executors`: the Flow's executor names (see `read_request`)."""
    app = FastAPI(
        title=title,
        description=(
            'POST /<endpoint> with {"data": [documents], "parameters": {...}}; each document '
            "comes back in order, with `error` set when it could not be processed. "
            "Write endpoints take `Authorization: Bearer TOKEN` when the service has one. "
            'Every other status answers {"error": "..."}.'
        ),
    )
    for endpoint, (doc_type, summary) in ENDPOINTS.items():
        _add_route(app, endpoint, summary, doc_type is StatusDoc, send, tuple(executors))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        # FastAPI's own 404 and 405 in the service's error body
        return JSONResponse(
            {"error": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

    def openapi() -> dict[str, Any]:
        # FastAPI's schema of the routes, with the schemas their descriptions refer to
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            spec.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _add_route(
    app: FastAPI,
    endpoint: str,
    summary: str,
    status_endpoint: bool,
    send: Send,
    executors: tuple[str, ...],
) -> None:
    async def route(request: Request) -> Response:
        try:
            body = await _read_body(request)
            authorization = request.headers.get("authorization")
            flow_request = read_request(endpoint, body, authorization, executors)
        except Refused as refused:
            return _error(refused.status, refused.message)
        reply = await send(flow_request)
        if reply.error is not None:
            return _error(failure_status(reply), reply.error, reply.executor)
        return JSONResponse(reply_body(reply.docs or [], reply.parameters))

    app.add_api_route(
        endpoint,
        route,
        methods=["POST"],
        summary=summary,
        name=endpoint,
        operation_id=endpoint.strip("/"),
        responses=responses(status_endpoint),
        openapi_extra={"requestBody": request_body(status_endpoint)},
    )


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


def _json(body: bytes) -> Any:
    """The parsed body (NaN and Infinity as floats, which `wire_fault` refuses by name);
    `Refused` (400) for what is not JSON or too deep to parse."""
    try:
        return json.loads(body or b"{}")
    except RecursionError:  # json's C parser guards its stack; much deeper than the bound
        raise Refused(
            400, f"the body is nested deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)"
        ) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise Refused(400, f"the body is not JSON: {e}") from None


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _document(
    raw: Any, doc_type: type[BaseDoc], endpoint: str, position: int, where: str, level: int
) -> BaseDoc:
    """`raw` (at `where`, nesting `level` of the body) as a document of `doc_type`; one that
    does not fit the wire or the schema gets the error naming its field (its id kept when that
    is text), or `Refused` (422) where the schema has no `error` to carry it. What the wire
    cannot carry is found before anything else reads the document; nesting past the bound and
    NaN or Infinity refuse the whole body (400)."""
    fault = wire_fault(raw, MAX_JSON_DEPTH, level)
    if fault is not None and fault.whole:
        raise Refused(400, fault.message(where))
    if not isinstance(raw, dict):
        error = f"a document must be a JSON object, got {type(raw).__name__}"
    elif fault is not None:
        error = f"field {fault.message()}"
    else:
        fields = {k: v for k, v in raw.items() if not (k == "id" and v is None)}
        try:
            return doc_type.model_validate(fields)
        except ValidationError as e:
            error = schema_error(e)
    if "error" not in doc_type.model_fields:
        raise Refused(422, f"{endpoint}: document {position}: {error}")
    raw_id = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(raw_id, str) and raw_id and wire_fault(raw_id, MAX_JSON_DEPTH) is None:
        return doc_type(id=raw_id, error=error)
    return doc_type(error=error)
