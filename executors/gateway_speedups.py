"""Two per-request costs taken out of jina's gateway; the Flow YAMLs load this module.

1. The deep copy of its executor graph. jina 3.34's gateway keeps a request's progress in a
   copy of its topology graph, made with `copy.deepcopy(graph)` for every request. Most of
   what that copies is read-only data learnt once at start-up: each executor's endpoint list,
   its endpoint schemas (a protobuf message) and pydantic models, and the loggers.
   `install()` gives the graph and its nodes a `__deepcopy__` that copies what a request
   changes (the node objects themselves, their links and their `parts_to_send` lists) and
   shares the rest.
2. docarray's id parsing: importing `executors.schemas` applies its fix (no pydantic
   TypeAdapter built per document) in the gateway too, which reads every answer's documents
   when it serves HTTP.

Measured on the text-search path (gateway -> text encoder -> indexer, the committed base
model), queries alternating between two Flows: the graph copy takes about 0.8 ms off both the
gateway's CPU per query and the p50 latency (of ~9 ms); `benchmarks/bench_jina_hops.py` shows
it on do-nothing executors, with and without this module.

The Flow YAMLs list this module in their top-level `py_modules`: jina imports those in the
process that then forks the gateway, so the gateway inherits the installed methods. A gateway
started any other way (its own container, a `spawn` start) keeps jina's own code: slower,
same answers. If a jina version gives the graph's nodes other attributes than the ones listed
here, the copy is not installed (a per-request attribute this copy does not know of would be
shared between concurrent requests).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import executors.schemas  # noqa: F401  (item 2 of the module's docstring)

# A node's attributes, as jina 3.34 sets them. Per request: `outgoing_nodes` (the copied
# graph's own nodes), `parts_to_send` (a list a request appends to and edits in place), and
# `start_time`, `end_time`, `status`, `result_in_params_returned` (only ever reassigned, so a
# shallow copy keeps them per request). Read-only after start-up: all the others.
NODE_ATTRIBUTES = frozenset(
    {
        "name",
        "outgoing_nodes",
        "number_of_parts",
        "floating",
        "parts_to_send",
        "start_time",
        "end_time",
        "status",
        "_filter_condition",
        "_metadata",
        "_reduce",
        "_timeout_send",
        "_retries",
        "result_in_params_returned",
        "logger",
        "endpoints",
        "_pydantic_models_by_endpoint",
        "_endpoints_proto",
    }
)
# The graph's own: `_origin_nodes` (copied), `logger`, `has_filter_conditions`, `_all_endpoints`.
GRAPH_ATTRIBUTES = frozenset({"logger", "_origin_nodes", "has_filter_conditions", "_all_endpoints"})

log = logging.getLogger(__name__)


def _copy_node(node: Any, memo: dict[int, Any]) -> Any:
    new = copy.copy(node)
    memo[id(node)] = new  # before the links: nodes reached twice (a DAG) are copied once
    new.outgoing_nodes = [copy.deepcopy(n, memo) for n in node.outgoing_nodes]
    new.parts_to_send = list(node.parts_to_send)
    return new


def _copy_graph(graph: Any, memo: dict[int, Any]) -> Any:
    new = copy.copy(graph)
    memo[id(graph)] = new
    new._origin_nodes = [copy.deepcopy(n, memo) for n in graph._origin_nodes]
    return new


def install() -> bool:
    """Install the lighter copy on jina's `TopologyGraph`; False (and a warning) if this jina's
    graph does not have the attributes the copy was written for."""
    from jina.logging.logger import JinaLogger
    from jina.serve.runtimes.gateway.graph.topology_graph import TopologyGraph

    node_attributes = set(vars(TopologyGraph._ReqReplyNode("probe", logger=JinaLogger("probe"))))
    graph = TopologyGraph({}, logger=JinaLogger("probe"))
    if node_attributes != NODE_ATTRIBUTES or set(vars(graph)) != GRAPH_ATTRIBUTES:
        log.warning(
            "jina's gateway graph has other attributes than %s expects: keeping jina's own "
            "per-request deep copy",
            __name__,
        )
        return False
    TopologyGraph._ReqReplyNode.__deepcopy__ = _copy_node
    TopologyGraph.__deepcopy__ = _copy_graph
    return True


install()
