"""jina adapters over the core's index (`search.index_shard`): `HNSWIndexer` (one per shard) and
`MatchMerger`.

`HNSWIndexer` keeps its store in `self.workspace` (per shard when sharded) and serves
`/index`, `/search` (text queries), `/search_by_image`, `/delete`, `/update`, `/get`,
`/status` and `/health` (see `executors.health`);
what each does per document is `search.index_shard.IndexShard`'s. Its shard number and count
come from jina's `runtime_args`.

`MatchMerger` is the `uses_after` of a sharded indexer (required: without it the `NOT_OWNER`
markers would reach the client). With `polling='ALL'` jina's head sends each shard's answer
to `uses_after`, which receives them as `docs_matrix` (one DocList per answering shard; jina
does not promise their order, and a failed shard is left out, so the merger never infers a
shard from its position); without `uses_after` docarray's built-in reduction would only
concatenate the matches of documents sharing an id. The merging is `search.sharding`'s.

No `from __future__ import annotations` here: jina reads the `docs` annotations at runtime
to learn each endpoint's schemas.
"""

from collections.abc import Callable
from functools import partial
from typing import Any

from docarray import DocList
from jina import requests

from client.wire import DELETE, GET, HEALTH, INDEX, SEARCH_IMAGE, SEARCH_TEXT, STATUS, UPDATE
from client.wire_docs import Match, SearchDoc, StatusDoc
from executors import health
from executors.base import ServiceExecutor
from executors.flow_env import FLOW_ENV_DEFAULTS, setting
from executors.service_metrics import ServiceMetrics
from executors.wire_conversion import refused_without_token, to_core, to_wire
from imagepairs.documents import Document
from search.hnsw_store import HNSWStore
from search.index_shard import (
    DEFAULT_MAX_LIMIT,
    IMAGE,
    REPLACE_TAGS,
    TEXT,
    IndexShard,
    search_limit,
)
from search.sharding import (
    UNKNOWN_ID,
    merge_matches,
    merge_outcome,
    merge_status,
    missing_shards,
    missing_shards_error,
    per_document,
    reports_outcome,
)
from search.towers import describe, parse_compatible

# What a search, or an id not found, would be without the shards that did not answer.
PARTIAL_RESULTS = "results would be partial"
MAYBE_ON_A_MISSING_SHARD = "unknown id on the shards that answered"


