"""MONITORING=true: every process of flow.yml serves Prometheus metrics, jina's and the
service's own, and each document is counted once, by the executor that decided its outcome."""

from __future__ import annotations

import base64
from collections import Counter

import pytest
import requests
from helpers import flow_env
from prometheus_client.parser import text_string_to_metric_families

from client.api import SearchClient
from demo import BASE_MODEL_DIR
from demo.served_flow import ServedFlow, free_port

pytestmark = pytest.mark.filterwarnings("ignore")

PORTS = ("GATEWAY", "IMAGE_ENCODER", "TEXT_ENCODER", "INDEXER")
TOKEN = "metrics-test-token"


@pytest.fixture(scope="module")
def monitored(start_flow):
    ports = {name: free_port() for name in PORTS}
    metrics = {
        f"{name}_METRICS_PORT{'' if name == 'GATEWAY' else 'S'}": str(port)
        for name, port in ports.items()
    }
    served = start_flow("monitored", MONITORING="true", API_TOKEN=TOKEN, **metrics)
    return served, ports


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of a metrics endpoint: (name, sorted labels) -> value."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )


@pytest.mark.slow
def test_each_process_counts_what_it_decided_once(monitored):
    flow, ports = monitored
    writer = SearchClient(flow.grpc, token=TOKEN)
    outcomes = writer.post(
        "/index",
        [
            {"id": "good", "text": "a stored caption"},
            {"id": "bad\x01id", "text": "a caption"},
            {"id": "not-an-image", "blob": base64.b64decode(b"bm90IGFuIGltYWdl")},
        ],
        {"token": TOKEN},
    )
    assert [o.get("error") is None for o in outcomes] == [True, False, False]
    refused = SearchClient(flow.grpc).post("/index", [{"id": "no-token", "text": "x"}])
    assert "requires a token" in refused[0]["error"]
    assert SearchClient(flow.http).search(text="a stored caption", limit=1)[0].id == "good"

    samples = {name: scrape(port) for name, port in ports.items()}
    # jina's own metrics, in every process
    for name in PORTS:
        assert any(key[0].startswith("jina_") for key in samples[name]), name
    rejected = Counter()
    for name in PORTS:
        for (sample, labels), value in samples[name].items():
            if sample == "clip_search_documents_rejected_total" and value:
                rejected[(name, dict(labels)["reason"])] += value
    assert rejected == {
        ("IMAGE_ENCODER", "bad_image"): 1,
        ("IMAGE_ENCODER", "unauthorized"): 1,
        ("INDEXER", "invalid_id"): 1,
    }
    indexer = samples["INDEXER"]
    assert total(indexer, "clip_search_documents_indexed_total", endpoint="/index") == 1
    assert total(indexer, "clip_search_queries_total", kind="text") == 1
    assert total(indexer, "clip_search_search_seconds_count", kind="text") == 1
    assert total(indexer, "clip_search_search_seconds_sum", kind="text") > 0


@pytest.mark.slow
def test_a_flow_jina_aborts_is_an_error_at_once_not_a_wait(tmp_path):
    # two processes given one metrics port: one cannot start, jina logs that it aborts the
    # Flow and keeps running; the harness must say so instead of waiting out its timeout
    env = flow_env(BASE_MODEL_DIR, tmp_path / "ws", tmp_path)
    port = str(free_port())
    env.update(MONITORING="true", GATEWAY_METRICS_PORT=port, INDEXER_METRICS_PORTS=port)
    served = ServedFlow("flow.yml", env, tmp_path / "log", start_timeout_s=900)
    with pytest.raises(RuntimeError, match="jina aborted the Flow"):
        served.start()
    assert served.proc is None  # killed, nothing left running
