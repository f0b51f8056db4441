"""`/health`: every executor a request reaches says so, and a sharded index says which of its
shards did not answer.

A `/health` request passes every executor of the Flow (all bind it): one replica of each
encoder, then each shard of the index, whose `MatchMerger` fails the request, naming the
shards, when any of them did not answer. An executor that is down fails the request in the
gateway, which names it (over HTTP see `executors.gateway`; over gRPC in the call's status).
So the request succeeds exactly
when everything answered, and its answer lists who did: `python -m client health` turns that
into an exit status for probes.
"""

from __future__ import annotations

from typing import Any

from docarray import DocList

from client.wire_docs import StatusDoc
from search.sharding import missing_shard_ids


class ShardsMissing(RuntimeError):
    """Raised by a sharded index's merger when shards did not answer `/health`."""


class TowersMismatch(RuntimeError):
    """Raised by an index whose encoders run other towers than those that embedded it."""


def report(runtime_args: Any, **info: Any) -> StatusDoc:
    """This executor's line of a `/health` answer: its runtime name (deployment, shard and
    replica, as jina names it), when sharded its shard, and `info` (an encoder's tower and
    fingerprint)."""
    shards = int(getattr(runtime_args, "shards", None) or 1)
    shard = int(getattr(runtime_args, "shard_id", None) or 0) if shards > 1 else None
    name = str(getattr(runtime_args, "name", ""))
    return StatusDoc(info={"executor": name, "shard": shard, **info})


def answer(docs: DocList[StatusDoc], runtime_args: Any, **info: Any) -> DocList[StatusDoc]:
    """The reports of the executors before this one, and this one's."""
    docs.append(report(runtime_args, **info))
    return docs


def serving_towers(docs: DocList[StatusDoc]) -> dict[str, str]:
    """{tower: fingerprint} of the encoders whose reports are in `docs`."""
    return {
        d.info["tower"]: d.info["fingerprint"]
        for d in docs
        if isinstance(d.info.get("tower"), str) and isinstance(d.info.get("fingerprint"), str)
    }


def merge(
    docs_matrix: list[DocList[StatusDoc]] | None, docs: DocList[StatusDoc], shards: int
) -> DocList[StatusDoc]:
    """One answer out of the shards' (each holds the encoders' reports and its own); raises
    `ShardsMissing` when a shard is not among them."""
    merged, seen = DocList[StatusDoc](), set()
    for doc in (d for answer in (docs_matrix or [docs]) for d in answer):
        key = (doc.info.get("executor"), doc.info.get("shard"))
        if key not in seen:
            seen.add(key)
            merged.append(doc)
    answered = [d.info["shard"] for d in merged if d.info.get("shard") is not None]
    missing = missing_shard_ids(answered, shards)
    if missing:
        raise ShardsMissing(
            f"index shard(s) {', '.join(map(str, missing))} of {shards} did not answer "
            f"(answered: {', '.join(str(k) for k in sorted(set(answered))) or 'none'})"
        )
    return merged
