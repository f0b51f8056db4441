"""jina's snapshot and restore RPCs on every gRPC port of both Flows (issue 18, item 3): named
the index shards' store files and a file outside the workspace, no port deletes one, the
executors refuse both RPCs, and every document stays searchable. The attack is
tests/restore_attack.py's (also a script that reports it)."""

from __future__ import annotations

import os
import threading

import pytest
from restore_attack import DOCS, TOKEN, attack_flow, index_docs, searchable, store_files

from demo import BASE_MODEL_DIR
from demo.served_flow import ServedFlow, flow_env
from executors.base import RPCRefused
from executors.hnsw_indexer import MatchMerger

# The runtimes of each Flow, as jina names them in its log; the gateway and a shard head do not
# serve the two RPCs at all, every executor (the shards' `uses_after` merger too) does.
NOT_SERVED = {"gateway/rep-0", "indexer/head"}
RUNTIMES = {
    "flow.yml": {"gateway/rep-0", "image_encoder/rep-0", "text_encoder/rep-0", "indexer/rep-0"},
    "flow.scaled.yml": {
        "gateway/rep-0",
        *(f"{encoder}/rep-{i}" for encoder in ("image_encoder", "text_encoder") for i in (0, 1)),
        "indexer/head",
        "indexer/shard-0/rep-0",
        "indexer/shard-1/rep-0",
        "indexer/uses_after-0",
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("yml", sorted(RUNTIMES))
def test_no_port_deletes_a_file_through_jinas_restore_rpc(yml, tmp_path, monkeypatch):
    monkeypatch.delenv("SEARCH_TOKEN", raising=False)  # the client's default token
    workspace, victim = tmp_path / "ws", tmp_path / "victim.txt"
    env = flow_env(BASE_MODEL_DIR, workspace, tmp_path, torch_threads=1)
    env["API_TOKEN"] = TOKEN
    with ServedFlow(yml, env, tmp_path / "log") as served:
        index_docs(served, DOCS)
        store = store_files(workspace)
        shards = 2 if yml == "flow.scaled.yml" else 1
        assert [p.name for p in store] == [
            "store.sqlite",
            "store.sqlite-shm",
            "store.sqlite-wal",
        ] * shards
        reports = attack_flow(served, workspace, victim)
        assert {r.runtime for r in reports} == RUNTIMES[yml]  # every port was asked
        for report in reports:
            assert report.deleted == [], report.line()
            refused = "UNIMPLEMENTED" if report.runtime in NOT_SERVED else "FAILED"
            assert report.restore == [refused] * (len(store) + 1), report.line()
            assert report.snapshot == refused, report.line()
        assert all(p.exists() for p in [*store, victim])
        assert searchable(served, DOCS) == (len(DOCS), [])


def test_a_refused_restore_keeps_its_file_and_nothing_else_is_held_back(tmp_path):
    """What jina's restore thread does (the Executor's `restore` hook, then `os.remove` of the
    same path in a `finally`), in a thread of its own: both refused, the file kept. Removing
    files elsewhere in the process goes on."""
    victim = tmp_path / "victim"
    victim.write_text("kept")
    merger = MatchMerger()
    caught: list[BaseException] = []

    def restore_as_jina_does() -> None:
        try:
            try:
                merger.restore(str(victim))
            finally:
                os.remove(victim)
        except BaseException as e:  # what the thread ended with is the result
            caught.append(e)

    thread = threading.Thread(target=restore_as_jina_does)
    thread.start()
    thread.join(timeout=10)
    [error] = caught
    assert isinstance(error, RPCRefused) and "may not remove" in str(error), error
    assert isinstance(error.__context__, RPCRefused)  # the hook's own refusal, before it
    assert victim.read_text() == "kept"
    with pytest.raises(RPCRefused):
        merger.snapshot(str(tmp_path / "snapshot"))
    os.remove(victim)  # this thread was never refused
    assert not victim.exists()
