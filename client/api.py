"""Python API of the search service: index, search, delete and status, over gRPC or HTTP.

    from client.api import SearchClient, images_to_index
    client = SearchClient("grpc://127.0.0.1:51000")        # or "http://127.0.0.1:51001"
    client.index(images_to_index("photos/"), on_batch=print)
    for hit in client.search("a red dress", limit=5):
        print(hit.score, hit.uri)

gRPC speaks jina's protocol on one kept-open channel (`client.grpc_transport`); indexing keeps
a few batches in flight, so the Flow's executors work on consecutive batches at the same time.
HTTP posts jina's JSON convention, `POST /<endpoint>` with `{"data": [...], "parameters":
{...}}`, on a kept-alive session. JSON has no bytes, so over HTTP an image travels as a `data:`
URI in `blob`, which the image encoder accepts. Text queries go to `/search`, image queries to
`/search_by_image` (each passes only its own encoder).

The gRPC module, and with it jina and docarray, is imported on the first gRPC request only: an
HTTP client checks its documents against the plain fields of `client.wire` and runs without
them (the base install; the `grpc` extra adds gRPC).
"""

from __future__ import annotations

import base64
import mimetypes
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import requests

from client.wire import (
    DELETE,
    GET,
    HEALTH,
    INDEX,
    MAX_JSON_DEPTH,
    SEARCH_IMAGE,
    SEARCH_TEXT,
    STATUS,
    UPDATE,
    DocumentError,
    SearchFields,
    checked_documents,
    document_fault,
    wire_fault,
)
from imagepairs.batching import batched
from imagepairs.documents import STORED_FIELDS, Document, Match, from_plain
from imagepairs.images import is_image_path
from imagepairs.pairs import load_pairs

if TYPE_CHECKING:
    from client.grpc_transport import GrpcTransport

DEFAULT_HOST = "grpc://127.0.0.1:51000"
DEFAULT_TIMEOUT_S = 300.0
# Requests the gRPC client may have in flight: enough to keep every executor busy, few enough
# that image bytes read ahead stay bounded (IN_FLIGHT x batch size images).
IN_FLIGHT = 4
# What the service takes in one request (MAX_DOCS_PER_REQUEST and MAX_REQUEST_BYTES in
# search/limits.py, which the client may not import; a test checks they agree): more documents
# or bytes are refused whole, so the client cuts its batches to fit.
MAX_DOCS = 512
MAX_REQUEST_BYTES = 64 * 1024 * 1024
# Image bytes per request: what fits in MAX_REQUEST_BYTES as base64 (HTTP's data: URIs), with
# room for the rest of the documents.
_IMAGE_BYTES_PER_REQUEST = MAX_REQUEST_BYTES // 2
# The endpoints that carry the token (reads stay open).
WRITE_ENDPOINTS = (INDEX, UPDATE, DELETE)
# What the gRPC side imports (the `grpc` extra): a missing one is a ClientError saying so.
_GRPC_PACKAGES = ("jina", "docarray", "grpc")


class ClientError(RuntimeError):
    """The service could not be reached or refused a whole request; the message says why."""


class ServiceUnreachable(ClientError):
    """Nothing answered at the service's address (as opposed to a failed request)."""


@dataclass
class Health:
    """What a `/health` request found: `healthy` when every executor and shard it must pass
    answered; `executors` lists who did (runtime name and shard), `error` says what failed."""

    healthy: bool
    executors: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


# One search result: `imagepairs.documents.Match` (id, score, and the stored fields it has).
Hit = Match


@dataclass
class Outcome:
    """What the service said about one document sent to it."""

    id: str
    error: str | None = None


@dataclass
class IndexItem:
    """One image to index: its stable id, file, caption (if any) and tags to filter on."""

    id: str
    path: str
    caption: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)


