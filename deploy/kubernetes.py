"""Kubernetes manifests for the scaled search service (flow.scaled.yml), written by jina's own
export (`Flow.to_kubernetes_yaml`):

    python -m deploy.kubernetes --image registry.example.com/clip-search:1 --output k8s

flow.scaled.yml stays the one place the topology lives (encoder replicas, indexer shards, their
polling and `MatchMerger`); this module only prepares that Flow for jina's exporter and then
post-processes what it wrote (the manual: docs/kubernetes.md):

- Every executor and the gateway run the project image (jina's export needs a `docker://` image
  for each). jina then starts the container with `--uses config.yml`; that becomes the class
  flow.scaled.yml names, imported through the same `--py-modules` as in a local Flow, so the
  image needs no config file per executor and relative settings keep meaning the image's /app.
- Each indexer shard is a StatefulSet whose PersistentVolumeClaim is mounted on its workspace.
- API_TOKEN comes from a Secret; the containers' arguments carry the text `$API_TOKEN`, which
  each executor expands from its own environment when it starts (see executors/flow_env.py).
- The gateway and every encoder and shard container get `clip-search health` as readiness
  probe, beside jina's own startup and liveness probes.
- Settings (executors/flow_env.py) land in the pods' ConfigMaps; pods listen on all interfaces,
  except the shards' merger (`uses_after`), which its head reaches inside their pod.
- network-policies.yml: one NetworkPolicy per workload, so that only the gateway reaches the
  encoders and the shards' head, and only the head reaches the shards (jina's executors serve
  RPCs that no other pod should call; see executors/base.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from executors.flow_env import FLOW_ENV_DEFAULTS, FLOW_SETTINGS

FLOW_FILE = Path(__file__).resolve().parents[1] / "flow.scaled.yml"
DEFAULT_IMAGE = "clip-search:latest"
DEFAULT_NAMESPACE = "clip-search"
DEFAULT_SECRET = "clip-search-api-token"
SECRET_KEY = "token"
DEFAULT_STORAGE = "10Gi"
# The index executor: its shards keep their workspace on a persistent volume.
INDEXER_CLASS = "HNSWIndexer"
# Where each shard's volume is mounted and its workspace points (the index lives under
# WORKSPACE_MOUNT/HNSWIndexer/<shard>/). The image's own /app/workspace, so the encoders, which
# store nothing, get a writable workspace there too.
WORKSPACE_MOUNT = "/app/workspace"
# The Dockerfile's `app` user (uid 1000): a fresh volume is root's, fsGroup makes it writable.
APP_GID = 1000
NAMESPACE_FILE = "00-namespace.yml"  # first in `kubectl apply -R`'s (lexical) order
NETWORK_POLICY_FILE = "network-policies.yml"
KINDS_OF_WORKLOAD = ("Deployment", "StatefulSet")

# Settings the export fixes, with why; the other FLOW_SETTINGS may be given with --set.
FIXED_SETTINGS: dict[str, str] = {
    "HOST": "the gateway listens on all interfaces of its pod",
    "EXECUTOR_HOST": "the executors listen on all interfaces of their pods",
    "WORKSPACE": f"the indexer shards' workspace is their volume, mounted at {WORKSPACE_MOUNT}",
    "API_TOKEN": "it comes from the Secret (--secret), never from the manifests",
    "MONITORING": "use --monitoring",
    "GRPC_PORT": "jina's export fixes the ports (gateway: gRPC 8080, HTTP 8081)",
    "HTTP_PORT": "jina's export fixes the ports (gateway: gRPC 8080, HTTP 8081)",
    "GATEWAY_METRICS_PORT": "jina's export fixes the metrics port (9090 in every pod)",
    "IMAGE_ENCODER_METRICS_PORTS": "jina's export fixes the metrics port (9090 in every pod)",
    "TEXT_ENCODER_METRICS_PORTS": "jina's export fixes the metrics port (9090 in every pod)",
    "INDEXER_METRICS_PORTS": "jina's export fixes the metrics port (9090 in every pod)",
}
SETTABLE = tuple(name for name in FLOW_SETTINGS if name not in FIXED_SETTINGS)
POD_ENV = {"HOST": "0.0.0.0", "EXECUTOR_HOST": "0.0.0.0"}

# The readiness probe: `/health` through whatever the container serves (the gateway: every
# executor and shard; an encoder or a shard: itself). The console script rather than
# `python -m client`: a CUDA base image may have no `python` on its PATH. One run takes ~3 s
# (the client imports docarray, hence torch), hence the long period and timeout.
HEALTH_PROBE_TIMEOUT_S = 5


def health_command(port: int) -> list[str]:
    """The readiness probe's command for a container serving gRPC on `port`."""
    return [
        "clip-search",
        "--host",
        f"grpc://127.0.0.1:{port}",
        "--timeout",
        str(HEALTH_PROBE_TIMEOUT_S),
        "health",
    ]


