"""The real search Flow (flow.yml, flow.scaled.yml) end to end, on 127.0.0.1 and free ports.

The project's base ViT-Tiny-8 is fine-tuned (`finetune.fit`) on 16 clearly distinct generated
images (8 colours x square/circle) so that every image's own caption must find it first, over
gRPC (jina Client) and HTTP (requests). The same Flow (`jina flow --uses flow.yml`) then takes
bad documents beside good ones, restarts on its workspace, and loses all its processes to
`kill -9` in the middle of an indexing job (everything acknowledged must survive); the sharded
and replicated flow.scaled.yml must answer like the plain one. Tests run in file order.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import tomllib
from docarray import DocList
from helpers import captions

from client.api import MAX_DOCS, IndexItem, SearchClient
from client.grpc_transport import GrpcTransport
from client.wire import SEARCH_IMAGE
from client.wire_docs import SearchDoc, StatusDoc
from demo import BASE_MODEL_DIR, REPO, served_flow
from demo.served_flow import ServedFlow
from executors.flow_env import FLOW_ENV_DEFAULTS as FLOW_ENV_VARS
from executors.hnsw_indexer import MAYBE_ON_A_MISSING_SHARD, PARTIAL_RESULTS
from finetune.onnx_export import export_onnx
from search.index_shard import IMAGE, TEXT, WRONG_MODALITY
from search.limits import request_error
from search.sharding import (
    OWNER_DID_NOT_ANSWER,
    UNKNOWN_ID,
    missing_shards_error,
    owner_shard,
)

# --- data, model, Flow (the 16 shapes: conftest's `shapes`) -------------------------------


@pytest.fixture(scope="module")
def trained_run(shapes, tmp_path_factory) -> Path:
    """The project's base model (a ViT-Tiny-8) fine-tuned on the 16 pairs: 30 full-batch AdamW
    steps at lr 1e-3, ~10 s here. It ranks 12 of the 16 first zero-shot, all 16 after."""
    import torch

    from finetune import fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores, 2 threads thrash (several times slower)
    try:
        run = fit(
            model=f"ViT-Tiny-8#{BASE_MODEL_DIR}",
            train_data=str(shapes / "pairs.csv"),
            output=str(tmp_path_factory.mktemp("run") / "shapes"),
            epochs=30,
            batch_size=16,
            learning_rate=1e-3,
            optimizer="adamw",
            workers=0,
            seed=0,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    return run.output


@pytest.fixture(scope="module")
def flow(trained_run, shapes, start_flow):
    return start_flow("plain", run_dir=trained_run, image_root=shapes / "images")


def grpc_client(url: str):
    from jina import Client

    return Client(host=url)


def grpc_search(url: str, texts: list[str], limit: int = 3) -> DocList[SearchDoc]:
    queries = DocList[SearchDoc]([SearchDoc(text=t) for t in texts])
    return grpc_client(url).post(
        "/search", queries, parameters={"limit": limit}, return_type=DocList[SearchDoc]
    )


def http_post(url: str, endpoint: str, data: list[dict], **parameters) -> list[dict]:
    r = requests.post(f"{url}{endpoint}", json={"data": data, "parameters": parameters}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def run_client(host: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m client --host HOST ARGS...` as a user (or a probe) runs it."""
    return subprocess.run(
        [sys.executable, "-m", "client", "--host", host, "--timeout", "60", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def index_shapes(url: str, shapes: Path, request_size: int = 5) -> DocList[SearchDoc]:
    """All 16 images: half sent as bytes, half as a path under IMAGE_ROOTS; caption as text."""
    docs = DocList[SearchDoc]()
    for i, (name, caption) in enumerate(sorted(captions(shapes).items())):
        path = shapes / "images" / name
        if i % 2:
            docs.append(SearchDoc(id=name, uri=str(path), text=caption))
        else:
            docs.append(SearchDoc(id=name, blob=path.read_bytes(), uri=str(path), text=caption))
    return grpc_client(url).post(
        "/index", docs, request_size=request_size, return_type=DocList[SearchDoc]
    )


REQUEST_SIZES = (99, 100, 101, 250, 1_000, 10_000)


def check_every_reply_covers_its_request(served: ServedFlow, image: Path) -> None:
    """Single requests of each size, over gRPC (the client's one-request `post`) and raw HTTP
    (any caller's JSON), are answered whole (one outcome per document, in order) or refused
    whole with the limit; client jobs of 1,000 images are split to fit. Then every
    acknowledged id is found (deleted without "unknown id") and every refused one is absent."""
    for host in (served.grpc, served.http):
        with SearchClient(host) as client:
            acknowledged, refused = [], []
            for n in REQUEST_SIZES:
                docs = [{"id": f"{client.protocol}-{n}/{i}", "text": f"doc {i}"} for i in range(n)]
                if client.protocol == "http":
                    r = requests.post(f"{host}/index", json={"data": docs}, timeout=300)
                    if n > MAX_DOCS:
                        assert (r.status_code, r.json()) == (413, {"error": request_error(n)})
                        refused += [d["id"] for d in docs[:50]]
                        continue
                    assert r.status_code == 200, (n, r.text[:300])
                    answers = r.json()["data"]
                else:
                    answers = client.post("/index", docs)
                assert [a["id"] for a in answers] == [d["id"] for d in docs], n
                errors = {a.get("error") for a in answers}
                if n <= MAX_DOCS:
                    assert errors == {None}, (n, errors)
                    acknowledged += [d["id"] for d in docs]
                else:
                    assert errors == {request_error(n)}, (n, errors)
                    refused += [d["id"] for d in docs[:50]]
            items = [IndexItem(f"{client.protocol}-job/{i}", str(image)) for i in range(1_000)]
            outcomes = client.index(items, batch_size=1_000)
            assert [o.id for o in outcomes] == [i.id for i in items]
            assert {o.error for o in outcomes} == {None}
            acknowledged += [o.id for o in outcomes]
            deleted = client.delete(acknowledged + refused)
            assert [o.error for o in deleted[: len(acknowledged)]] == [None] * len(acknowledged)
            assert {o.error for o in deleted[len(acknowledged) :]} <= {UNKNOWN_ID}


# Results of the plain Flow, for the sharded one to be compared with.
PLAIN_RESULTS: dict[str, list[tuple[str, float]]] = {}


# --- the plain Flow ------------------------------------------------------------------------


@pytest.mark.slow
def test_each_caption_finds_its_image_first_over_grpc_and_http(flow, shapes):
    indexed = index_shapes(flow.grpc, shapes)
    assert [d.error for d in indexed] == [None] * 16
    assert all(d.blob is None and d.embedding is None for d in indexed)  # nothing big returned

    truth = captions(shapes)
    names, texts = list(truth), list(truth.values())
    by_grpc = grpc_search(flow.grpc, texts, limit=5)
    by_http = http_post(flow.http, "/search", [{"text": t} for t in texts], limit=5)
    for name, g, h in zip(names, by_grpc, by_http, strict=True):
        assert g.error is None and h["error"] is None
        assert g.matches[0].id == name, (g.text, [m.id for m in g.matches])
        assert [m.id for m in g.matches] == [m["id"] for m in h["matches"]]
        assert g.matches[0].text == truth[name] and g.matches[0].uri.endswith(name)
        scores = [m.score for m in g.matches]
        assert scores == sorted(scores, reverse=True) and len(scores) == 5
        PLAIN_RESULTS[g.text] = [(m.id, m.score) for m in g.matches]

    status = grpc_client(flow.grpc).post("/status", return_type=DocList[StatusDoc])
    assert status[0].info["count"] == 16


@pytest.mark.slow
def test_a_text_search_reply_times_the_executors_it_passed(flow, shapes):
    # the gateway's timing of each executor's part, as jina returns it with every reply
    transport = GrpcTransport(flow.grpc.removeprefix("grpc://"))
    try:
        query = DocList[SearchDoc]([SearchDoc(text=next(iter(captions(shapes).values())))])
        reply = transport.reply("/search", query, {"limit": 2})
    finally:
        transport.close()
    spans = {
        r.executor: (r.start_time.ToNanoseconds(), r.end_time.ToNanoseconds()) for r in reply.routes
    }
    timed = [name for name, (start, end) in spans.items() if 0 < start <= end]
    # the image encoder does not bind /search: jina skips it without timing it
    assert timed == ["gateway", "text_encoder", "indexer"], spans
    gateway, text_encoder, indexer = (spans[n] for n in timed)
    assert gateway[0] <= text_encoder[0] <= text_encoder[1] <= indexer[0] <= indexer[1]
    assert indexer[1] <= gateway[1]
    reply.document_array_cls = DocList[SearchDoc]
    assert len(reply.docs[0].matches) == 2


@pytest.mark.slow
def test_bad_documents_beside_good_ones_over_grpc_and_http(flow, shapes):
    good = (shapes / "images" / "red_square.png").read_bytes()
    sent = DocList[SearchDoc](
        [
            SearchDoc(id="extra-good", blob=good, text="extra"),
            SearchDoc(id="corrupt", blob=b"\x89PNG but not really"),
            SearchDoc(id="escape", uri="/etc/passwd"),
            SearchDoc(id="dotdot", uri="../../etc/passwd"),
            SearchDoc(id="remote", uri="http://169.254.169.254/latest/meta-data"),
            SearchDoc(id="nothing"),
            SearchDoc(id="empty-text", text="   "),
        ]
    )
    out = {
        d.id: d.error
        for d in grpc_client(flow.grpc).post("/index", sent, return_type=DocList[SearchDoc])
    }
    assert out["extra-good"] is None
    assert "cannot decode image" in out["corrupt"]
    assert "outside the allowed image roots" in out["escape"]
    assert "outside the allowed image roots" in out["dotdot"]
    assert "remote image URLs are refused" in out["remote"]
    assert out["nothing"] == "document has neither text nor image"
    assert out["empty-text"] == "text is empty"

    data_uri = "data:image/png;base64," + base64.b64encode(good).decode()
    sent = [{"text": "a red square"}, {"text": ""}, {"uri": "/etc/shadow"}, {"blob": data_uri}, {}]
    answers = http_post(flow.http, "/search", sent, limit=2)
    assert answers[0]["error"] is None and answers[0]["matches"]
    assert answers[1]["error"] == "text is empty" and not answers[1]["matches"]
    # text search passes only the text encoder: images are sent on, not read
    assert answers[2]["error"] == answers[3]["error"] == WRONG_MODALITY[TEXT]
    assert answers[4]["error"] == "document has neither text nor image"
    answers = http_post(flow.http, SEARCH_IMAGE, sent, limit=2)
    assert answers[0]["error"] == WRONG_MODALITY[IMAGE]
    assert "outside the allowed image roots" in answers[2]["error"]
    assert answers[3]["error"] is None  # an image query sent as a data: URI (JSON has no bytes)
    assert answers[3]["matches"][0]["id"] in ("red_square.png", "extra-good")
    assert answers[4]["error"] == "document has neither text nor image"

    # /delete passes the encoders untouched: id-only documents are not "neither text nor image"
    deleted = http_post(flow.http, "/delete", [{"id": "extra-good"}, {"id": "never-indexed"}])
    assert [d["error"] for d in deleted] == [None, "unknown id"]


@pytest.mark.slow
def test_restart_on_the_same_workspace_finds_everything(flow, shapes):
    texts = list(captions(shapes).values())
    before = [[(m.id, m.score) for m in d.matches] for d in grpc_search(flow.grpc, texts, 5)]
    flow.stop()
    flow.start()
    after = grpc_search(flow.grpc, texts, limit=5)
    assert [[(m.id, pytest.approx(m.score, abs=1e-5)) for m in d.matches] for d in after] == before
    status = grpc_client(flow.grpc).post("/status", return_type=DocList[StatusDoc])
    assert status[0].info["count"] == 16


# --- crash safety ---------------------------------------------------------------------------


@pytest.mark.slow
def test_every_reply_covers_its_request_on_the_plain_flow(flow, shapes):
    check_every_reply_covers_its_request(flow, shapes / "images" / "red_square.png")


def slow_items(shapes: Path, copies: int, delay_after: int, delay_s: float):
    """`copies` x 16 images under distinct ids; slowed down after the first `delay_after`, so
    that the job is surely still running when its Flow is killed."""
    names = sorted(captions(shapes))
    for k in range(copies):
        for name in names:
            if k * len(names) >= delay_after:
                time.sleep(delay_s)
            yield IndexItem(f"copy{k}/{name}", str(shapes / "images" / name))


@pytest.mark.slow
def test_kill_9_mid_indexing_loses_nothing_acknowledged(flow, shapes):
    acked: list[str] = []
    failure: list[BaseException] = []

    def index_job() -> None:
        try:
            SearchClient(flow.grpc).index(
                slow_items(shapes, copies=20, delay_after=48, delay_s=0.05),
                batch_size=8,
                on_batch=lambda batch: acked.extend(o.id for o in batch if o.error is None),
            )
        except BaseException as e:  # the Flow dies under it: expected
            failure.append(e)

    job = threading.Thread(target=index_job, daemon=True)
    job.start()
    deadline = time.monotonic() + 60
    while len(acked) < 40 and time.monotonic() < deadline and job.is_alive():
        time.sleep(0.05)
    assert len(acked) >= 40, f"indexing did not get going:\n{flow.log_tail()}"
    flow.kill(signal.SIGKILL)  # the whole process group: gateway and every executor
    job.join(timeout=60)
    assert not job.is_alive()
    assert len(acked) < 320 and failure, "the job should have been cut off mid-way"

    flow.start()  # same workspace
    client = SearchClient(flow.http)
    assert client.status()["count"] >= 16 + len(acked)
    found = {hit.id for hit in client.search(text="a red square", limit=1000)}
    assert set(acked) | set(captions(shapes)) <= found, sorted(set(acked) - found)[:10]


# --- the scaled Flow -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scaled(trained_run, shapes, start_flow):
    return start_flow(
        "scaled", "flow.scaled.yml", run_dir=trained_run, image_root=shapes / "images"
    )


@pytest.mark.slow
def test_sharded_replicated_flow_answers_like_the_plain_one(scaled, shapes):
    assert PLAIN_RESULTS, "runs after test_each_caption_finds_its_image_first_over_grpc_and_http"
    assert [d.error for d in index_shapes(scaled.grpc, shapes)] == [None] * 16
    info = grpc_client(scaled.grpc).post("/status", return_type=DocList[StatusDoc])[0].info
    assert info["count"] == 16 and len(info["shards"]) == 2
    per_shard = {s["shard_id"]: s["count"] for s in info["shards"]}
    # Re-indexing the same images replaces them on their owner shard, however they are
    # batched: no second copy (with `/index` polled ANY, a batch went to any one shard).
    for request_size in (16, 3):
        assert [d.error for d in index_shapes(scaled.grpc, shapes, request_size)] == [None] * 16
        info = grpc_client(scaled.grpc).post("/status", return_type=DocList[StatusDoc])
        counts = {s["shard_id"]: s["count"] for s in info[0].info["shards"]}
        assert info[0].info["count"] == 16 and counts == per_shard
    everything = grpc_search(scaled.grpc, ["a red square"], 100)[0].matches
    assert sorted(m.id for m in everything) == sorted(captions(shapes))
    texts = list(PLAIN_RESULTS)
    for answers in (
        [[(m.id, m.score) for m in d.matches] for d in grpc_search(scaled.grpc, texts, 5)],
        [
            [(m["id"], m["score"]) for m in d["matches"]]
            for d in http_post(scaled.http, "/search", [{"text": t} for t in texts], limit=5)
        ],
    ):
        for text, got in zip(texts, answers, strict=True):
            want = PLAIN_RESULTS[text]
            assert [i for i, _ in got] == [i for i, _ in want], text
            assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)
    # image search: its own endpoint, polled on all shards and merged too
    name = sorted(captions(shapes))[3]
    hits = SearchClient(scaled.grpc).search(image=shapes / "images" / name, limit=20)
    assert hits[0].id == name and hits[0].score == pytest.approx(1, abs=1e-3)
    assert len(hits) == 16 and [h.score for h in hits] == sorted(h.score for h in hits)[::-1]


@pytest.mark.slow
def test_every_reply_covers_its_request_on_the_scaled_flow(scaled, shapes):
    check_every_reply_covers_its_request(scaled, shapes / "images" / "red_square.png")


@pytest.mark.slow
def test_a_shard_killed_with_kill_9_is_reported_never_silently_missing(scaled, shapes):
    """The scaled Flow with one index shard killed: health fails naming it, searches are errors
    instead of half the results, status counts it missing, a delete or index of its ids says
    so, and the other shard's documents are still served."""
    names = sorted(captions(shapes))
    assert [d.error for d in index_shapes(scaled.grpc, shapes)] == [None] * 16
    for host in (scaled.grpc, scaled.http):
        health = SearchClient(host).health()
        assert health.healthy, health.error
        shards = sorted(e["shard"] for e in health.executors if e["shard"] is not None)
        assert shards == [0, 1], health.executors
    on_dead = [n for n in names if owner_shard(n, 2) == 1]
    on_live = [n for n in names if owner_shard(n, 2) == 0]
    assert on_dead and on_live

    os.kill(scaled.pid_of("indexer/shard-1/rep-0"), signal.SIGKILL)
    time.sleep(1)
    for host in (scaled.grpc, scaled.http):
        client = SearchClient(host, timeout=60)
        health = client.health()
        assert not health.healthy and "shard(s) 1 of 2 did not answer" in health.error, health
        cli = run_client(host, "health")
        assert cli.returncode == 1 and "shard(s) 1 of 2" in cli.stderr, cli
        answers = client.post("/search", [{"text": "a red square"}], {"limit": 16})
        assert answers[0]["error"] == missing_shards_error(1, 2, PARTIAL_RESULTS)
        assert not answers[0].get("matches")
        assert client.status()["missing_shards"] == 1
        deleted = {o.id: o.error for o in client.delete([on_dead[0], "never-indexed"])}
        assert deleted == dict.fromkeys(
            [on_dead[0], "never-indexed"], missing_shards_error(1, 2, MAYBE_ON_A_MISSING_SHARD)
        )
        got = {d["id"]: d for d in client.post("/get", [{"id": on_live[0]}, {"id": on_dead[1]}])}
        assert got[on_live[0]].get("error") is None
        assert got[on_dead[1]]["error"] == missing_shards_error(1, 2, MAYBE_ON_A_MISSING_SHARD)
    # re-indexing: the live shard's documents are stored, the dead shard's get an error
    outcomes = {d.id: d.error for d in index_shapes(scaled.grpc, shapes)}
    assert all(outcomes[n] is None for n in on_live)
    assert all(outcomes[n] == OWNER_DID_NOT_ANSWER for n in on_dead)
    scaled.kill()  # jina's orderly stop waits for the dead shard until its timeout


@pytest.mark.slow
def test_the_flow_serves_the_int8_onnx_towers(trained_run, shapes, tmp_path):
    """ENCODER_RUNTIME=onnx-int8: the same Flow on the towers' exported int8 graphs."""
    assert PLAIN_RESULTS, "runs after test_each_caption_finds_its_image_first_over_grpc_and_http"
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    export_onnx(run, int8=True, report=lambda line: None)
    env = served_flow.flow_env(run, tmp_path / "ws", shapes / "images", 1, runtime="onnx-int8")
    with ServedFlow("flow.yml", env, tmp_path / "flow.log") as served:
        assert [d.error for d in index_shapes(served.grpc, shapes)] == [None] * 16
        texts = list(PLAIN_RESULTS)
        firsts = [d.matches[0].id for d in grpc_search(served.grpc, texts, 1)]
        right = sum(first == PLAIN_RESULTS[t][0][0] for first, t in zip(firsts, texts, strict=True))
        assert right >= len(texts) - 1  # int8 may reorder a near tie, not much more
        name = sorted(captions(shapes))[5]
        hits = SearchClient(served.grpc).search(image=shapes / "images" / name, limit=3)
        assert hits[0].id == name and hits[0].score > 0.99


# --- configuration, without starting anything -------------------------------------------------


def test_flow_yml_defaults_apply_when_nothing_is_set():
    """What `jina flow --uses flow.yml` gets in a fresh shell: jina has no `${VAR:-default}`."""
    code = (
        "from jina import Flow\n"
        "for yml in ('flow.yml', 'flow.scaled.yml'):\n"
        "    f = Flow.load_config(yml)\n"
        "    f.build()\n"
        "    g = f['gateway'].args\n"
        "    e = f['image_encoder'].args\n"
        "    print(g.port, g.host, f.workspace, e.replicas, e.uses_with)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in FLOW_ENV_VARS}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()[-2:]
    for line, replicas in zip(lines, (1, 2), strict=True):
        assert line.startswith(f"[51000, 51001] 127.0.0.1 {REPO / 'workspace'} {replicas} "), line
        # unset variables reach the encoders as `$VAR`: they fall back to the same defaults
        assert "'tower': 'runs/demo/clip-vision'" in line or "'$VISION_TOWER'" in line, line


def test_flow_yml_takes_the_environment(monkeypatch, tmp_path):
    from jina import Flow

    env = {
        "GRPC_PORT": "52011",
        "HTTP_PORT": "52012",
        "HOST": "127.0.0.1",
        "WORKSPACE": str(tmp_path),
        "TEXT_TOWER": "/towers/text",
        "VISION_TOWER": "/towers/vision",
        "IMAGE_ROOTS": "/data/a:/data/b",
        "TORCH_THREADS": "3",
        "ENCODER_RUNTIME": "onnx-int8",
        "API_TOKEN": "s3cret",
        "COMPATIBLE_TOWERS": "clip-text:0123456789abcdef",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    f = Flow.load_config(str(REPO / "flow.yml"))
    f.build()
    assert f["gateway"].args.port == [52011, 52012] and f["gateway"].args.host == "127.0.0.1"
    assert f.workspace == str(tmp_path)
    assert f["text_encoder"].args.uses_with == {
        "tower": "/towers/text",
        "num_threads": 3,
        "runtime": "onnx-int8",
        "token": "s3cret",
    }
    assert f["indexer"].args.uses_with == {
        "token": "s3cret",
        "compatible_towers": "clip-text:0123456789abcdef",
    }
    assert f["image_encoder"].args.uses_with["allowed_roots"] == "/data/a:/data/b"
    assert f["image_encoder"].args.uses_with["allow_remote"] is False


def test_dockerfile_installs_like_the_makefile_and_copies_existing_files():
    dockerfile = (REPO / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    # the image installs the service's extra; the Makefile's `dev` includes it
    assert 'pip install -c constraints.txt -e ".[serve]"' in dockerfile
    assert '-c constraints.txt -e ".[dev]"' in makefile  # the Makefile's own install step
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "clip-finetune-search[serve,train,onnx]" in project["optional-dependencies"]["dev"]
    assert '"setuptools>=77,<81"' in dockerfile and '"setuptools>=77,<81"' in makefile
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                if source != ".":
                    assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
    assert 'CMD ["jina", "flow", "--uses", "flow.yml"]' in dockerfile
    assert "EXPOSE 51000 51001" in dockerfile and "ARG BASE_IMAGE=python:3.11-slim" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv/", "runs/", "workspace/", "data/"} <= set(ignored)
