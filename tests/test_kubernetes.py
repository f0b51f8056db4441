"""The Kubernetes export (deploy/kubernetes.py): jina's manifests of flow.scaled.yml, checked
strictly against the kubernetes client's models (no cluster on this project's machines), and
an indexer shard started with its container's own arguments and environment."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kubernetes.client import ApiClient

from client.api import ClientError, SearchClient
from client.wire import INDEX
from demo.served_flow import JINA, free_port
from deploy.kubernetes import (
    FIXED_SETTINGS,
    NAMESPACE_FILE,
    NETWORK_POLICY_FILE,
    SECRET_KEY,
    SETTABLE,
    export_manifests,
    health_command,
    main,
)
from executors.flow_env import FLOW_SETTINGS
from search.limits import MAX_DOCS_PER_REQUEST
from search.sharding import owner_shard

REPO = Path(__file__).resolve().parents[1]
IMAGE = "registry.example.com/clip-search:1.2"
NAMESPACE = "search-test"
SECRET = "search-token"
STORAGE = "3Gi"
# In the exporting shell: none of these may reach the manifests.
SHELL_TOKEN = "token-in-the-exporting-shell"
SHELL_ENV = {
    "API_TOKEN": SHELL_TOKEN,
    "TEXT_TOWER": "/shell/text-tower",
    "HOST": "127.0.0.1",
    "EXECUTOR_HOST": "127.0.0.1",
    "GRPC_PORT": "1234",
}
SETTINGS = {"TEXT_TOWER": "/models/text", "TORCH_THREADS": "2"}

# kind -> the kubernetes client's model; anything else must be a known CRD (checked apart).
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}
SERVICE_MONITOR = ("monitoring.coreos.com/v1", "ServiceMonitor")

SCALED = yaml.safe_load((REPO / "flow.scaled.yml").read_text())
(INDEXER,) = [e for e in SCALED["executors"] if e["uses"] == "HNSWIndexer"]
ENCODERS = [e for e in SCALED["executors"] if e is not INDEXER]


class Manifests:
    """The objects of one export, by file."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.objects = [
            (f, d) for f in files for d in yaml.safe_load_all(f.read_text(encoding="utf-8")) if d
        ]
        self.text = "".join(f.read_text(encoding="utf-8") for f in files)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for _, d in self.objects if d["kind"] == kind]

    def workload(self, name: str) -> dict[str, Any]:
        (found,) = [
            d
            for d in self.kind("Deployment") + self.kind("StatefulSet")
            if d["metadata"]["name"] == name
        ]
        return found

    def workloads(self) -> list[dict[str, Any]]:
        return self.kind("Deployment") + self.kind("StatefulSet")

    def config_map(self, workload: dict[str, Any]) -> dict[str, str]:
        (ref,) = containers(workload)[0]["envFrom"]
        name = ref["configMapRef"]["name"]
        (found,) = [c for c in self.kind("ConfigMap") if c["metadata"]["name"] == name]
        return found["data"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]


def pod_type(workload: dict[str, Any]) -> str:
    return workload["spec"]["template"]["metadata"]["labels"]["pod_type"]


def arg(container: dict[str, Any], flag: str) -> str | None:
    args = container["args"]
    return args[args.index(flag) + 1] if flag in args else None


def dns(name: str) -> str:
    return name.replace("_", "-")


@pytest.fixture(scope="module")
def shell_env():
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SHELL_ENV.items():
            mp.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def manifests(tmp_path_factory, shell_env) -> Manifests:
    out = tmp_path_factory.mktemp("export") / "k8s"
    files = export_manifests(
        out, image=IMAGE, namespace=NAMESPACE, storage=STORAGE, secret=SECRET, settings=SETTINGS
    )
    # the export leaves the caller's environment as it was
    assert {name: os.environ.get(name) for name in SHELL_ENV} == SHELL_ENV
    assert sorted(files) == sorted(out.rglob("*.yml"))
    return Manifests(files)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, shell_env) -> Manifests:
    """An export through the CLI, with --monitoring."""
    out = tmp_path_factory.mktemp("monitored") / "k8s"
    args = ["--output", str(out), "--image", IMAGE, "--namespace", NAMESPACE, "--monitoring"]
    args += ["--storage-class", "fast-ssd", "--set", "ENCODER_RUNTIME=onnx"]
    assert main(args) == 0
    return Manifests(sorted(out.rglob("*.yml")))


# ------------------------------------------------------------------- strict schema check


class _Response:
    """What `ApiClient.deserialize` reads: an HTTP response's JSON body in `.data`."""

    def __init__(self, obj: dict[str, Any]):
        self.data = json.dumps(obj)


