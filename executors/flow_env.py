"""The settings the Flow YAMLs read from the environment: the one list, with defaults.

jina 3.34 has no `${VAR:-default}` syntax: it replaces `${{ ENV.VAR }}` when it reads the YAML
and leaves the text `$VAR` when VAR is unset. flow.yml and flow.scaled.yml list this module in
their top-level `py_modules`, which jina imports after that first pass but before it builds the
Flow; importing it gives every unset variable its default, and jina then expands `$VAR` in the
Flow's and the executors' string arguments once more (each executor process expands its
`uses_with` again when it starts), so the defaults take effect. Values already set are kept.

Kept free of heavy imports: it runs in the process that starts the Flow.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from typing import Any

# name -> (default, what it sets); flow.yml's header and the README list the same.
FLOW_SETTINGS: dict[str, tuple[str, str]] = {
    "GRPC_PORT": ("51000", "gateway gRPC port"),
    "HTTP_PORT": ("51001", "gateway HTTP port"),
    "HOST": ("127.0.0.1", "gateway address; 0.0.0.0 serves on all interfaces"),
    "WORKSPACE": ("workspace", "where the index is stored"),
    "TEXT_TOWER": ("runs/demo/clip-text", "text tower: tower or run folder, or NAME#PRETRAINED"),
    "VISION_TOWER": ("runs/demo/clip-vision", "vision tower, likewise"),
    "IMAGE_ROOTS": ("", "folders image uris may point into (':'-separated); none: no files"),
    "TORCH_THREADS": ("", "torch threads per encoder process on a CPU host (CPUs / replicas)"),
    "ENCODER_RUNTIME": ("torch", "torch, onnx or onnx-int8 (towers exported by finetune export)"),
    "API_TOKEN": (
        "",
        "token /index, /update and /delete require (HTTP: Authorization: Bearer; gRPC: "
        "parameters.token); empty: open",
    ),
    "COMPATIBLE_TOWERS": (
        "",
        "tower ids (clip-text:FINGERPRINT, ...) the index accepts beside the towers that "
        "embedded it; none: only those",
    ),
    "EXECUTOR_HOST": (
        "127.0.0.1",
        "address the executors and shard heads listen on (internal ports); 0.0.0.0 only where "
        "another machine routes to them (the Kubernetes export sets it)",
    ),
    "MONITORING": ("false", "true: every process serves Prometheus metrics (on all interfaces)"),
    "GATEWAY_METRICS_PORT": ("9090", "the gateway's metrics port"),
    "IMAGE_ENCODER_METRICS_PORTS": ("9091,9094", "image encoder's, one per replica"),
    "TEXT_ENCODER_METRICS_PORTS": ("9092,9095", "text encoder's, one per replica"),
    "INDEXER_METRICS_PORTS": ("9093", "indexer's (flow.yml only)"),
}
FLOW_ENV_DEFAULTS = {name: default for name, (default, _) in FLOW_SETTINGS.items()}

# What jina 3.34 leaves in place of `${{ ENV.VAR }}` when VAR is not set: the text `$VAR`,
# or the template itself when substitution was off.
_PLACEHOLDER = re.compile(r"^\s*\$(\w+|\{\{\s*(?:ENV|env)\.\w+\s*\}\})\s*$")


def apply_flow_env_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each unset Flow setting to its default in `environ`."""
    for name, value in FLOW_ENV_DEFAULTS.items():
        environ.setdefault(name, value)


def is_unset(value: Any) -> bool:
    """True for None, an empty string, or an environment placeholder jina left unexpanded."""
    return value is None or (
        isinstance(value, str) and (not value.strip() or bool(_PLACEHOLDER.match(value)))
    )


def setting(value: Any, default: Any) -> Any:
    """`value`, or `default` when it is unset (see `is_unset`): keeps an executor on its
    default should `$VAR` still reach it."""
    return default if is_unset(value) else value


apply_flow_env_defaults()
