"""The search page: one HTML page (client/static/) and the read-only JSON endpoints it calls.

    python -m client ui --host grpc://127.0.0.1:51000        # http://127.0.0.1:51002

The app talks to the Flow through `SearchClient`; it can search and read the index's status,
nothing else (no indexing, no deleting). Endpoints:

    GET  /                  the page
    GET  /api/status        {"count": n, "tags": {key: {"values": [...]} | {"min", "max"}},
                             "warning": why results are missing, or null}
    POST /api/search        {"text": ... | "like": id, "limit": 10, "filter": {...}} -> hits
    POST /api/search_image  an image (raw body or multipart field `file`); query string
                            `limit`, `filter` (JSON) -> hits

Hits are `{"hits": [match, ...]}`, each a search match's fields but its uri (`id`, `score`,
`text`, `tags`, `thumbnail`). Errors are `{"error": message}`: 400 for a bad query (filter,
image, limit), 404 for an unknown id, 413 for an upload over `MAX_UPLOAD_BYTES`, 503 when the
Flow cannot be reached, 502 when it failed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from client.api import DEFAULT_HOST, ClientError, Hit, SearchClient, ServiceUnreachable

STATIC = Path(__file__).resolve().with_name("static")
DEFAULT_UI_HOST = "127.0.0.1"
DEFAULT_UI_PORT = 51002
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_LIMIT = 100
# A page waits on the Flow; a hung Flow should become a message, not a spinner for minutes.
UI_TIMEOUT_S = 30.0
RANGE_OPS = ("$gt", "$gte", "$lt", "$lte")
START_HINT = "start it with `make serve` (or `jina flow --uses flow.yml`), then reload this page"
EMPTY_HINT = "nothing indexed yet: python -m client index FOLDER"


def shards_warning(info: dict[str, Any]) -> str | None:
    """What the page says when index shards did not answer the status request."""
    missing = int(info.get("missing_shards") or 0)
    if not missing:
        return None
    total = missing + len(info.get("shards") or [])
    return (
        f"{missing} of {total} index shards are not answering: searches fail until they are "
        f"back (python -m client health says which)"
    )


# Everything the page loads comes from this app; thumbnails arrive as data: URIs.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class QueryError(ValueError):
    """A query the page sent cannot be run; the message says why (HTTP 400)."""


class TooLarge(ValueError):
    """An upload over MAX_UPLOAD_BYTES (HTTP 413)."""


class SearchQuery(BaseModel):
    text: str | None = None
    like: str | None = None
    limit: int = 10
    filter: dict[str, Any] | None = None


def create_app(client: str | Callable[[], SearchClient] = DEFAULT_HOST) -> FastAPI:
    """The page's app, searching the Flow at `client` (a host such as grpc://127.0.0.1:51000,
    or a function that returns a `SearchClient`-like object, called once on first use)."""
    host = client if isinstance(client, str) else None
    factory = (lambda: SearchClient(host, timeout=UI_TIMEOUT_S)) if host else client
    holder: dict[str, Any] = {}
    # One client, and one call at a time on it: a plain requests session is not thread-safe,
    # and the page sends one query at a time anyway.
    lock = threading.Lock()

    def call(method: str, **kwargs: Any) -> Any:
        with lock:
            if "client" not in holder:
                holder["client"] = factory()
            return getattr(holder["client"], method)(**kwargs)

    app = FastAPI(title="Image search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.search_host = host or getattr(factory, "host", None)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable) -> Any:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return _error(400, f"bad request: {problems}")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/status")
    def status() -> JSONResponse:
        try:
            info = call("status")
        except ClientError as e:
            return _client_error(e, app.state.search_host)
        tags = info.get("tags")
        return JSONResponse(
            {
                "count": int(info.get("count") or 0),
                "tags": tags if isinstance(tags, dict) else {},
                "empty_hint": EMPTY_HINT,
                "warning": shards_warning(info),
            }
        )

    @app.post("/api/search")
    def search(query: SearchQuery) -> JSONResponse:
        try:
            text = query.text.strip() if query.text is not None else None
            if (not text) == (query.like is None):
                raise QueryError("search with a text or a result's id (like), one of them")
            kwargs = {"text": text} if text else {"like": query.like}
            return _search(call, query.limit, query.filter, kwargs, app.state.search_host)
        except QueryError as e:
            return _error(400, str(e))

    @app.post("/api/search_image")
    async def search_image(request: Request) -> JSONResponse:
        try:
            data = await _upload(request)
            _check_image(data)
            limit = _int(request.query_params.get("limit", "10"), "limit")
            filter_ = _json_filter(request.query_params.get("filter"))
        except TooLarge as e:
            return _error(413, str(e))
        except QueryError as e:
            return _error(400, str(e))
        # the client blocks on the Flow: off the event loop, like the plain endpoints
        return await run_in_threadpool(
            _search, call, limit, filter_, {"image": data}, app.state.search_host
        )

    return app


def serve(
    host: str = DEFAULT_HOST, ui_host: str = DEFAULT_UI_HOST, ui_port: int = DEFAULT_UI_PORT
) -> None:
    """Serve the page on http://ui_host:ui_port until interrupted (Ctrl-C)."""
    import uvicorn

    print(f"search page: http://{ui_host}:{ui_port}  (searching {host})", flush=True)
    uvicorn.run(create_app(host), host=ui_host, port=ui_port, log_level="warning")