def parse_setting(text: str) -> tuple[str, str]:
    """`NAME=VALUE` -> (NAME, VALUE), checked against the settable FLOW_SETTINGS."""
    name, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    check_settings({name: value})
    return name, value


def check_settings(settings: Mapping[str, str]) -> dict[str, str]:
    """The settings as strings; ValueError naming the problem for an unknown setting or one
    the export sets itself."""
    for name in settings:
        if name in FIXED_SETTINGS:
            raise ValueError(f"{name} cannot be set here: {FIXED_SETTINGS[name]}")
        if name not in FLOW_SETTINGS:
            raise ValueError(
                f"unknown setting {name!r}; the ones to set: {', '.join(SETTABLE)} "
                "(see executors/flow_env.py)"
            )
    return {name: str(value) for name, value in settings.items()}


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def export_manifests(
    output_dir: str | os.PathLike,
    image: str = DEFAULT_IMAGE,
    namespace: str = DEFAULT_NAMESPACE,
    storage: str = DEFAULT_STORAGE,
    storage_class: str | None = None,
    secret: str = DEFAULT_SECRET,
    settings: Mapping[str, str] | None = None,
    monitoring: bool = False,
    flow_file: str | os.PathLike = FLOW_FILE,
) -> list[Path]:
    """Write the manifests of `flow_file` into `output_dir` (which must not hold files yet: an
    old export's leftovers would be applied too) and return their paths.

    `image`: the project image (Dockerfile) every pod runs; `storage`, `storage_class`: each
    shard's volume (None: the cluster's default class); `secret`: the Secret whose key `token`
    is API_TOKEN; `settings`: FLOW_SETTINGS values for the pods' environment; `monitoring`:
    jina's Prometheus metrics, with a ServiceMonitor per monitored deployment.
    """
    output = Path(output_dir)
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"{output} is not empty: remove it first")
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"not an image name: {image!r}")
    for what, name in (("namespace", namespace), ("secret", secret)):
        if not _DNS_LABEL.match(name):
            raise ValueError(f"{what} must be a DNS label (a-z, 0-9, '-'), got {name!r}")
    if not _QUANTITY.match(storage):
        raise ValueError(f"storage must be a Kubernetes quantity such as 10Gi, got {storage!r}")
    env = {**POD_ENV, **check_settings(settings or {})}

    flow = yaml.safe_load(Path(flow_file).read_text(encoding="utf-8"))
    classes = _executor_classes(flow)
    with tempfile.TemporaryDirectory() as tmp:
        with _export_environment(image, storage, monitoring):
            # jina drops a sharded deployment's uses_after container when the deployment has
            # volumes (it picks its StatefulSet template over the uses-after one), so the
            # shards come from an export with volumes and their head from one without.
            with_volumes = _jina_export(
                _prepare(flow, image, secret, env, True), Path(tmp, "v"), namespace
            )
            without = _jina_export(
                _prepare(flow, image, secret, env, False), Path(tmp, "n"), namespace
            )
        files = {
            rel: (without if rel.name.endswith("-head.yml") else with_volumes)[rel]
            for rel in with_volumes
        }
        written = [_write(output / NAMESPACE_FILE, [_namespace(namespace)])]
        objects = []
        for rel, path in sorted(files.items()):
            docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
            for doc in docs:
                _finish(doc, classes, storage_class)
            written.append(_write(output / rel, docs))
            objects += docs
    written.append(_write(output / NETWORK_POLICY_FILE, network_policies(objects, namespace)))
    return written


