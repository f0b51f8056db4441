"""The service's own Prometheus metrics, beside jina's: documents indexed, documents rejected
by reason, search queries, and the index's search latency.

jina serves them with its own when the Flow runs with `monitoring: true` (MONITORING=true in
flow.yml): each executor registers them in jina's registry for its process
(`runtime_args.metrics_registry`, jina's documented place for custom metrics); without
monitoring there is no registry and they count nothing.

Each document is counted once, where its outcome is decided: a rejection by the executor that
set the error (an encoder, or the index), an indexed document by the shard that stored it.
Every index shard answers every query, so each shard counts the queries it answered: sum
over one shard's `executor` label, or over all shards divided by their number.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from search.rejections import rejection_reason

# Seconds; a search on the index takes from well under a millisecond to a few hundred.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """The counters of one executor process; each method is a no-op without a registry."""

    def __init__(
        self, runtime_args: Any, reports: Callable[[str | None], bool] = lambda doc_id: True
    ) -> None:
        """`reports(doc_id)`: whether this process counts that document's rejection (an
        index shard counts only the documents it reports, see `search.sharding`)."""
        self.reports = reports
        registry: CollectorRegistry | None = getattr(runtime_args, "metrics_registry", None)
        self.executor = str(getattr(runtime_args, "name", "") or "")
        self.enabled = registry is not None
        if not self.enabled:
            return
        labels = ("executor",)
        self._indexed = Counter(
            "clip_search_documents_indexed",
            "Documents stored (by /index and /update)",
            (*labels, "endpoint"),
            registry=registry,
        )
        self._rejected = Counter(
            "clip_search_documents_rejected",
            "Documents refused, each counted by the executor that refused it",
            (*labels, "reason"),
            registry=registry,
        )
        self._queries = Counter(
            "clip_search_queries",
            "Search queries answered by an index shard",
            (*labels, "kind"),
            registry=registry,
        )
        self._latency = Histogram(
            "clip_search_search_seconds",
            "Seconds an index shard spent on one search request",
            (*labels, "kind"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def outcomes(
        self, errors_before: Sequence[str | None], docs: Sequence[Any], stored: str | None = None
    ) -> None:
        """Count the documents (core or wire) whose error this step set, as rejected; with
        `stored` (the endpoint), those still without an error as stored. `errors_before`:
        their errors when the step began."""
        if not self.enabled:
            return
        indexed = 0
        for before, doc in zip(errors_before, docs, strict=True):
            if before is not None or not self.reports(doc.id):
                continue
            if doc.error is not None:
                self._rejected.labels(self.executor, rejection_reason(doc.error)).inc()
            else:
                indexed += 1
        if stored and indexed:
            self._indexed.labels(self.executor, stored).inc(indexed)

    @contextmanager
    def searching(self, kind: str, queries: int) -> Iterator[None]:
        """Time one search request of `queries` queries of `kind` (text, image)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.enabled:
                self._latency.labels(self.executor, kind).observe(time.perf_counter() - start)
                self._queries.labels(self.executor, kind).inc(queries)
