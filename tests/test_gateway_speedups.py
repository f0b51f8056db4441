"""The gateway's lighter per-request graph copy: per-request state copied, start-up data shared."""

from __future__ import annotations

import copy

import pytest
from jina.serve.runtimes.gateway.graph.topology_graph import TopologyGraph

from executors import gateway_speedups

# two origins that meet again: `join` is reached along both paths
DIAMOND = {
    "start-gateway": ["left", "right"],
    "left": ["join"],
    "right": ["join"],
    "join": ["end-gateway"],
}


def nodes_by_name(graph: TopologyGraph) -> dict[str, list]:
    found: dict[str, list] = {}

    def walk(node):
        found.setdefault(node.name, [])
        if not any(n is node for n in found[node.name]):
            found[node.name].append(node)
        for out in node.outgoing_nodes:
            walk(out)

    for origin in graph._origin_nodes:
        walk(origin)
    return found


@pytest.fixture()
def graph() -> TopologyGraph:
    assert gateway_speedups.install()  # this jina is the one the copy was written for
    graph = TopologyGraph(DIAMOND)
    for node in nodes_by_name(graph).values():
        # what endpoint discovery leaves on each node at start-up
        node[0]._pydantic_models_by_endpoint = {"/search": {"input": object}}
        node[0].endpoints = ["/search"]
    return graph


def test_a_request_copy_has_its_own_nodes_and_state(graph):
    original = nodes_by_name(graph)
    request = copy.deepcopy(graph)
    copied = nodes_by_name(request)
    assert copied.keys() == original.keys()
    for name, [node] in copied.items():
        [template] = original[name]
        assert node is not template and node.name == template.name
        # per request: appended to, edited in place, reassigned
        assert node.parts_to_send is not template.parts_to_send
        node.parts_to_send.append("request")
        node.status = "done"
        assert template.parts_to_send == [] and template.status is None
        # learnt once at start-up: shared, not copied
        assert node._pydantic_models_by_endpoint is template._pydantic_models_by_endpoint
        assert node.endpoints is template.endpoints and node.logger is template.logger
    # the join node is one node in the copy too, reached from both sides
    assert len(copied["join"]) == 1
    assert request._origin_nodes[0].outgoing_nodes[0] is request._origin_nodes[1].outgoing_nodes[0]


def test_concurrent_request_copies_do_not_share_state(graph):
    first, second = copy.deepcopy(graph), copy.deepcopy(graph)
    [a] = nodes_by_name(first)["join"]
    [b] = nodes_by_name(second)["join"]
    a.parts_to_send.append("first")
    assert b.parts_to_send == []


def test_nothing_is_installed_for_a_graph_it_was_not_written_for(monkeypatch):
    monkeypatch.setattr(TopologyGraph._ReqReplyNode, "__deepcopy__", None, raising=False)
    monkeypatch.setattr(
        gateway_speedups, "NODE_ATTRIBUTES", gateway_speedups.NODE_ATTRIBUTES | {"new_state"}
    )
    assert gateway_speedups.install() is False
    assert TopologyGraph._ReqReplyNode.__deepcopy__ is None  # jina's own deep copy stays