def _executor_classes(flow: dict[str, Any]) -> dict[str, dict[str, str]]:
    """executor name -> container name (as jina names them) -> what the container runs."""
    classes = {}
    for executor in flow.get("executors") or []:
        containers = {"executor": executor["uses"]}
        for key, container in (("uses_before", "uses-before"), ("uses_after", "uses-after")):
            if executor.get(key):
                containers[container] = executor[key]
        classes[executor["name"]] = containers
    if not any(c.get("executor") == INDEXER_CLASS for c in classes.values()):
        raise ValueError(f"the Flow has no {INDEXER_CLASS} executor")
    if (flow.get("gateway") or {}).get("uses"):
        classes["gateway"] = {"gateway": flow["gateway"]["uses"]}
    return classes


def _prepare(
    flow: dict[str, Any], image: str, secret: str, env: dict[str, str], volumes: bool
) -> dict[str, Any]:
    """flow.scaled.yml as jina's exporter needs it: images, the Secret, the environment, and
    the indexer's workspace on its volume."""
    flow = copy.deepcopy(flow)
    flow.setdefault("with", {})["env"] = dict(POD_ENV)  # the gateway's
    if (flow.get("gateway") or {}).get("uses"):
        flow["gateway"]["uses"] = f"docker://{image}"
    for executor in flow["executors"]:
        uses = executor["uses"]
        for key in ("uses", "uses_before", "uses_after"):
            if executor.get(key):
                executor[key] = f"docker://{image}"
        executor["env_from_secret"] = {"API_TOKEN": {"name": secret, "key": SECRET_KEY}}
        executor["env"] = dict(env)
        if uses == INDEXER_CLASS:
            executor["workspace"] = WORKSPACE_MOUNT
            if volumes:
                executor["volumes"] = [WORKSPACE_MOUNT]
    return flow


@contextmanager
def _export_environment(image: str, storage: str, monitoring: bool) -> Iterator[None]:
    """The process environment jina reads while it loads and exports the Flow, restored
    afterwards; it makes the manifests independent of the caller's shell."""
    values = {
        # Each runtime setting stays the text `$NAME` in the container arguments (jina expands
        # `$NAME` once more while it builds the Flow: with the variable holding that same text
        # the arguments keep it), and each executor expands it from its pod's environment.
        **{name: f"${name}" for name in (*SETTABLE, "API_TOKEN")},
        **POD_ENV,
        "WORKSPACE": WORKSPACE_MOUNT,
        "MONITORING": "true" if monitoring else "false",
        **{name: FLOW_ENV_DEFAULTS[name] for name in FIXED_SETTINGS if "PORT" in name},
        "JINA_GATEWAY_IMAGE": image,  # else jina asks Jina Hub for its gateway image
        "JINA_K8S_STORAGE_CAPACITY": storage,
        "JINA_K8S_ACCESS_MODES": '["ReadWriteOnce"]',
        "JINA_LOG_CONFIG": "QUIET",  # its "files created under <temporary folder>"
    }
    saved = {name: os.environ.get(name) for name in values}
    timeout = socket.getdefaulttimeout()
    os.environ.update(values)
    # jina asks Docker Hub for its version tag (a pod label it does not use) without a
    # timeout: offline, a connection that hangs instead of failing would stall the export.
    socket.setdefaulttimeout(3)
    try:
        yield
    finally:
        socket.setdefaulttimeout(timeout)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _jina_export(flow: dict[str, Any], out: Path, namespace: str) -> dict[Path, Path]:
    """jina's export of `flow` into `out`: {path relative to `out`: path}."""
    from jina import Flow  # heavy: only when exporting

    Flow.load_config(flow).to_kubernetes_yaml(str(out), k8s_namespace=namespace)
    return {p.relative_to(out): p for p in out.rglob("*.yml")}


