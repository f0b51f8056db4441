"""The Flow's gateway: jina's own gRPC gateway and the service's HTTP API in one process.

`SearchGateway` is a composite of two servers over one jina request handler (one streamer,
one set of connections to the executors), as jina's built-in gRPC + HTTP gateway is, except
that its HTTP side is `SearchHTTPGateway`: the API of `executors.http_api`, which sends each
request through the Flow whole (jina's HTTP gateway cut it into chunks of 100 and answered
with the first) and answers malformed bodies with a 4xx naming the fault. Both are built on
jina's public gateway classes; the Flow YAMLs name it in their `gateway:` section.

Neither side echoes the write token: jina's gateway answers each request with the parameters
it came with (it sets them on every executor's reply, so an executor cannot drop the token),
so the HTTP side leaves it out of its JSON and the gRPC side (`SearchGRPCGateway`) out of its
replies, with a gRPC interceptor. That interceptor also keeps stack traces and file paths on
the server: an executor's failure reaches the caller as its exception's name and first line.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from docarray import DocList
from fastapi import FastAPI
from jina.excepts import InternalNetworkError
from jina.proto import jina_pb2
from jina.serve.runtimes.gateway.gateway import BaseGateway
from jina.serve.runtimes.gateway.grpc import GRPCGateway
from jina.serve.runtimes.gateway.http.fastapi import FastAPIBaseGateway
from jina.serve.runtimes.servers.composite import CompositeBaseServer
from jina.types.request.data import DataRequest, SingleDocumentRequest

from executors.http_api import FlowReply, FlowRequest, http_app
from search.access import without_token
from search.limits import MAX_REQUEST_BYTES, short_error

# The executors' class names: each of the Flow's executors takes the parameter of its class's
# name as its own (jina), beside the one of its deployment's name.
EXECUTOR_CLASSES = ("CLIPImageEncoder", "CLIPTextEncoder", "HNSWIndexer", "MatchMerger")
# jina's methods that carry data requests and answer with them (the others, such as health
# checks and reflection, answer with other messages and are left alone).
_DATA_METHODS = (
    "/jina.JinaRPC/Call",
    "/jina.JinaSingleDataRequestRPC/process_single_data",
    "/jina.JinaSingleDocumentRequestRPC/stream_doc",
    "/jina.JinaDataRequestRPC/process_data",
)


class SearchHTTPGateway(FastAPIBaseGateway):
    """The service's HTTP API (`executors.http_api`) over jina's streamer."""

    @property
    def app(self) -> FastAPI:
        deployments = _deployments(getattr(self.runtime_args, "deployments_addresses", None))
        executors = [*deployments, *EXECUTOR_CLASSES]
        return http_app(self.send, title=self.title or "CLIP search", executors=executors)

    async def send(self, request: FlowRequest) -> FlowReply:
        """`request` through the Flow as one request."""
        try:
            async for response, error in self.streamer.stream(
                docs=request.docs,
                request_size=max(len(request.docs), 1),
                exec_endpoint=request.endpoint,
                parameters=request.parameters,
                return_results=True,
                return_type=DocList[request.docs.doc_type],
            ):
                if error is not None:
                    self.logger.error(f"{request.endpoint} failed in the Flow: {error}")
                    return FlowReply(
                        error=short_error("; ".join(map(str, error.args)) or error.name),
                        exception=error.name,
                        executor=error.executor or None,
                    )
                return FlowReply(docs=response.docs, parameters=dict(response.parameters))
        except InternalNetworkError as e:
            self.logger.error(f"{request.endpoint}: an executor could not be reached: {e}")
            addresses = getattr(self.runtime_args, "deployments_addresses", None)
            return FlowReply(error=_unreachable(e, addresses), unreachable=True)
        except Exception as e:  # the request fails, the gateway serves on
            self.logger.error(f"{request.endpoint} failed in the gateway: {e!r}")
            message = short_error(f"{type(e).__name__}: {e}")
            return FlowReply(error=f"the gateway failed the request: {message}")
        return FlowReply(error="the Flow sent no answer")


class SearchGateway(CompositeBaseServer, BaseGateway):
    """jina's gRPC gateway for `grpc` and `SearchHTTPGateway` for `http`, on the Flow's
    ports in the order of its `protocol` list. The gRPC side refuses messages over
    `MAX_REQUEST_BYTES` (gRPC's RESOURCE_EXHAUSTED), as the HTTP side refuses bodies (413)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.servers = []
        # the arguments of one server per protocol, sharing this gateway's request handler, as
        # CompositeBaseServer prepares them for subclasses (jina's CompositeServer reads them so)
        for server_kwargs in self._server_kwargs:
            server_class = _server_class(str(server_kwargs["runtime_args"]["protocol"]))
            if server_class is SearchGRPCGateway:
                server_kwargs["grpc_server_options"] = {
                    **(server_kwargs.get("grpc_server_options") or {}),
                    "grpc.max_receive_message_length": MAX_REQUEST_BYTES,
                }
            self.servers.append(server_class(**server_kwargs))
        self.gateways = self.servers  # jina's name for them


class SearchGRPCGateway(GRPCGateway):
    """jina's gRPC gateway, its data replies passed through `scrubbed`."""

    def aio_tracing_server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        # jina's hook for its gRPC server's interceptors (tracing, when on), called at __init__
        return [*(super().aio_tracing_server_interceptors() or []), _ScrubReplies()]


class _ScrubReplies(grpc.aio.ServerInterceptor):
    """Passes every reply of jina's data methods through `scrubbed`."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method not in _DATA_METHODS:
            return handler
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                return scrubbed(await unary(request, context))

            return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
        streams = handler.stream_stream or handler.unary_stream
        make = (
            grpc.stream_stream_rpc_method_handler
            if handler.stream_stream is not None
            else grpc.unary_stream_rpc_method_handler
        )

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            async for reply in streams(request, context):
                yield scrubbed(reply)

        return make(streaming, **codec)


def scrubbed(reply: Any) -> Any:
    """A gRPC reply as the gateway sends it: its parameters without the token
    (`search.access.without_token`), and an error status without stack traces, its message
    short (`search.limits.short_error`). Other replies pass unchanged."""
    if not isinstance(reply, DataRequest | SingleDocumentRequest):
        return reply
    parameters = reply.parameters
    kept = without_token(parameters)
    if kept != parameters:
        reply.parameters = kept
    # the request's status, and each executor's on its route, say what failed
    for status in (reply.header.status, *(route.status for route in reply.routes)):
        if status.code == jina_pb2.StatusProto.ERROR:
            exception = status.exception
            message = short_error("; ".join(exception.args) or exception.name)
            del exception.stacks[:]
            del exception.args[:]
            exception.args.append(message)
            status.description = f"{exception.name}: {message}"
    return reply


def _server_class(protocol: str) -> type:
    name = protocol.rsplit(".", 1)[-1].lower()
    if name == "grpc":
        return SearchGRPCGateway
    if name == "http":
        return SearchHTTPGateway
    raise ValueError(f"SearchGateway serves grpc and http, not {protocol!r}")


def deployments_at(deployments_addresses: str | dict | None, tried: Any) -> list[str]:
    """The names of the Flow's deployments (jina's `deployments_addresses`: name -> list of
    `grpc://host:port`) that serve at any of the `tried` addresses (`host:port`)."""
    tried = set(_addresses(tried))
    return sorted(
        name
        for name, addresses in _deployments(deployments_addresses).items()
        if tried.intersection(_addresses(addresses))
    )


def _deployments(deployments_addresses: str | dict | None) -> dict[str, Any]:
    """jina's `deployments_addresses` (JSON, or its dict) as a dict: name -> addresses."""
    if isinstance(deployments_addresses, str):
        return json.loads(deployments_addresses or "{}")
    return deployments_addresses or {}


def _addresses(value: Any) -> list[str]:
    """`host:port` of each address in `value` (one, or a collection; `grpc://` dropped)."""
    values = value if isinstance(value, list | set | tuple) else [value]
    return sorted(str(v).split("://")[-1] for v in values if v)


def _unreachable(error: InternalNetworkError, deployments_addresses: Any) -> str:
    tried = _addresses(getattr(error, "dest_addr", None))
    names = deployments_at(deployments_addresses, tried)
    who = ", ".join(names) if names else "an executor of the Flow"
    where = f" at {', '.join(tried)}" if tried else ""
    return (
        f"{who} could not be reached{where}: {error.details()}; `python -m client health` "
        f"checks every executor"
    )