def images_to_index(path: str | os.PathLike) -> list[IndexItem]:
    """The images under a folder (recursively), or those a data file names, with stable ids.

    Ids are the image paths relative to `path` (a folder) or to the data file's folder, so
    indexing the same source again replaces documents instead of adding copies, and a broken
    run can simply be repeated. A data file is any format the trainer reads
    (`imagepairs.pairs.load_pairs`); an image's first caption becomes its display text, and a
    CSV's extra columns its tags (`price` 49.5 as the number 49.5).
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    if source.is_dir():
        base = source.resolve()
        files = sorted(p for p in base.rglob("*") if p.is_file() and is_image_path(p.name))
        return [IndexItem(_stable_id(p, base), str(p)) for p in files]
    pairs = load_pairs(source, check_images=False).pairs
    base = source.resolve().parent
    first: dict[str, Any] = {}
    for pair in pairs:
        first.setdefault(pair.image, pair)
    return [
        IndexItem(_stable_id(Path(img), base), img, pair.caption, dict(pair.tags))
        for img, pair in first.items()
    ]


def _stable_id(image: Path, base: Path) -> str:
    return Path(os.path.relpath(image.resolve(), base)).as_posix()


class SearchClient:
    """A connection to the search Flow's gateway: `grpc://HOST:PORT` or `http(s)://HOST:PORT`."""

    def __init__(
        self, host: str = DEFAULT_HOST, timeout: float = DEFAULT_TIMEOUT_S, token: str | None = None
    ):
        """`token`: what the service's write endpoints require (its API_TOKEN), sent with
        /index, /update and /delete only: over HTTP as `Authorization: Bearer`, over gRPC as
        `parameters["token"]`; default: $SEARCH_TOKEN."""
        self.token = token if token is not None else os.environ.get("SEARCH_TOKEN") or None
        if "://" not in host:
            host = f"grpc://{host}"
        parts = urlsplit(host)
        if parts.scheme not in ("grpc", "grpcs", "http", "https") or not parts.hostname:
            raise ValueError(
                f"host must look like grpc://127.0.0.1:51000 or http://127.0.0.1:51001, "
                f"got {host!r}"
            )
        self.host = host
        self.protocol = "http" if parts.scheme.startswith("http") else "grpc"
        self.timeout = timeout
        self._target = (
            f"{parts.hostname}:{parts.port or (443 if parts.scheme.endswith('s') else 80)}"
        )
        self._tls = parts.scheme in ("grpcs", "https")
        self._grpc: GrpcTransport | None = None  # opened on first use
        self._http = None  # requests.Session, likewise

    # --- the four commands ----------------------------------------------------------------

    def index(
        self,
        items: Iterable[IndexItem],
        batch_size: int = 32,
        on_batch: Callable[[list[Outcome]], None] | None = None,
    ) -> list[Outcome]:
        """Index images; returns one outcome per item (error None when it was stored).

        `on_batch` is called as each batch is acknowledged: everything acknowledged is
        durably stored, whatever happens afterwards.
        """
        outcomes: list[Outcome] = []

        def done(batch: list[Outcome]) -> None:
            outcomes.extend(batch)
            if on_batch:
                on_batch(batch)

        batches = _request_batches(self._index_docs(items, done), batch_size)
        if self.protocol == "grpc":
            grpc = _grpc_side()
            with self._grpc_errors():
                self._transport().pipeline(
                    INDEX,
                    grpc.doc_lists(INDEX, batches),
                    lambda answer: done([_outcome(grpc.plain_doc(d)) for d in answer]),
                    in_flight=IN_FLIGHT,
                    timeout=self.timeout,
                    parameters=self._with_token(INDEX, None),
                )
        else:
            for batch in batches:
                done([_outcome(d) for d in self.post(INDEX, batch)])
        return outcomes

    def search(
        self,
        text: str | None = None,
        image: str | os.PathLike | bytes | None = None,
        like: str | None = None,
        limit: int = 10,
        filter: dict[str, Any] | None = None,
        thumbnails: bool = False,
    ) -> list[Hit]:
        """The `limit` best matches of a text, an image (a file path or bytes), or the indexed
        document `like` ("more like this": its stored embedding, itself left out).

        `filter` narrows the results by tags (see the README's filter language);
        `thumbnails` returns each hit's thumbnail as a data: URI.
        """
        if sum(q is not None for q in (text, image, like)) != 1:
            raise ValueError("search needs one of: a text, an image, or an id to match (like)")
        parameters: dict[str, Any] = {"limit": int(limit) + (like is not None)}
        if filter:
            parameters["filter"] = filter
        if thumbnails:
            parameters["thumbnails"] = True
        endpoint, doc = SEARCH_TEXT, {"text": text}
        if image is not None:
            data = image if isinstance(image, bytes) else Path(image).read_bytes()
            endpoint, doc = SEARCH_IMAGE, {"blob": data}
        elif like is not None:
            [stored] = self.post(GET, [{"id": like}])
            if stored.get("error"):
                raise ClientError(f"{like}: {stored['error']}")
            doc = {"embedding": stored["embedding"]}
        [answer] = self.post(endpoint, [doc], parameters)
        if answer.get("error"):
            raise ClientError(f"search failed: {answer['error']}")
        hits = [from_plain(Match, m) for m in answer.get("matches") or [] if m["id"] != like]
        return hits[:limit]

    def get(self, ids: Iterable[str], embeddings: bool = False) -> list[Document]:
        """The stored fields (`STORED_FIELDS`: text, uri, tags, embedded_by) of each id, in
        order; an unknown id comes back with its error. `embeddings`: include each stored
        (normalised) embedding, as a float32 array."""
        stored = []
        for batch in batched(({"id": str(i)} for i in ids), MAX_DOCS):
            for doc in self.post(GET, batch):
                vector = doc.get("embedding") if embeddings else None
                plain = {k: doc.get(k) for k in ("id", "error", *STORED_FIELDS)}
                found = from_plain(Document, plain)
                found.id = found.id or ""
                found.embedding = None if vector is None else np.asarray(vector, np.float32)
                stored.append(found)
        return stored

    def update(
        self, changes: Iterable[dict[str, Any]], replace_tags: bool = False
    ) -> list[Outcome]:
        """Change what each dict names of the stored document with its `id`, and nothing else:

        - `tags`: merged into the stored tags; a key set to None removes it (with
          `replace_tags`, they replace the stored tags whole);
        - `text`: the new caption (an image keeps its image embedding) or, for a text
          document, its new text (embedded again);
        - `image` (a file path or bytes): a new image, embedded again;
        - `uri`, `embedding`: replaced.

        One outcome per dict, in order (`unknown id` when nothing has that id)."""
        docs = [_update_doc(change) for change in changes]
        parameters = {"replace_tags": True} if replace_tags else None
        return [
            _outcome(d)
            for batch in _request_batches(docs, MAX_DOCS)
            for d in self.post(UPDATE, batch, parameters)
        ]

    def delete(self, ids: Iterable[str]) -> list[Outcome]:
        """Delete documents by id; unknown ids come back with error `unknown id`."""
        return [
            _outcome(d)
            for batch in batched(({"id": str(i)} for i in ids), MAX_DOCS)
            for d in self.post(DELETE, batch)
        ]

    def status(self) -> dict[str, Any]:
        """The index's counts and parameters."""
        answers = self.post(STATUS, [])
        return answers[0].get("info", {}) if answers else {}

    def health(self) -> Health:
        """Whether every executor of the Flow (one replica of each, every index shard) answers.
        Unhealthy when one is down or a shard is missing; raises `ServiceUnreachable` when
        nothing answers at the address."""
        try:
            answers = self.post(HEALTH, [])
        except ServiceUnreachable:
            raise
        except ClientError as e:
            return Health(False, error=str(e))
        return Health(True, [a.get("info", {}) for a in answers])

    # --- transport ------------------------------------------------------------------------

    def post(
        self, endpoint: str, docs: list[dict[str, Any]], parameters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """One request; documents in and out as plain dicts (`SearchFields`). The token,
        if any, goes with the write endpoints."""
        parameters = self._with_token(endpoint, parameters)
        fault = wire_fault(parameters or {}, MAX_JSON_DEPTH, depth=2)  # the body is level 1
        if fault is not None:
            raise ClientError(
                f"{endpoint} refused the request: {fault.message('parameters')} (checked "
                f"before sending)"
            )
        if self.protocol == "http":
            return self._http_post(endpoint, docs, parameters)
        grpc = _grpc_side()
        with self._grpc_errors():
            result = self._transport().post(
                endpoint,
                grpc.doc_list(endpoint, docs),
                parameters=parameters,
                timeout=self.timeout,
                return_type=grpc.reply_type(endpoint),
            )
            return [grpc.plain_doc(d) for d in result]

    def close(self) -> None:
        """Close the connections (they are reopened on the next call)."""
        if self._grpc is not None:
            self._grpc.close()
            self._grpc = None
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _index_docs(self, items: Iterable[IndexItem], done: Callable) -> Iterator[dict]:
        """The documents to send, read lazily; unreadable files are reported, not sent."""
        for item in items:
            try:
                size = Path(item.path).stat().st_size
                if size > _IMAGE_BYTES_PER_REQUEST:
                    done([Outcome(item.id, _too_big(item.path, size))])
                    continue
                data = Path(item.path).read_bytes()
            except OSError as e:
                done([Outcome(item.id, f"{item.path}: cannot read ({e.strerror})")])
                continue
            doc = {
                "id": item.id,
                "blob": data,
                "uri": item.path,
                "text": item.caption,
                "tags": item.tags,
            }
            error = document_fault(doc)
            if error is not None:  # this item's error, not the job's
                done([Outcome(item.id, error)])
                continue
            yield doc

    def _with_token(
        self, endpoint: str, parameters: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        if self.token is None or endpoint not in WRITE_ENDPOINTS:
            return parameters
        return {**(parameters or {}), "token": self.token}

    def _transport(self) -> GrpcTransport:
        if self._grpc is None:
            self._grpc = _grpc_side().GrpcTransport(self._target, tls=self._tls)
        return self._grpc

    @contextmanager
    def _grpc_errors(self) -> Iterator[None]:
        grpc = _grpc_side()
        try:
            yield
        except (DocumentError, grpc.UnsendableRequest) as e:
            raise ClientError(str(e)) from e
        except grpc.GatewayError as e:
            if e.unreachable:
                raise self._cannot_talk(e) from e
            raise ClientError(f"the search service at {self.host} failed the request: {e}") from e

    def _http_post(
        self, endpoint: str, docs: list[dict[str, Any]], parameters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        try:  # a mistyped field is the caller's error: say so now
            checked_documents(endpoint, docs, SearchFields)
        except DocumentError as e:
            raise ClientError(str(e)) from e
        parameters = dict(parameters or {})
        headers = {}
        if "token" in parameters:  # over HTTP the token travels in its standard header
            headers["Authorization"] = f"Bearer {parameters.pop('token')}"
        payload = {"data": [_json_doc(d) for d in docs], "parameters": parameters}
        if self._http is None:
            self._http = requests.Session()  # kept alive: no TCP handshake per query
        try:
            r = self._http.post(
                self.host.rstrip("/") + endpoint,
                json=payload,
                headers=headers,
                timeout=self.timeout,
            )
        except requests.RequestException as e:
            raise self._unreachable(e) from e
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200:
            error = body.get("error") if isinstance(body, dict) else None
            what = "refused" if 400 <= r.status_code < 500 else "failed"
            raise ClientError(
                f"{endpoint} {what} the request: {error or r.text[:500]} (HTTP {r.status_code})"
            )
        if not isinstance(body, dict):
            raise ClientError(f"{endpoint} failed: the answer is not JSON: {r.text[:200]!r}")
        return body.get("data") or []

    def _unreachable(self, error: Exception) -> ClientError:
        if isinstance(error, ConnectionError) or "ConnectionError" in type(error).__name__:
            return self._cannot_talk(error)
        return ClientError(f"the search service at {self.host} failed the request: {error!r}")

    def _cannot_talk(self, error: Exception) -> ServiceUnreachable:
        return ServiceUnreachable(
            f"cannot talk to the search service at {self.host} ({type(error).__name__}: "
            f"{error}); is the Flow running (jina flow --uses flow.yml)?"
        )


def _grpc_side() -> ModuleType:
    """`client.grpc_transport`, imported on the first gRPC request: it loads jina's protobuf
    messages and docarray (and torch, where installed), which HTTP does without."""
    try:
        from client import grpc_transport
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in _GRPC_PACKAGES:
            raise
        raise ClientError(
            f"gRPC needs the grpc extra (jina, docarray), which this install lacks ({e}): "
            f"pip install 'clip-finetune-search[grpc]', or use the service's HTTP API "
            f"(--host http://HOST:51001)"
        ) from e
    return grpc_transport


def _request_batches(docs: Iterable[dict[str, Any]], batch_size: int) -> Iterator[list[dict]]:
    """Batches of at most `batch_size` documents that fit in one request of the service."""
    return batched(
        docs,
        min(batch_size, MAX_DOCS),
        weight=lambda doc: len(doc.get("blob") or b""),
        max_weight=_IMAGE_BYTES_PER_REQUEST,
    )


def _too_big(path: str, size: int) -> str:
    return (
        f"{path}: {size} bytes, more than one request carries ({_IMAGE_BYTES_PER_REQUEST} bytes "
        f"of image, within the service's MAX_REQUEST_BYTES)"
    )


def _update_doc(change: dict[str, Any]) -> dict[str, Any]:
    """One change of `SearchClient.update` as a wire document: `image` read into `blob`."""
    if not change.get("id"):
        raise ValueError(f"an update needs the id of the document to change, got {change!r}")
    doc = {k: v for k, v in change.items() if k != "image"}
    image = change.get("image")
    if image is not None:
        doc["blob"] = image if isinstance(image, bytes) else Path(image).read_bytes()
        doc.setdefault("uri", None if isinstance(image, bytes) else os.fspath(image))
    return doc


def _outcome(doc: dict[str, Any]) -> Outcome:
    return Outcome(doc.get("id") or "", doc.get("error"))


def _json_doc(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if v is not None}
    if isinstance(out.get("embedding"), np.ndarray):
        out["embedding"] = out["embedding"].tolist()
    if isinstance(out.get("blob"), bytes):
        out["blob"] = _data_uri(out["blob"], doc.get("uri"))
    return out


def _data_uri(data: bytes, name: str | None) -> str:
    mime = (mimetypes.guess_type(name)[0] if name else None) or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