def _finish(doc: dict[str, Any], classes: dict[str, dict[str, str]], storage_class: str | None):
    """Post-process one of jina's objects in place."""
    if doc.get("kind") not in KINDS_OF_WORKLOAD:
        return
    pod = doc["spec"]["template"]
    labels = pod["metadata"]["labels"]
    pod_type = labels["pod_type"]
    for container in pod["spec"]["containers"]:
        args = container["args"]
        for i in range(len(args) - 1):
            if args[i] == "--uses" and args[i + 1] == "config.yml":
                args[i + 1] = classes[labels["jina_deployment_name"]][container["name"]]
            # The merger serves jina's restore RPC too, and only its head, in the same pod,
            # calls it (--uses-after-address 127.0.0.1:8079): no need to listen on the pod's IP.
            if args[i] == "--host" and container["name"] == "uses-after":
                args[i + 1] = "127.0.0.1"
        # Not on a shard's head nor its uses_after (MatchMerger): alone, the merger reports
        # shards missing; and a head out of its Service would turn one missing shard into an
        # unreachable index. The gateway's probe covers both.
        if pod_type == "GATEWAY" or (pod_type == "WORKER" and container["name"] == "executor"):
            container["readinessProbe"] = {
                "exec": {"command": health_command(container["ports"][0]["containerPort"])},
                "periodSeconds": 20,
                "timeoutSeconds": 20,
                "failureThreshold": 3,
            }
    if doc["kind"] == "StatefulSet":
        spec = doc["spec"]
        # jina's StatefulSet template carries a Deployment's `strategy` (with maxSurge), which
        # the API rejects as an unknown field; a StatefulSet's is `updateStrategy`.
        spec.pop("strategy", None)
        spec["updateStrategy"] = {"type": "RollingUpdate"}
        spec["serviceName"] = doc["metadata"]["name"]  # the Service jina made for it
        pod["spec"]["securityContext"] = {"fsGroup": APP_GID}
        for claim in spec.get("volumeClaimTemplates", []):
            if storage_class:
                claim["spec"]["storageClassName"] = storage_class
            else:  # jina's default, "standard", does not exist on every cluster
                claim["spec"].pop("storageClassName", None)


def network_policies(objects: Sequence[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """One NetworkPolicy per Deployment or StatefulSet of `objects`, selecting its pods: they
    accept connections only from the pods that jina routes to them (read from the addresses
    in the gateway's `--deployments-addresses` and a head's `--connection-list`, on the
    Service ports those name), the gateway's from anyone, and a monitored container's metrics
    port from anyone (Prometheus runs wherever the cluster runs it)."""
    workloads = {d["metadata"]["name"]: d for d in objects if d["kind"] in KINDS_OF_WORKLOAD}
    services = {d["metadata"]["name"]: d for d in objects if d["kind"] == "Service"}
    # workload -> the workload allowed to connect (None: anyone) -> its ports
    allowed: dict[str, dict[str | None, set[int]]] = {name: {} for name in workloads}
    for name, workload in workloads.items():
        pod = workload["spec"]["template"]
        for container in pod["spec"]["containers"]:
            args = container["args"]
            if pod["metadata"]["labels"]["pod_type"] == "GATEWAY":
                ports = {p["containerPort"] for p in container["ports"]}
                allowed[name].setdefault(None, set()).update(ports)
            if "--monitoring" in args:
                port = int(args[args.index("--port-monitoring") + 1])
                allowed[name].setdefault(None, set()).add(port)
            for address in _routed_addresses(args):
                target, port = _service_target(address, services, workloads)
                allowed[target].setdefault(name, set()).add(port)

    def rule(source: str | None, ports: set[int]) -> dict[str, Any]:
        peers = {} if source is None else {"from": [{"podSelector": _selector(workloads[source])}]}
        return {**peers, "ports": [{"protocol": "TCP", "port": port} for port in sorted(ports)]}

    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"{name}-ingress", "namespace": namespace},
            "spec": {
                "podSelector": _selector(workloads[name]),
                "policyTypes": ["Ingress"],
                "ingress": [
                    rule(source, ports)
                    for source, ports in sorted(rules.items(), key=lambda r: r[0] or "")
                ],
            },
        }
        for name, rules in sorted(allowed.items())
    ]