def strict_round_trip(api: ApiClient, obj: dict[str, Any], model: str) -> None:
    """`obj` parsed into the client's `model` (required fields and types checked) and written
    back must be `obj` again: the client drops fields it does not know, so a misspelled or
    misplaced field fails here."""
    parsed = api.deserialize(_Response(obj), model)
    assert api.sanitize_for_serialization(parsed) == obj, f"{model} {obj.get('metadata')}"


def check_service_monitor(api: ApiClient, obj: dict[str, Any], services: list[dict]) -> None:
    """A ServiceMonitor (Prometheus Operator CRD, not in the client): the fields jina writes,
    no others, its metadata and selector through the client's models, and a named port of the
    Service it selects."""
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    strict_round_trip(api, obj["metadata"], "V1ObjectMeta")
    spec = obj["spec"]
    assert set(spec) == {"endpoints", "namespaceSelector", "selector"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    strict_round_trip(api, spec["selector"], "V1LabelSelector")
    (service,) = [s for s in services if s["metadata"]["labels"] == spec["selector"]["matchLabels"]]
    named = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) == {"port"} and endpoint["port"] in named
    assert named["monitoring"] == 9090


@pytest.mark.parametrize("export", ["manifests", "monitored"])
def test_every_object_parses_strictly_into_the_kubernetes_models(export, request):
    found: Manifests = request.getfixturevalue(export)
    kinds = set()
    with ApiClient() as api:
        for path, obj in found.objects:
            key = (obj["apiVersion"], obj["kind"])
            kinds.add(key)
            if key == SERVICE_MONITOR:
                check_service_monitor(api, obj, found.kind("Service"))
            else:
                assert key in MODELS, f"{path}: {key} has no model here"
                strict_round_trip(api, obj, MODELS[key])
            if obj["kind"] != "Namespace":
                assert obj["metadata"]["namespace"] == NAMESPACE, path
    assert set(MODELS) <= kinds
    assert (SERVICE_MONITOR in kinds) == (export == "monitored")
    (namespace,) = found.kind("Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert found.files[0].name == NAMESPACE_FILE  # applied first


def test_the_strict_check_fails_on_a_misplaced_field(manifests):
    # what jina's own StatefulSet template has: a Deployment's `strategy`
    shard = json.loads(json.dumps(manifests.workload("indexer-0")))
    shard["spec"]["strategy"] = {"type": "RollingUpdate"}
    with ApiClient() as api, pytest.raises(AssertionError):
        strict_round_trip(api, shard, "V1StatefulSet")


# ------------------------------------------------------------------- what the issue asks


def test_the_topology_is_flow_scaled_yml(manifests):
    names = {w["metadata"]["name"]: w for w in manifests.workloads()}
    shards = [f"indexer-{i}" for i in range(INDEXER["shards"])]
    assert set(names) == {"gateway", "indexer-head", *shards, *(dns(e["name"]) for e in ENCODERS)}
    for encoder in ENCODERS:
        workload = names[dns(encoder["name"])]
        assert workload["kind"] == "Deployment"
        assert workload["spec"]["replicas"] == encoder["replicas"]
        (container,) = containers(workload)
        assert arg(container, "--uses") == encoder["uses"]
        assert arg(container, "--py-modules") == encoder["py_modules"][0]
    head = names["indexer-head"]
    assert [c["name"] for c in containers(head)] == ["executor", "uses-after"]
    assert json.loads(arg(containers(head)[0], "--polling")) == INDEXER["polling"]
    assert arg(containers(head)[0], "--uses-after-address") == "127.0.0.1:8079"
    merger = containers(head)[1]
    assert arg(merger, "--uses") == INDEXER["uses_after"] and arg(merger, "--port") == "8079"
    for workload in manifests.workloads():
        for container in containers(workload):
            assert container["image"] == IMAGE
            assert "config.yml" not in container["args"]  # the image has none


def test_each_shard_keeps_its_workspace_on_its_own_volume(manifests):
    services = {s["metadata"]["name"] for s in manifests.kind("Service")}
    for shard in range(INDEXER["shards"]):
        workload = manifests.workload(f"indexer-{shard}")
        assert workload["kind"] == "StatefulSet" and workload["spec"]["replicas"] == 1
        assert workload["spec"]["serviceName"] in services
        (claim,) = workload["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["resources"]["requests"]["storage"] == STORAGE
        assert "storageClassName" not in claim["spec"]  # the cluster's default
        (container,) = containers(workload)
        assert arg(container, "--uses") == INDEXER["uses"]
        assert arg(container, "--shards") == str(INDEXER["shards"])
        assert (arg(container, "--shard-id") or "0") == str(shard)
        (mount,) = container["volumeMounts"]
        assert mount["name"] == claim["metadata"]["name"]
        assert arg(container, "--workspace") == mount["mountPath"]
        assert workload["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 1000


def test_readiness_probes_run_the_health_check(manifests):
    probed = set()
    for workload in manifests.workloads():
        for container in containers(workload):
            # jina's own probes stay
            assert container["startupProbe"]["exec"]["command"][:2] == ["jina", "ping"]
            assert container["livenessProbe"]["exec"]["command"][:2] == ["jina", "ping"]
            if "readinessProbe" not in container:
                continue
            probe = container["readinessProbe"]
            port = container["ports"][0]["containerPort"]
            assert probe["exec"]["command"] == health_command(port)
            assert probe["exec"]["command"][-1] == "health"
            assert probe["timeoutSeconds"] > 5  # beyond the client's own --timeout 5
            probed.add((workload["metadata"]["name"], container["name"]))
    shards = {(f"indexer-{i}", "executor") for i in range(INDEXER["shards"])}
    encoders = {(dns(e["name"]), "executor") for e in ENCODERS}
    assert probed == {("gateway", "gateway"), *shards, *encoders}
    # the gateway's probe asks its gRPC port
    (gateway,) = containers(manifests.workload("gateway"))
    protocols = gateway["args"][gateway["args"].index("--protocol") + 1 :][:2]
    assert protocols[0] == "GRPC" and gateway["ports"][0]["containerPort"] == 8080


def test_the_api_token_comes_from_the_secret_only(manifests):
    assert SHELL_TOKEN not in manifests.text
    for workload in manifests.workloads():
        assert "API_TOKEN" not in manifests.config_map(workload)
        if pod_type(workload) == "GATEWAY":
            continue
        executor = containers(workload)[0]  # a head's uses-after container is told no token
        [token] = [e for e in executor["env"] if e["name"] == "API_TOKEN"]
        assert token == {
            "name": "API_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": SECRET, "key": SECRET_KEY}},
        }
        if pod_type(workload) == "WORKER":  # encoders and shards check the token
            uses_with = json.loads(arg(executor, "--uses-with"))
            assert uses_with["token"] == "$API_TOKEN"  # expanded in the pod, from the Secret


def test_settings_reach_the_pods_and_pods_listen_on_all_interfaces(manifests):
    assert "/shell/text-tower" not in manifests.text and "1234" not in manifests.text
    for workload in manifests.workloads():
        data = manifests.config_map(workload)
        assert data["HOST"] == data["EXECUTOR_HOST"] == "0.0.0.0"
        if pod_type(workload) != "GATEWAY":
            assert {k: data[k] for k in SETTINGS} == SETTINGS
        for container in containers(workload):
            if container["name"] == "uses-after":  # reached by its head in the pod only
                assert arg(container, "--host") == "127.0.0.1"
                continue
            # jina leaves out --host at its default: all interfaces
            assert arg(container, "--host") in (None, "0.0.0.0")
    (text,) = containers(manifests.workload("text-encoder"))
    uses_with = json.loads(arg(text, "--uses-with"))
    assert uses_with["tower"] == "$TEXT_TOWER" and uses_with["num_threads"] == "$TORCH_THREADS"


def test_monitoring(monitored):
    monitors = {m["metadata"]["name"] for m in monitored.kind("ServiceMonitor")}
    # flow.scaled.yml keeps the indexer unmonitored: jina gives its head and uses_after the
    # same metrics port, in the pod as locally (below)
    assert monitors == {"gateway", *(dns(e["name"]) for e in ENCODERS)}
    assert INDEXER["monitoring"] is False
    head = monitored.workload("indexer-head")
    assert {arg(c, "--port-monitoring") for c in containers(head)} == {"9090"}
    for name in monitors - {"gateway"}:
        (container,) = containers(monitored.workload(name))
        assert "--monitoring" in container["args"]
        assert monitored.config_map(monitored.workload(name))["ENCODER_RUNTIME"] == "onnx"
    for shard in range(INDEXER["shards"]):
        workload = monitored.workload(f"indexer-{shard}")
        (claim,) = workload["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["storageClassName"] == "fast-ssd"


ANYONE = "anyone"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, selector  # what the check below reads
    return selector["matchLabels"].items() <= labels.items()


def who_may_connect(found: Manifests) -> dict[str, dict[int, set[str] | str]]:
    """workload -> port -> the workloads whose pods may connect to its pods there (ANYONE: any
    source), read from the NetworkPolicies by matching their selectors against every pod."""
    pods = {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"]
        for w in found.workloads()
    }
    policies = found.kind("NetworkPolicy")
    assert {f.name for f, d in found.objects if d["kind"] == "NetworkPolicy"} == {
        NETWORK_POLICY_FILE
    }
    allowed: dict[str, dict[int, set[str] | str]] = {}
    for name, labels in pods.items():
        # exactly one policy per pod: none would leave it open, two would add up
        (policy,) = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        ports = allowed.setdefault(name, {})
        for rule in policy["spec"]["ingress"]:
            sources: set[str] | str = ANYONE
            if "from" in rule:
                # peers of pods in the policy's own namespace only, chosen by their labels
                assert all(set(peer) == {"podSelector"} for peer in rule["from"]), rule
                sources = {
                    pod
                    for peer in rule["from"]
                    for pod, pod_labels in pods.items()
                    if selects(peer["podSelector"], pod_labels)
                }
            for port in rule["ports"]:
                assert port["protocol"] == "TCP" and port["port"] not in ports, policy
                ports[port["port"]] = sources
    return allowed


@pytest.mark.parametrize("export", ["manifests", "monitored"])
def test_only_the_gateway_reaches_the_executors_and_only_the_head_the_shards(export, request):
    """jina's executors serve RPCs no other pod may call (restore removes the file it is named;
    executors/base.py refuses it): the NetworkPolicies let the gateway reach the encoders and
    the shards' head, the head its shards, and anyone the gateway's ports; nothing reaches the
    merger's port, which listens in its pod only."""
    found: Manifests = request.getfixturevalue(export)
    gateway = {"gateway"}
    expected = {
        "gateway": {8080: ANYONE, 8081: ANYONE},
        **{dns(e["name"]): {8080: gateway} for e in ENCODERS},
        "indexer-head": {8080: gateway},
        **{f"indexer-{i}": {8080: {"indexer-head"}} for i in range(INDEXER["shards"])},
    }
    if export == "monitored":  # metrics from wherever Prometheus runs; the indexer has none
        for name in ("gateway", *(dns(e["name"]) for e in ENCODERS)):
            expected[name][9090] = ANYONE
    assert who_may_connect(found) == expected
    head = found.workload("indexer-head")
    assert [c["ports"][0]["containerPort"] for c in containers(head)] == [8080, 8079]


def test_the_policy_check_fails_on_a_selector_that_takes_in_other_pods(manifests):
    def policy(found: Manifests, name: str) -> dict[str, Any]:
        (found_policy,) = [p for p in found.kind("NetworkPolicy") if p["metadata"]["name"] == name]
        return found_policy

    # a shard's policy selecting its deployment: the head and the other shard too
    wide = copy.deepcopy(manifests)
    policy(wide, "indexer-0-ingress")["spec"]["podSelector"]["matchLabels"] = {
        "jina_deployment_name": "indexer"
    }
    with pytest.raises(ValueError):
        who_may_connect(wide)
    # the head's peer chosen by namespace label: every pod of the namespace may connect
    wide = copy.deepcopy(manifests)
    [rule] = policy(wide, "indexer-head-ingress")["spec"]["ingress"]
    rule["from"][0]["podSelector"]["matchLabels"] = {"ns": NAMESPACE}
    assert who_may_connect(wide)["indexer-head"][8080] == {
        w["metadata"]["name"] for w in manifests.workloads()
    }


# ------------------------------------------------------------------- checks and errors


def test_settings_are_checked(tmp_path, capsys):
    assert set(SETTABLE) | set(FIXED_SETTINGS) == set(FLOW_SETTINGS)
    with pytest.raises(ValueError, match="unknown setting 'TEXT_TOWR'"):
        export_manifests(tmp_path / "a", settings={"TEXT_TOWR": "x"})
    with pytest.raises(ValueError, match="API_TOKEN cannot be set here: .*Secret"):
        export_manifests(tmp_path / "a", settings={"API_TOKEN": "x"})
    with pytest.raises(SystemExit) as exit:
        main(["--output", str(tmp_path / "b"), "--set", "WORKSPACE=/x"])
    assert exit.value.code == 2
    assert "WORKSPACE cannot be set here" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--output", str(tmp_path / "b"), "--set", "TEXT_TOWER"])
    assert "expected NAME=VALUE" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "old.yml").write_text("{}")
    with pytest.raises(FileExistsError, match="not empty"):
        export_manifests(tmp_path / "c")
    with pytest.raises(ValueError, match="quantity"):
        export_manifests(tmp_path / "d", storage="ten gigs")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------- a shard as its pod runs


@contextmanager
def pod_process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`jina ARGS` as a container runs it, from the project (the image's working directory);
    stopped, or killed, on leaving."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [JINA, *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def until_up(proc: subprocess.Popen, log: Path, call: Callable[[], Any], errors: tuple) -> Any:
    """`call()` once the process answers it (60 s at most)."""
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            return call()
        except errors:
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)


def test_a_shard_and_the_gateway_started_as_their_pods_serve_with_the_token(
    manifests, tmp_path, monkeypatch
):
    """`jina executor` with the shard container's own arguments (port, address and workspace
    moved to this machine) and environment (its ConfigMap, API_TOKEN as the Secret gives it):
    `$API_TOKEN` must be expanded there, or the shard would be open to writes. Then `jina
    gateway` with the gateway container's arguments, routed to that shard alone: it loads the
    service's gateway from the project and serves its HTTP API."""
    workload = manifests.workload("indexer-1")
    (container,) = containers(workload)
    args = list(container["args"])
    port = free_port()
    for flag, value in (("--port", str(port)), ("--host", "127.0.0.1")):
        args[args.index(flag) + 1] = value
    args[args.index("--workspace") + 1] = str(tmp_path / "ws")
    env = {k: v for k, v in os.environ.items() if k not in FLOW_SETTINGS}
    env.pop("SEARCH_TOKEN", None)
    monkeypatch.delenv("SEARCH_TOKEN", raising=False)  # the client's default token
    env.update(manifests.config_map(workload), API_TOKEN="the-secret")
    doc_id = next(f"doc-{i}" for i in range(100) if owner_shard(f"doc-{i}", 2) == 1)
    docs = [{"id": doc_id, "embedding": [0.1, 0.2, 0.3, 0.4]}]

    def index(token: str | None) -> str | None:
        client = SearchClient(f"grpc://127.0.0.1:{port}", timeout=10, token=token)
        try:
            [answer] = client.post(INDEX, docs)
        finally:
            client.close()
        return answer.get("error")

    log = tmp_path / "shard.log"
    with pod_process(args, env, log) as shard:
        refused = until_up(shard, log, lambda: index(None), (ClientError,))
        assert refused and "requires a token" in refused
        assert "requires a token" in index("wrong")
        assert index("the-secret") is None
        # its readiness probe, as the pod runs it
        probe = container["readinessProbe"]["exec"]["command"]
        assert probe == health_command(8080)
        probe = [str(Path(JINA).with_name(probe[0])), *health_command(port)[1:]]
        health = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr
        check_the_gateway_pod(manifests, port, doc_id, tmp_path)


def check_the_gateway_pod(manifests: Manifests, shard_port: int, doc_id: str, tmp: Path) -> None:
    (container,) = containers(manifests.workload("gateway"))
    args = list(container["args"])
    assert args[args.index("--uses") + 1] == "SearchGateway"
    grpc_port, http_port = free_port(), free_port()
    at = args.index("--port")
    args[at + 1 : at + 3] = [str(grpc_port), str(http_port)]
    graph = {"start-gateway": ["indexer"], "indexer": ["end-gateway"]}
    args[args.index("--graph-description") + 1] = json.dumps(graph)
    addresses = {"indexer": [f"grpc://127.0.0.1:{shard_port}"]}
    args[args.index("--deployments-addresses") + 1] = json.dumps(addresses)
    env = {k: v for k, v in os.environ.items() if k not in FLOW_SETTINGS}
    env.update(manifests.config_map(manifests.workload("gateway")))
    url, log = f"http://127.0.0.1:{http_port}", tmp / "gateway.log"
    with pod_process([*args, "--host", "127.0.0.1"], env, log) as gateway:

        def get(token: str | None) -> requests.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            body = {"data": [{"id": doc_id}, {"id": "never-indexed"}]}
            return requests.post(f"{url}/get", json=body, headers=headers, timeout=30)

        answer = until_up(gateway, log, lambda: get(None), (requests.ConnectionError,))
        assert answer.status_code == 200, answer.text
        assert [d["error"] for d in answer.json()["data"]] == [None, "unknown id"]
        deleted = requests.post(f"{url}/delete", json={"data": [{"id": doc_id}]}, timeout=30)
        assert "requires a token" in deleted.json()["data"][0]["error"]
        too_many = {"data": [{"id": "x"}] * (MAX_DOCS_PER_REQUEST + 1)}
        assert requests.post(f"{url}/get", json=too_many, timeout=30).status_code == 413
        deleted = requests.post(
            f"{url}/delete",
            json={"data": [{"id": doc_id}]},
            headers={"Authorization": "Bearer the-secret"},
            timeout=30,
        )
        assert deleted.json()["data"][0]["error"] is None, deleted.text
