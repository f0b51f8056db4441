"""`ServiceExecutor`: the base of the service's executors; it refuses jina's snapshot and
restore RPCs.

jina 3.34 serves `JinaExecutorRestore/restore` and `JinaExecutorSnapshot/snapshot` (and their
progress RPCs) on every executor's port, with no authentication and no setting to turn them
off. Its restore handler runs the Executor's `restore(path)` hook in a thread and removes
`path` in a `finally`, whatever the hook did (jina/serve/executors/__init__.py,
`BaseExecutor._run_restore`): any caller that reaches the port could delete any file the
executor's user may delete, the index's own SQLite files included. The service restores
nothing through jina (its index recovers from its own store on start), so:

- `restore` refuses before touching anything and marks its thread; an audit hook (Python's
  `sys.addaudithook`, installed once per executor process) then refuses the `os.remove` that
  jina's `finally` runs in that thread, so the file stays;
- `snapshot` refuses; jina has by then only created the empty file it chose, under its own
  temporary folder.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from jina import Executor

# Set in a thread that refused a restore: what jina's `finally` would remove there.
_refused = threading.local()
_guard_lock = threading.Lock()
_guard_installed = False


class RPCRefused(PermissionError):
    """jina's snapshot or restore RPC, which this service does not serve."""


def _refuse_removal(event: str, args: tuple[Any, ...]) -> None:
    # os.remove and os.unlink both raise this event, before the file is touched
    path = getattr(_refused, "path", None)
    if event == "os.remove" and path is not None:
        raise RPCRefused(f"jina's restore RPC may not remove {path!r}")


def install_removal_guard() -> None:
    """Install the audit hook once in this process (audit hooks cannot be removed; it acts only
    in a thread whose `restore` was refused)."""
    global _guard_installed
    with _guard_lock:
        if not _guard_installed:
            sys.addaudithook(_refuse_removal)
            _guard_installed = True


class ServiceExecutor(Executor):
    """An Executor whose snapshot and restore RPCs are refused (see the module)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        install_removal_guard()

    def snapshot(self, snapshot_file: str) -> None:
        raise RPCRefused("this service takes no snapshots through jina's snapshot RPC")

    def restore(self, snapshot_file: str) -> None:
        _refused.path = snapshot_file
        self.logger.warning(f"refused jina's restore RPC naming {snapshot_file!r}")
        raise RPCRefused("this service restores nothing through jina's restore RPC")