def check_filter(filter_: Any) -> dict[str, Any] | None:
    """`filter_` if it is in the filter language (see README), None if empty; else QueryError.

    Checked here so that a malformed filter is a clear 400 whatever the service makes of it.
    """
    if filter_ is None or filter_ == {}:
        return None
    if not isinstance(filter_, dict):
        raise QueryError('filter: a JSON object of tag conditions, e.g. {"colour": "red"}')
    for key, cond in filter_.items():
        if _scalar(cond):
            continue
        if not isinstance(cond, dict) or not cond:
            raise QueryError(f"filter {key!r}: a value, or an object of $in, $gt, $gte, $lt, $lte")
        for op, value in cond.items():
            if op == "$in":
                if not isinstance(value, list) or not value or not all(map(_scalar, value)):
                    raise QueryError(f"filter {key!r}: $in takes a non-empty list of values")
            elif op in RANGE_OPS:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise QueryError(f"filter {key!r}: {op} takes a number, got {value!r}")
            else:
                raise QueryError(
                    f"filter {key!r}: unknown operator {op!r} (use $in, $gt, $gte, $lt, $lte)"
                )
    return filter_


def _search(
    call: Callable[..., Any],
    limit: int,
    filter_: Any,
    query: dict[str, Any],
    search_host: str | None,
) -> JSONResponse:
    try:
        if not 1 <= limit <= MAX_LIMIT:
            raise QueryError(f"limit: between 1 and {MAX_LIMIT}, got {limit}")
        hits = call("search", limit=limit, filter=check_filter(filter_), thumbnails=True, **query)
    except QueryError as e:
        return _error(400, str(e))
    except ClientError as e:
        return _client_error(e, search_host)
    return JSONResponse({"hits": [_hit(h) for h in hits]})


def _hit(hit: Hit) -> dict[str, Any]:
    # every field of the match but its uri: where the service keeps its files is none of the
    # page's business
    return {k: v for k, v in dataclasses.asdict(hit).items() if k != "uri"}


def _client_error(error: ClientError, search_host: str | None) -> JSONResponse:
    cause = error.__cause__
    message = str(error)
    if (
        isinstance(error, ServiceUnreachable)
        or isinstance(cause, requests.ConnectionError)
        or "cannot talk to the search service" in message
    ):
        where = f" at {search_host}" if search_host else ""
        return _error(503, f"the search Flow{where} is unreachable: {START_HINT}")
    if message.endswith(": unknown id"):
        return _error(404, f"{message} (was it deleted? search again)")
    # The service's own verdict on the query (e.g. a filter it cannot apply): the user's to fix.
    if message.startswith("search failed:") or "filter" in message:
        return _error(400, message)
    return _error(502, message)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _upload(request: Request) -> bytes:
    """The uploaded file's bytes: a multipart field `file` or the raw body, bounded."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES + 64 * 1024:
        raise TooLarge(_too_large())
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4, max_part_size=MAX_UPLOAD_BYTES)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise QueryError("upload the image as the form field `file`")
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
    else:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                raise TooLarge(_too_large())
            chunks.append(chunk)
        data = b"".join(chunks)
    if len(data) > MAX_UPLOAD_BYTES:
        raise TooLarge(_too_large())
    if not data:
        raise QueryError("no image: choose or drop an image file")
    return data


def _too_large() -> str:
    return f"image too large: at most {MAX_UPLOAD_BYTES // (1024 * 1024)} MB"


def _check_image(data: bytes) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise QueryError(
            "not an image this service can read (use a JPEG, PNG, GIF, WebP, ... file)"
        ) from e
    except Image.DecompressionBombError as e:
        raise QueryError(f"image refused: {e}") from e


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise QueryError(f"{name}: a whole number, got {value!r}") from None


def _json_filter(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise QueryError(f"filter: not valid JSON ({e.msg})") from None


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)