class HNSWIndexer(ServiceExecutor):
    """Durable cosine HNSW index of `SearchDoc` embeddings with their `uri`/`text`/`tags`."""

    def __init__(
        self,
        dim: int | None = None,
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        max_limit: int = DEFAULT_MAX_LIMIT,
        initial_capacity: int = 1024,
        snapshot_every: int = 20_000,
        token: str | None = None,
        compatible_towers: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """`max_limit` caps the `limit` parameter of the searches; `token` (API_TOKEN in the
        Flow YAMLs; empty: none) is what `/index`, `/update` and `/delete` require as
        `parameters["token"]`; `compatible_towers` (COMPATIBLE_TOWERS) the tower ids accepted
        beside those that embedded the index (`search.towers`); the other arguments are
        `HNSWStore`'s."""
        super().__init__(**kwargs)
        self.token = str(setting(token, FLOW_ENV_DEFAULTS["API_TOKEN"]))
        compatible = parse_compatible(
            setting(compatible_towers, FLOW_ENV_DEFAULTS["COMPATIBLE_TOWERS"])
        )
        store = HNSWStore(
            self.workspace,
            dim=dim,
            M=M,
            ef_construction=ef_construction,
            ef=ef,
            initial_capacity=initial_capacity,
            snapshot_every=snapshot_every,
        )
        shard_id = int(getattr(self.runtime_args, "shard_id", None) or 0)
        shards = int(getattr(self.runtime_args, "shards", None) or 1)
        self.shard = IndexShard(
            store,
            shard_id=shard_id,
            shards=shards,
            max_limit=max_limit,
            compatible_towers=compatible,
        )
        if self.shard.towers:
            self.logger.info(f"index embedded by {describe(self.shard.towers)}")
        self.metrics = ServiceMetrics(
            self.runtime_args, lambda doc_id: reports_outcome(doc_id, shard_id, shards)
        )

    @requests(on=INDEX)
    def index(
        self, docs: DocList[SearchDoc], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[SearchDoc]:
        if refused_without_token(docs, self.token, parameters, INDEX, self.metrics):
            return docs
        return to_wire(self._stored(INDEX, self.shard.index, to_core(docs)))

    @requests(on=SEARCH_TEXT)
    def search(
        self, docs: DocList[SearchDoc], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[SearchDoc]:
        with self.metrics.searching(TEXT, len(docs)):
            return to_wire(self.shard.search(to_core(docs), parameters or {}, TEXT))

    @requests(on=SEARCH_IMAGE)
    def search_by_image(
        self, docs: DocList[SearchDoc], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[SearchDoc]:
        with self.metrics.searching(IMAGE, len(docs)):
            return to_wire(self.shard.search(to_core(docs), parameters or {}, IMAGE))

    @requests(on=DELETE)
    def delete(
        self, docs: DocList[SearchDoc], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[SearchDoc]:
        """The documents' ids and `parameters['ids']`; one answer per id."""
        if refused_without_token(docs, self.token, parameters, DELETE, self.metrics):
            return docs
        ids = (parameters or {}).get("ids") or []
        ids = ids if isinstance(ids, list | tuple) else [ids]
        return to_wire(self.shard.delete(to_core(docs), ids))

    @requests(on=UPDATE)
    def update(
        self, docs: DocList[SearchDoc], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[SearchDoc]:
        if refused_without_token(docs, self.token, parameters, UPDATE, self.metrics):
            return docs
        replace_tags = (parameters or {}).get(REPLACE_TAGS, False)
        update = partial(self.shard.update, replace_tags=replace_tags)
        return to_wire(self._stored(UPDATE, update, to_core(docs)))

    @requests(on=GET)
    def get(self, docs: DocList[SearchDoc], **kwargs: Any) -> DocList[SearchDoc]:
        return to_wire(self.shard.get(to_core(docs)))

    @requests(on=STATUS)
    def status(self, docs: DocList[StatusDoc], **kwargs: Any) -> DocList[StatusDoc]:
        """One `StatusDoc` whose `info` is `IndexShard.status` (the request's docs are ignored)."""
        return DocList[StatusDoc]([StatusDoc(info=self.shard.status())])

    @requests(on=HEALTH)
    def health(self, docs: DocList[StatusDoc], **kwargs: Any) -> DocList[StatusDoc]:
        """Fails, naming both sides, when the encoders before it run other towers than those
        that embedded the index."""
        mismatch = self.shard.towers_error(health.serving_towers(docs))
        if mismatch:
            self.logger.error(mismatch)
            raise health.TowersMismatch(mismatch)
        return health.answer(docs, self.runtime_args, towers=self.shard.towers)

    def _stored(
        self, endpoint: str, store: Callable[[list[Document]], list[Document]], docs: list[Document]
    ) -> list[Document]:
        """`store(docs)` (the index's `index` or `update`), its outcomes counted."""
        before = [doc.error for doc in docs]
        answered = store(docs)
        self.metrics.outcomes(before, answered, stored=endpoint)
        return answered

    def close(self) -> None:
        self.shard.close()
        super().close()


class MatchMerger(ServiceExecutor):
    """`uses_after` of a sharded `HNSWIndexer`: one answer per document from all shards.

    `shards`: how many answers to expect; by default the Deployment's own `shards` (jina gives
    `uses_after` a copy of the sharded Deployment's arguments). When fewer shards answer (one
    is down), every search query gets an error instead of a silently partial top-k, an id
    that no answering shard knows is not called unknown, and `/status` counts
    `missing_shards`.
    """

    def __init__(
        self,
        max_limit: int = DEFAULT_MAX_LIMIT,
        shards: int | None = None,
        token: str | None = None,
        **kwargs: Any,
    ) -> None:
        # `token`: the indexer's `uses_with` reaches its `uses_after` too; the shards check it
        super().__init__(**kwargs)
        self.max_limit = int(max_limit)
        self.shards = int(shards or getattr(self.runtime_args, "shards", None) or 1)

    def _missing(self, docs_matrix: list | None) -> int:
        # no matrix: jina called the merger with one answer (a single shard)
        return missing_shards(len(docs_matrix) if docs_matrix else 1, self.shards)

    @requests(on=[SEARCH_TEXT, SEARCH_IMAGE])
    def merge_matches(
        self,
        docs: DocList[SearchDoc],
        docs_matrix: list[DocList[SearchDoc]] | None = None,
        parameters: dict | None = None,
        **kwargs: Any,
    ) -> DocList[SearchDoc]:
        limit, _ = search_limit(parameters or {}, self.max_limit)
        missing = self._missing(docs_matrix)
        merged = DocList[SearchDoc]()
        for answers in per_document(docs, docs_matrix):
            doc = answers[0]
            matches, doc.error = merge_matches(answers, limit)
            if missing and doc.error is None:
                doc.error = missing_shards_error(missing, self.shards, PARTIAL_RESULTS)
                matches = []
            doc.matches = DocList[Match](matches)
            merged.append(doc)
        return merged

    @requests(on=[INDEX, UPDATE, DELETE, GET])
    def merge_outcomes(
        self,
        docs: DocList[SearchDoc],
        docs_matrix: list[DocList[SearchDoc]] | None = None,
        **kwargs: Any,
    ) -> DocList[SearchDoc]:
        missing = self._missing(docs_matrix)
        merged = DocList[SearchDoc]()
        for answers in per_document(docs, docs_matrix):
            doc, doc.error = merge_outcome(answers)
            if missing and doc.error == UNKNOWN_ID:
                doc.error = missing_shards_error(missing, self.shards, MAYBE_ON_A_MISSING_SHARD)
            merged.append(doc)
        return merged

    @requests(on=STATUS)
    def merge_status(
        self,
        docs: DocList[StatusDoc],
        docs_matrix: list[DocList[StatusDoc]] | None = None,
        **kwargs: Any,
    ) -> DocList[StatusDoc]:
        infos = [d.info for shard in (docs_matrix or [docs]) for d in shard]
        if not infos:
            return DocList[StatusDoc]([])
        info = merge_status(infos)
        info["missing_shards"] = self._missing(docs_matrix)
        return DocList[StatusDoc]([StatusDoc(info=info)])

    @requests(on=HEALTH)
    def merge_health(
        self,
        docs: DocList[StatusDoc],
        docs_matrix: list[DocList[StatusDoc]] | None = None,
        **kwargs: Any,
    ) -> DocList[StatusDoc]:
        """The shards' answers as one; fails the request, naming them, when shards are
        missing (so a probe of the whole Flow sees it)."""
        return health.merge(docs_matrix, docs, self.shards)
