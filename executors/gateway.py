"""The Flow's gateway: jina's own gRPC gateway and the service's HTTP API in one process.

`SearchGateway` is a composite of two servers over one jina request handler (one streamer,
one set of connections to the executors), as jina's built-in gRPC + HTTP gateway is, except
that its HTTP side is `SearchHTTPGateway`: the API of `executors.http_api`, which sends each
request through the Flow whole (jina's HTTP gateway cut it into chunks of 100 and answered
with the first) and answers malformed bodies with a 4xx naming the fault. Both are built on
jina's public gateway classes; the Flow YAMLs name it in their `gateway:` section.
"""

from __future__ import annotations

import json
from typing import Any

from docarray import DocList
from fastapi import FastAPI
from jina.excepts import InternalNetworkError
from jina.serve.runtimes.gateway.gateway import BaseGateway
from jina.serve.runtimes.gateway.grpc import GRPCGateway
from jina.serve.runtimes.gateway.http.fastapi import FastAPIBaseGateway
from jina.serve.runtimes.servers.composite import CompositeBaseServer

from executors.http_api import FlowReply, FlowRequest, http_app
from search.limits import MAX_REQUEST_BYTES


class SearchHTTPGateway(FastAPIBaseGateway):
    """The service's HTTP API (`executors.http_api`) over jina's streamer."""

    @property
    def app(self) -> FastAPI:
        return http_app(self.send, title=self.title or "CLIP search")

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
                    return FlowReply(
                        error="; ".join(map(str, error.args)) or error.name,
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
            return FlowReply(error=f"the gateway failed the request: {type(e).__name__}: {e}")
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
            if server_class is GRPCGateway:
                server_kwargs["grpc_server_options"] = {
                    **(server_kwargs.get("grpc_server_options") or {}),
                    "grpc.max_receive_message_length": MAX_REQUEST_BYTES,
                }
            self.servers.append(server_class(**server_kwargs))
        self.gateways = self.servers  # jina's name for them


def _server_class(protocol: str) -> type:
    name = protocol.rsplit(".", 1)[-1].lower()
    if name == "grpc":
        return GRPCGateway
    if name == "http":
        return SearchHTTPGateway
    raise ValueError(f"SearchGateway serves grpc and http, not {protocol!r}")


def deployments_at(deployments_addresses: str | dict | None, tried: Any) -> list[str]:
    """The names of the Flow's deployments (jina's `deployments_addresses`: name -> list of
    `grpc://host:port`) that serve at any of the `tried` addresses (`host:port`)."""
    if isinstance(deployments_addresses, str):
        deployments_addresses = json.loads(deployments_addresses or "{}")
    tried = set(_addresses(tried))
    return sorted(
        name
        for name, addresses in (deployments_addresses or {}).items()
        if tried.intersection(_addresses(addresses))
    )


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
