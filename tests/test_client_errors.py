"""Every failure of the gateway or the transport reaches a `SearchClient` caller as a
`ClientError` with a readable message, over gRPC and HTTP (no Flow needed: the replies that
caused raw errors are made here)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from jina.types.request.data import DataRequest

from client.api import ClientError, SearchClient, ServiceUnreachable
from client.grpc_transport import GrpcTransport


def test_an_empty_grpc_reply_is_a_client_error_not_a_parse_error():
    # what the gateway sent when an executor of the Flow had died: jina's own parsing then
    # raised "ValueError: the buffer is already decompressed"
    client = SearchClient("grpc://127.0.0.1:9")
    client._grpc = GrpcTransport("127.0.0.1:9")
    client._grpc._call = lambda request, timeout=None: DataRequest(b"")
    try:
        with pytest.raises(ClientError, match="reply could not be read.*may be down"):
            client.search("a dog")
        with pytest.raises(ClientError, match="reply could not be read"):
            client.status()
    finally:
        client.close()


class _FailedCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_dead_executor_behind_the_grpc_gateway_is_named_not_the_gateway_unreachable():
    # the details jina's gateway gives a call it failed because the indexer was gone
    details = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: Connection "
        "refused |Gateway: Communication error with deployment indexer at address(es) "
        "{'127.0.0.1:5'}. Head or worker(s) may be down."
    )

    def failed(request, timeout=None):
        raise _FailedCall(grpc.StatusCode.UNAVAILABLE, details)

    client = SearchClient("grpc://127.0.0.1:9")
    client._grpc = GrpcTransport("127.0.0.1:9")
    client._grpc._call = failed
    try:
        with pytest.raises(ClientError) as error:
            client.search("a dog")
        assert not isinstance(error.value, ServiceUnreachable)
        assert "Communication error with deployment indexer" in str(error.value)
        health = client.health()
        assert not health.healthy and "deployment indexer" in health.error
    finally:
        client.close()


def test_an_unreachable_grpc_gateway_is_a_client_error():
    with SearchClient("grpc://127.0.0.1:9", timeout=5) as client:
        with pytest.raises(ClientError, match="cannot talk to the search service"):
            client.search("a dog")


# What the service's HTTP API answers to a request it refuses whole (executors/http_api.py).
REFUSALS = {
    "/index": (413, {"error": "the request has 600 documents, more than the limit of 512"}),
    "/search": (400, {"error": "parameters.limit is NaN: JSON numbers must be finite"}),
    "/health": (503, {"error": "index shard(s) 1 of 2 did not answer", "executor": "indexer"}),
}


@pytest.fixture
def http_gateway() -> Iterator[str]:
    """A stand-in gateway on 127.0.0.1: the refusals above, and a /status that is not JSON."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            code, answer = REFUSALS.get(self.path, (200, None))
            body = "<html>" if answer is None else json.dumps(answer)
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_refused_or_failed_http_request_is_a_client_error_saying_why(http_gateway):
    with SearchClient(http_gateway, timeout=10) as client:
        for endpoint, (code, answer) in REFUSALS.items():
            with pytest.raises(ClientError) as error:
                client.post(endpoint, [])
            what = "refused" if code < 500 else "failed"
            assert (
                str(error.value)
                == f"{endpoint} {what} the request: {answer['error']} (HTTP {code})"
            )
        health = client.health()
        assert not health.healthy and "shard(s) 1 of 2 did not answer" in health.error
        with pytest.raises(ClientError, match="the answer is not JSON"):
            client.status()


def test_nan_and_infinity_in_parameters_are_refused_by_name_before_sending():
    with SearchClient("http://127.0.0.1:9", timeout=5) as client:
        with pytest.raises(ClientError, match=r"parameters\.limit is NaN"):
            client.post("/search", [{"text": "a"}], {"limit": float("nan")})
        with pytest.raises(ClientError, match=r"parameters\.filter\.price\.\$lt is Infinity"):
            client.post("/search", [{"text": "a"}], {"filter": {"price": {"$lt": float("inf")}}})


def test_a_grpc_call_whose_failure_cannot_be_read_is_a_client_error():
    # grpc raised jina's ValueError while copying the empty reply of a Flow whose indexer died
    def broken(request, timeout=None):
        raise ValueError("the buffer is already decompressed")

    client = SearchClient("grpc://127.0.0.1:9")
    client._grpc = GrpcTransport("127.0.0.1:9")
    client._grpc._call = broken
    try:
        with pytest.raises(ClientError, match="already decompressed.*may be down"):
            client.search("a dog")
    finally:
        client.close()


@pytest.mark.parametrize("host", ["grpc://127.0.0.1:9", "http://127.0.0.1:9"])
def test_a_mistyped_field_is_refused_by_document_and_field_before_sending(host):
    # the gateway would answer `tags` as a list with a bare 500 (HTTP) and the gRPC client
    # would raise pydantic's error; port 9 (discard) is never reached
    with SearchClient(host, timeout=5) as client:
        good = {"id": "ok", "text": "fine"}
        with pytest.raises(ClientError) as error:
            client.post("/index", [good, {"id": "b", "text": "t", "tags": [1, 2]}])
        assert str(error.value) == (
            "/index refused the request: document 1, field tags: Input should be a valid "
            "dictionary (checked before sending)"
        )
        with pytest.raises(ClientError, match="document 0, field text: Input should be a valid"):
            client.post("/index", [{"id": "c", "text": 5}, good])
