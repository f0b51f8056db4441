"""jina's own floor: a Flow of do-nothing executors (`passthrough_executor.py`) carrying a
text query and a canned answer, for the benchmarks to run beside the real Flow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import results  # noqa: F401 - this checkout's packages on sys.path, for the imports below
import yaml
from docarray import DocList

from client.grpc_transport import GrpcTransport
from client.wire import SEARCH_TEXT
from client.wire_docs import SearchDoc
from demo.served_flow import ServedFlow, free_port


def flow_yaml(hops: int, matches: int) -> dict:
    executors = [
        {
            "name": f"hop{i}",
            "uses": "PassThrough",
            "py_modules": ["benchmarks/passthrough_executor.py"],
            "uses_with": {"matches": matches if i == hops - 1 else 0},
        }
        for i in range(hops)
    ]
    return {"jtype": "Flow", "with": {"protocol": ["grpc", "http"]}, "executors": executors}


def start_passthrough(hops: int, matches: int, tmp: Path) -> ServedFlow:
    """A started Flow of `hops` do-nothing executors, the last answering `matches` matches."""
    yml = tmp / f"hops{hops}.yml"
    grpc_port, http_port = free_port(), free_port()
    spec = flow_yaml(hops, matches)
    spec["with"].update(port=[grpc_port, http_port], host="127.0.0.1")
    yml.write_text(yaml.safe_dump(spec, sort_keys=False))  # jina wants `jtype` first
    env = {"GRPC_PORT": str(grpc_port), "HTTP_PORT": str(http_port)}
    return ServedFlow(str(yml), env, tmp / f"hops{hops}.log", start_timeout_s=300).start()


def passthrough_search(flow: ServedFlow, limit: int) -> tuple[Callable[[str], None], Callable]:
    """One text query through `flow` (a kept-open channel, as `SearchClient` has), and a closer."""
    transport = GrpcTransport(flow.grpc.removeprefix("grpc://"))

    def search(text: str) -> None:
        docs = DocList[SearchDoc]([SearchDoc(text=text)])
        [answer] = transport.post(SEARCH_TEXT, docs, parameters={"limit": limit})
        assert len(answer.matches) == limit

    return search, transport.close