def _selector(workload: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(workload["spec"]["selector"])  # YAML would write shared ones as aliases


def _routed_addresses(args: list[str]) -> list[str]:
    """The addresses a gateway (`--deployments-addresses`) or a head (`--connection-list`)
    sends requests to."""
    addresses: list[str] = []
    for flag in ("--deployments-addresses", "--connection-list"):
        if flag in args:
            for value in json.loads(args[args.index(flag) + 1]).values():
                addresses += value if isinstance(value, list) else [value]
    return addresses


def _service_target(
    address: str, services: Mapping[str, dict[str, Any]], workloads: Mapping[str, dict[str, Any]]
) -> tuple[str, int]:
    """(workload name, container port) behind an address `[grpc://]SERVICE.NAMESPACE.svc:PORT`;
    ValueError when the export has no such Service port or workload."""
    host, _, port = address.split("://")[-1].rpartition(":")
    service = services.get(host.split(".")[0], {"spec": {"ports": []}})
    targets = [p["targetPort"] for p in service["spec"]["ports"] if str(p["port"]) == port]
    for name, workload in workloads.items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        if targets and service["spec"]["selector"].items() <= labels.items():
            return name, int(targets[0])
    raise ValueError(f"no Service port and workload in the export for the address {address!r}")


def _namespace(name: str) -> dict[str, Any]:
    # jina's Flow export writes none (its template for one goes unused)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def _write(path: Path, docs: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    settable = ", ".join(SETTABLE)
    parser = argparse.ArgumentParser(
        prog="python -m deploy.kubernetes",
        description=(
            "Write the Kubernetes manifests of the scaled search service (flow.scaled.yml: "
            "2 replicas per encoder, 2 indexer shards) with jina's export: each shard keeps "
            "its index on a persistent volume, the health check is the readiness probe, and "
            "API_TOKEN comes from a Secret. See docs/kubernetes.md."
        ),
    )
    parser.add_argument(
        "--output", default="k8s", help="folder to write, empty or new (default: k8s)"
    )
    parser.add_argument(
        "--image",
        default=DEFAULT_IMAGE,
        help="the project's image (Dockerfile) every pod runs (default: %(default)s)",
    )
    parser.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help="namespace (default: %(default)s)"
    )
    parser.add_argument(
        "--secret",
        default=DEFAULT_SECRET,
        help=f"Secret whose key '{SECRET_KEY}' is API_TOKEN; create it with kubectl "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help="each index shard's volume (default: %(default)s)",
    )
    parser.add_argument(
        "--storage-class", help="StorageClass of the shards' volumes (default: the cluster's)"
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        type=_setting_arg,
        help=f"a setting for the pods' environment, repeatable; one of: {settable}",
    )
    parser.add_argument(
        "--monitoring",
        action="store_true",
        help="jina's Prometheus metrics, with a ServiceMonitor (Prometheus Operator) for each",
    )
    args = parser.parse_args(argv)
    try:
        written = export_manifests(
            args.output,
            image=args.image,
            namespace=args.namespace,
            storage=args.storage,
            storage_class=args.storage_class,
            secret=args.secret,
            settings=dict(args.settings),
            monitoring=args.monitoring,
        )
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))
    for path in written:
        print(path)
    print(
        f"next: kubectl apply -f {Path(args.output, NAMESPACE_FILE)}; create the Secret "
        f"{args.secret} (docs/kubernetes.md); kubectl apply -R -f {args.output}",
        file=sys.stderr,
    )
    return 0


def _setting_arg(text: str) -> tuple[str, str]:
    try:
        return parse_setting(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


if __name__ == "__main__":
    sys.exit(main())
