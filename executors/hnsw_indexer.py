"""Jina executors over `HNSWStore`: `HNSWIndexer` (one per shard) and `MatchMerger`.

`HNSWIndexer` keeps its store in ``self.workspace`` (per shard when sharded) and serves
``/index``, ``/search``, ``/delete``, ``/update`` and ``/status``. Every endpoint answers per
document: a rejected document gets ``error`` set and the good documents beside it go through;
documents that arrive with ``error`` already set (by an encoder) are passed through untouched.
Large payloads (``blob``, ``tensor``, ``embedding``) are dropped from the responses.

`MatchMerger` is the ``uses_after`` of a sharded indexer. With ``polling='ALL'`` Jina's head
sends each shard's response to ``uses_after`` as one request each, and the executor receives
them as ``docs_matrix`` (one DocList per shard, in the same order as the query); without
``uses_after`` docarray v2's built-in reduction would only concatenate the matches of documents
sharing an id (unsorted, untruncated, and every id-less HTTP document would share one). The
merger puts the answers of each shard for the same document together: the global top ``limit``
matches for ``/search``, "deleted/updated on any shard" for ``/delete`` and ``/update``, and
summed counts for ``/status``.

No ``from __future__ import annotations`` here: Jina reads the ``docs`` annotations at runtime
to learn each endpoint's schemas.
"""

import math
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from docarray import DocList
from jina import Executor, requests

from executors.hnsw_store import HNSWStore, check_vector
from executors.schemas import Match, SearchDoc, StatusDoc

DEFAULT_LIMIT = 10
UNKNOWN_ID = "unknown id"
_SUMMED_STATUS = ("count", "deleted_slots", "capacity")


