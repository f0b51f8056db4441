"""Defaults of the settings the Flow YAMLs read from the environment.

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
from collections.abc import MutableMapping

FLOW_ENV_DEFAULTS = {
    "GRPC_PORT": "51000",
    "HTTP_PORT": "51001",
    "HOST": "0.0.0.0",
    "WORKSPACE": "workspace",
    "TEXT_TOWER": "runs/demo/clip-text",
    "VISION_TOWER": "runs/demo/clip-vision",
    "IMAGE_ROOTS": "",  # none: local image files are refused
    "TORCH_THREADS": "",  # CPUs / replicas (executors.common.torch_threads)
}


def apply_flow_env_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each unset Flow setting to its default in `environ`."""
    for name, value in FLOW_ENV_DEFAULTS.items():
        environ.setdefault(name, value)


apply_flow_env_defaults()
