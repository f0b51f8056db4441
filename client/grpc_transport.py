"""gRPC to a jina gateway over one kept-open channel: single calls, and a bounded pipeline.

jina's own `Client` opens a new channel (and event loop) for every `post`, which costs a few
milliseconds per search, and its streaming mode makes the gateway busy-wait (`asyncio.sleep(0)`
in a loop) whenever `prefetch` requests are in flight, burning a CPU core that the encoders
need. This speaks the same protocol (jina's `DataRequest` over the unary
`JinaSingleDataRequestRPC` service) on one channel, and bounds the requests in flight on the
client side by blocking on the oldest reply: nothing spins anywhere.

`SearchClient` speaks plain dicts (`client.wire.SearchFields`); `doc_list` and `plain_doc` turn
them into the wire's docarray documents and back. This module is the client's only one that
imports jina and docarray, and `client.api` imports it on the first gRPC request only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from docarray import DocList
from jina.proto import jina_pb2
from jina.proto.serializer import DataRequestProto
from jina.types.request.data import DataRequest

from client.wire import HEALTH, STATUS, checked_documents
from client.wire_docs import SearchDoc, StatusDoc

# Batches of photos exceed gRPC's default 4 MiB message limit; jina's gateway lifts it too.
_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
# jina's unary data-request method (its JinaSingleDataRequestRPC service).
_PROCESS_SINGLE_DATA = "/jina.JinaSingleDataRequestRPC/process_single_data"
# What jina's gateway adds to the details of a call it failed because an executor of the Flow
# could not be reached (the executor's deployment is named after it).
_GATEWAY_MARK = "|Gateway:"


class GatewayError(RuntimeError):
    """The gateway answered with an error status (an executor raised), or not at all."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


class UnsendableRequest(GatewayError):
    """A request that could not be encoded for the wire, so nothing was sent."""