class HNSWIndexer(Executor):
    """Durable cosine HNSW index of `SearchDoc` embeddings with their ``uri``/``text``/``tags``."""

    def __init__(
        self,
        dim: int | None = None,
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        max_limit: int = 1000,
        initial_capacity: int = 1024,
        snapshot_every: int = 20_000,
        **kwargs: Any,
    ) -> None:
        """``max_limit`` caps the ``limit`` parameter of ``/search``; the other arguments are
        `HNSWStore`'s. A ``workspace`` argument is used when Jina provides none."""
        super().__init__(**kwargs)
        self.max_limit = int(max_limit)
        self._store = HNSWStore(
            self.workspace,
            dim=dim,
            M=M,
            ef_construction=ef_construction,
            ef=ef,
            initial_capacity=initial_capacity,
            snapshot_every=snapshot_every,
        )

    @requests(on="/index")
    def index(self, docs: DocList[SearchDoc], **kwargs: Any) -> DocList[SearchDoc]:
        """Store (or replace) every document that has an embedding; id-less ones get an id."""
        todo = []
        for doc in _without_error(docs):
            if doc.embedding is None:
                doc.error = "no embedding to index"
                continue
            if not doc.id:  # documents posted over HTTP without an id
                doc.id = uuid.uuid4().hex
            todo.append(doc)
        errors = self._store.upsert(
            [d.id for d in todo],
            [d.embedding for d in todo],
            uri=[d.uri for d in todo],
            text=[d.text for d in todo],
            tags=[d.tags for d in todo],
        )
        _set_errors(todo, errors)
        return _strip_payloads(docs)

    @requests(on="/search")
    def search(
        self, docs: DocList[SearchDoc], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[SearchDoc]:
        """Set ``matches`` (best first) of every document with an embedding.

        Parameters: ``limit`` (default 10, clamped to ``max_limit``) and ``ef``.
        """
        parameters = parameters or {}
        limit, error = search_limit(parameters, self.max_limit)
        ef, ef_error = (None, None)
        if parameters.get("ef") is not None:
            ef, ef_error = positive_int(parameters["ef"], "ef")
        queries, vectors = [], []
        for doc in _without_error(docs):
            doc.error = error or ef_error
            if doc.error is None:
                vec, doc.error = self._query_vector(doc)
                if vec is not None:
                    queries.append(doc)
                    vectors.append(vec)
        if queries:
            try:
                results = self._store.search(np.stack(vectors), limit=limit, ef=ef)
            except ValueError as exc:  # the dimension got fixed by an /index running meanwhile
                results = [[]] * len(queries)
                _set_errors(queries, [str(exc)] * len(queries))
            for doc, hits in zip(queries, results, strict=True):
                doc.matches = DocList[Match]([Match(**hit._asdict()) for hit in hits])
        return _strip_payloads(docs)

    @requests(on="/delete")
    def delete(
        self, docs: DocList[SearchDoc], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[SearchDoc]:
        """Delete the documents' ids and ``parameters['ids']``; one document per id comes back,
        with error ``unknown id`` for ids that are not in the index."""
        extra = (parameters or {}).get("ids") or []
        extra = extra if isinstance(extra, list | tuple) else [extra]
        answer = DocList[SearchDoc]([*docs, *(SearchDoc(id=_id_text(i)) for i in extra)])
        todo = self._with_ids(answer)
        unknown = set(self._store.delete([d.id for d in todo])[1])
        for doc in todo:
            if doc.id in unknown:
                doc.error = UNKNOWN_ID
        return _strip_payloads(answer)

    @requests(on="/update")
    def update(self, docs: DocList[SearchDoc], **kwargs: Any) -> DocList[SearchDoc]:
        """Change stored fields of existing ids: ``embedding``, ``uri`` and ``text`` when set,
        ``tags`` when not empty; unknown ids get error ``unknown id``."""
        todo = self._with_ids(docs)
        errors = self._store.update(
            [d.id for d in todo],
            embeddings=[d.embedding for d in todo],
            uri=[d.uri for d in todo],
            text=[d.text for d in todo],
            tags=[d.tags or None for d in todo],
        )
        _set_errors(todo, errors)
        return _strip_payloads(docs)

    @requests(on="/status")
    def status(self, docs: DocList[StatusDoc], **kwargs: Any) -> DocList[StatusDoc]:
        """One `StatusDoc` whose ``info`` is `HNSWStore.status` (the request's docs are ignored)."""
        return DocList[StatusDoc]([StatusDoc(info=self._store.status())])

    def close(self) -> None:
        self._store.close()
        super().close()

    def _query_vector(self, doc: SearchDoc) -> tuple[np.ndarray | None, str | None]:
        if doc.embedding is None:
            return None, "no embedding to search with"
        return check_vector(doc.embedding, self._store.dim)

    @staticmethod
    def _with_ids(docs: DocList[SearchDoc]) -> list[SearchDoc]:
        """The documents to act on: no error yet, and an id (else they get an error)."""
        todo = []
        for doc in _without_error(docs):
            if doc.id:
                todo.append(doc)
            else:
                doc.error = "missing id"
        return todo


class MatchMerger(Executor):
    """``uses_after`` of a sharded `HNSWIndexer`: one answer per document from all shards."""

    def __init__(self, max_limit: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_limit = int(max_limit)

    @requests(on="/search")
    def merge_matches(
        self,
        docs: DocList[SearchDoc],
        docs_matrix: list[DocList[SearchDoc]] | None = None,
        parameters: dict | None = None,
        **kwargs: Any,
    ) -> DocList[SearchDoc]:
        """Global top ``limit`` matches, best first; an error of any shard is kept (all shards
        check a query the same way, except an empty shard that does not know the dimension)."""
        limit, _ = search_limit(parameters or {}, self.max_limit)
        merged = DocList[SearchDoc]()
        for answers in _per_document(docs, docs_matrix):
            doc = answers[0]
            matches = sorted((m for a in answers for m in a.matches), key=lambda m: -m.score)
            doc.matches = DocList[Match](matches[:limit] if limit else matches)
            doc.error = next((a.error for a in answers if a.error), None)
            merged.append(doc)
        return merged

    @requests(on=["/delete", "/update"])
    def merge_outcomes(
        self,
        docs: DocList[SearchDoc],
        docs_matrix: list[DocList[SearchDoc]] | None = None,
        **kwargs: Any,
    ) -> DocList[SearchDoc]:
        """A document succeeded if any shard succeeded (the others do not know its id)."""
        merged = DocList[SearchDoc]()
        for answers in _per_document(docs, docs_matrix):
            doc = answers[0]
            errors = [a.error for a in answers]
            if None in errors:
                doc.error = None
            else:  # the shard that has the id says more than the others' "unknown id"
                doc.error = next((e for e in errors if e != UNKNOWN_ID), errors[0])
            merged.append(doc)
        return merged

    @requests(on="/status")
    def merge_status(
        self,
        docs: DocList[StatusDoc],
        docs_matrix: list[DocList[StatusDoc]] | None = None,
        **kwargs: Any,
    ) -> DocList[StatusDoc]:
        """One `StatusDoc`: counts summed over shards, parameters of the first, ``shards``."""
        infos = [d.info for shard in (docs_matrix or [docs]) for d in shard]
        if not infos:
            return DocList[StatusDoc]()
        info = {k: v for k, v in infos[0].items() if k not in ("path", "seq", "snapshot_seq")}
        info.update({key: sum(i.get(key) or 0 for i in infos) for key in _SUMMED_STATUS})
        info["dim"] = next((i["dim"] for i in infos if i.get("dim")), None)
        info["shards"] = infos
        return DocList[StatusDoc]([StatusDoc(info=info)])


# ---------------------------------------------------------------------- helpers


def positive_int(value: Any, name: str) -> tuple[int | None, str | None]:
    """``(n, None)`` for an integral number >= 1 (protobuf sends ints as floats, HTTP clients
    may send strings), else ``(None, reason)``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number != int(number):
        return None, f"{name} must be an integer, got {value!r}"
    if number < 1:
        return None, f"{name} must be >= 1"
    return int(number), None


def search_limit(parameters: dict, max_limit: int) -> tuple[int | None, str | None]:
    """The ``limit`` parameter (default 10) clamped to ``max_limit``, or an error message."""
    limit, error = positive_int(parameters.get("limit", DEFAULT_LIMIT), "limit")
    return (None, error) if error else (min(limit, max_limit), None)


def _id_text(value: Any) -> str:
    """An id from ``parameters['ids']`` as text (protobuf turns the number 7 into 7.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _without_error(docs: Iterable[SearchDoc]) -> list[SearchDoc]:
    return [d for d in docs if d.error is None]


def _set_errors(docs: Sequence[SearchDoc], errors: Sequence[str | None]) -> None:
    for doc, error in zip(docs, errors, strict=True):
        doc.error = error


def _strip_payloads(docs: DocList[SearchDoc]) -> DocList[SearchDoc]:
    """Drop the big fields so that responses stay small."""
    for doc in docs:
        doc.blob = None
        doc.tensor = None
        doc.embedding = None
    return docs


def _per_document(docs: DocList[Any], docs_matrix: list[DocList[Any]] | None) -> list[list[Any]]:
    """The answers of all shards for each document, in request order.

    Shards answer the same request, so their responses line up by position (which also works
    for documents without an id); by id is the fallback should their lengths differ.
    """
    shards = [shard for shard in docs_matrix or [] if shard is not None]
    if not shards:
        return [[doc] for doc in docs]
    if len({len(shard) for shard in shards}) == 1:
        return [list(answers) for answers in zip(*shards, strict=True)]
    by_id: dict[Any, list[Any]] = {}
    for shard in shards:
        for doc in shard:
            by_id.setdefault(doc.id, []).append(doc)
    return list(by_id.values())
