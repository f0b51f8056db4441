"""The client's gRPC pipeline, against a fake stub: bounded in-flight requests, replies in order,
errors surfaced and the rest cancelled. (The real gateway is covered by test_flow/test_client.)"""

from __future__ import annotations

import grpc
import pytest
from docarray import DocList
from jina.proto import jina_pb2

from client.grpc_transport import GatewayError, GrpcTransport
from client.wire_docs import SearchDoc


class FakeFuture:
    def __init__(self, stub: FakeStub, request):
        self.stub, self.request, self.cancelled = stub, request, False

    def result(self):
        self.stub.in_flight -= 1
        if self.request.header.exec_endpoint == "/fail":
            raise FakeRpcError()
        response = self.request  # the gateway echoes the documents back
        if self.request.parameters.get("executor_error"):
            response.header.status.code = jina_pb2.StatusProto.ERROR
            response.header.status.exception.name = "ValueError"
            response.header.status.exception.args.append("boom")
        return response

    def cancel(self):
        self.cancelled = True


class FakeRpcError(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection refused"


class FakeStub:
    def __init__(self):
        self.in_flight = self.most_in_flight = 0
        self.futures: list[FakeFuture] = []

    def __call__(self, request, timeout=None):  # the blocking call
        return self.future(request, timeout).result()

    def future(self, request, timeout=None):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.futures.append(FakeFuture(self, request))
        return self.futures[-1]


@pytest.fixture
def transport():
    t = GrpcTransport("127.0.0.1:1")  # never connected: the stub is replaced
    t._call = FakeStub()
    yield t
    t.close()


def batch(*ids: str) -> DocList[SearchDoc]:
    return DocList[SearchDoc]([SearchDoc(id=i, text=i) for i in ids])


def test_pipeline_bounds_requests_in_flight_and_answers_in_order(transport):
    seen = []
    batches = (batch(*(f"{b}-{i}" for i in range(3))) for b in range(10))
    transport.pipeline("/index", batches, lambda docs: seen.append([d.id for d in docs]), 4)
    assert seen == [[f"{b}-{i}" for i in range(3)] for b in range(10)]
    assert transport._call.most_in_flight == 4 and transport._call.in_flight == 0


def test_an_error_stops_the_pipeline_and_cancels_what_is_in_flight(transport):
    def batches():
        yield batch("a")
        yield batch("b")
        raise OSError("the caller's input broke")

    with pytest.raises(OSError):
        transport.pipeline("/index", batches(), lambda docs: None, in_flight=4)
    assert [f.cancelled for f in transport._call.futures] == [True, True]


def test_unreachable_gateway_and_executor_errors_are_told_apart(transport):
    with pytest.raises(GatewayError, match="UNAVAILABLE: connection refused") as unreachable:
        transport.post("/fail", batch("a"))
    assert unreachable.value.unreachable
    with pytest.raises(GatewayError, match="ValueError: boom") as failed:
        transport.post("/search", batch("a"), parameters={"executor_error": True})
    assert not failed.value.unreachable
    [doc] = transport.post("/search", batch("q"), parameters={"limit": 3})
    assert doc.id == "q" and doc.text == "q"