class GrpcTransport:
    """Requests to one gateway, `HOST:PORT`, on a channel opened once (TLS when `tls`)."""

    def __init__(self, target: str, tls: bool = False):
        if tls:
            creds = grpc.ssl_channel_credentials()
            self.channel = grpc.secure_channel(target, creds, options=_UNLIMITED)
        else:
            self.channel = grpc.insecure_channel(target, options=_UNLIMITED)
        # Replies arrive as bytes and are read here: when the gateway fails a call it sends an
        # empty reply with the error status, and grpc copies the reply while raising, which a
        # jina `DataRequest` made from nothing cannot survive (the status would be lost).
        self._call = self.channel.unary_unary(
            _PROCESS_SINGLE_DATA,
            request_serializer=DataRequestProto.SerializeToString,
            response_deserializer=None,
        )

    def post(
        self,
        endpoint: str,
        docs: Any,
        parameters: dict[str, Any] | None = None,
        timeout: float | None = None,
        return_type: type | None = None,
    ) -> Any:
        """One request; returns the response documents as a `return_type` (a `DocList`
        class; default: that of `docs`)."""
        return _documents(
            self.reply(endpoint, docs, parameters, timeout), return_type or type(docs)
        )

    def reply(
        self,
        endpoint: str,
        docs: Any,
        parameters: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One request; the gateway's whole reply, a jina `DataRequest` (its `routes` time
        each executor's part, as the gateway saw it). Errors as `GatewayError`."""
        request = _request(endpoint, docs, parameters)
        # the blocking call waits on this thread; a future would start a helper thread
        return _checked(lambda: self._call(request, timeout=timeout))

    def pipeline(
        self,
        endpoint: str,
        batches: Iterable[Any],
        on_response: Callable[[Any], None],
        in_flight: int = 4,
        timeout: float | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        """Send each batch (a `DocList`) as one request, at most `in_flight` unanswered at a
        time, and call `on_response` with each reply's documents, in order."""
        pending: deque[tuple[Any, type]] = deque()

        def deliver_oldest() -> None:
            future, doc_list_type = pending.popleft()
            on_response(_documents(_checked(future.result), doc_list_type))

        try:
            for docs in batches:
                request = _request(endpoint, docs, parameters)
                pending.append((self._call.future(request, timeout=timeout), type(docs)))
                if len(pending) >= in_flight:
                    deliver_oldest()
            while pending:
                deliver_oldest()
        finally:
            for future, _ in pending:  # after an error: stop what is still running
                future.cancel()

    def close(self) -> None:
        self.channel.close()


def _request(endpoint: str, docs: Any, parameters: dict[str, Any] | None) -> Any:
    request = DataRequest()
    request.header.exec_endpoint = endpoint
    request.document_array_cls = type(docs)
    try:  # both are encoded here, at once
        request.data.docs = docs
        request.parameters = parameters or {}
    except Exception as e:  # noqa: BLE001 - docarray and protobuf raise anything they cannot encode
        raise UnsendableRequest(
            f"{endpoint}: the request could not be encoded, nothing was sent "
            f"({type(e).__name__}: {e})"
        ) from e
    return request


def _checked(response_of: Callable[[], Any]) -> Any:
    """The reply that `response_of()` waits for; transport and executor errors, and replies
    that cannot be read, as `GatewayError`."""
    try:
        response = response_of()
        if isinstance(response, bytes):
            response = DataRequest(response)
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        details = (e.details() if hasattr(e, "details") else None) or str(e)
        if _GATEWAY_MARK in details:  # the gateway answered: an executor behind it did not
            cause, _, gateway = details.partition(_GATEWAY_MARK)
            raise GatewayError(
                f"{gateway.strip()} ({code.name if code else 'gRPC'}: {cause.strip()})"
            ) from e
        raise GatewayError(
            f"{code.name if code else 'gRPC error'}: {details}",
            unreachable=code == grpc.StatusCode.UNAVAILABLE,
        ) from e
    except grpc.FutureCancelledError as e:
        raise GatewayError("the request was cancelled") from e
    except Exception as e:  # noqa: BLE001 - jina's lazy parsing raises anything on a bad reply
        raise GatewayError(_unreadable(e)) from e
    try:
        status = response.header.status
    except Exception as e:  # noqa: BLE001 - jina's lazy parsing raises anything on a bad reply
        raise GatewayError(_unreadable(e)) from e
    if status.code >= jina_pb2.StatusProto.ERROR:
        exc = status.exception
        reason = (
            f"{exc.name}: {exc.args[0] if exc.args else ''}" if exc.name else status.description
        )
        raise GatewayError(f"an executor failed the request ({reason})")
    return response


def _documents(response: Any, doc_list_type: type) -> Any:
    """A reply's documents, read as `doc_list_type`; `GatewayError` when they cannot be."""
    try:
        response.document_array_cls = doc_list_type
        return response.docs
    except Exception as e:  # noqa: BLE001 - as in `_checked`
        raise GatewayError(_unreadable(e)) from e


def _unreadable(error: Exception) -> str:
    # An empty or truncated reply is what the gateway sends when an executor on the request's
    # path is gone; jina then fails deep in its parsing ("the buffer is already decompressed").
    return (
        f"the gateway's reply could not be read ({type(error).__name__}: {error}); an executor "
        f"of the Flow may be down"
    )


def doc_list(endpoint: str, docs: list[dict[str, Any]], offset: int = 0) -> DocList[SearchDoc]:
    """Plain documents as the wire's `SearchDoc`s, checked before anything is sent
    (`client.wire.checked_documents`: a `DocumentError` names the first that does not fit, by
    its position in the job, `offset` + index)."""
    return DocList[SearchDoc](checked_documents(endpoint, docs, SearchDoc, offset))


def doc_lists(endpoint: str, batches: Iterable[list[dict[str, Any]]]) -> Iterator[DocList]:
    """Each batch as a `doc_list`, its documents named by their position in the whole job."""
    offset = 0
    for batch in batches:
        yield doc_list(endpoint, batch, offset=offset)
        offset += len(batch)


def reply_type(endpoint: str) -> type[DocList]:
    """The documents `endpoint` answers with."""
    return DocList[StatusDoc if endpoint in (STATUS, HEALTH) else SearchDoc]


def plain_doc(doc: Any) -> dict[str, Any]:
    """A reply's document as the plain dict `SearchClient` returns: its id and every field
    that is set, its matches as dicts of their fields."""
    out = {"id": doc.id}
    for name in type(doc).model_fields:
        value = getattr(doc, name)
        if name != "matches" and value is not None:
            out[name] = value
    if hasattr(doc, "matches"):
        out["matches"] = [{"id": m.id, **_set_fields(m)} for m in doc.matches]
    return out


def _set_fields(doc: Any) -> dict[str, Any]:
    return {name: getattr(doc, name) for name in type(doc).model_fields if name != "id"}
