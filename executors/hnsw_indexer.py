"""Jina executors over `HNSWStore`: `HNSWIndexer` (one per shard) and `MatchMerger`.

`HNSWIndexer` keeps its store in ``self.workspace`` (per shard when sharded) and serves
``/index``, ``/search`` (text queries), ``/search_by_image``, ``/delete``, ``/update`` and
``/status``. Every endpoint answers per document: a rejected document gets ``error`` set and the
good documents beside it go through; documents that arrive with ``error`` already set (by an
encoder) are passed through untouched, and one that arrives without an embedding is told why
(nothing to embed, or an image sent to text search and vice versa). Large payloads (``blob``,
``tensor``, ``embedding``) are dropped from the responses.

Sharding: every id has exactly one owner shard, `owner_shard` (a BLAKE2b hash of the UTF-8 id
modulo the number of shards, read from Jina's ``runtime_args``; 1 shard when not sharded, which
owns everything). All endpoints are polled ALL. ``/index`` and ``/update`` act only on the documents
whose id the shard owns; every other document comes back with error `NOT_OWNER`, a marker that
`MatchMerger` replaces with the owner's answer, so ``/index`` is an upsert by id across shards
(re-indexing an id never leaves a second copy on another shard). ``/delete`` deletes an id on
every shard that has it (only the owner, unless the shards were filled by an earlier ``/index``
polled ANY or with another number of shards). A document without an id gets one before it is
routed: a random one when not sharded (as always), and on a sharded index one derived from its
content (`content_id`), because each shard sees the request separately and must pick the same.

`MatchMerger` is the ``uses_after`` of a sharded indexer (required: without it the `NOT_OWNER`
markers would reach the client). With ``polling='ALL'`` Jina's head sends each shard's response
to ``uses_after`` as one request each, and the executor receives them as ``docs_matrix`` (one
DocList per answering shard; jina does not promise their order, and a failed shard is left out,
so the merger never infers a shard from its position); without ``uses_after`` docarray v2's
built-in reduction would only concatenate the matches of documents sharing an id (unsorted,
untruncated, and every id-less HTTP document would share one). The merger puts the answers of
each shard for the same document together, in request order: the global top ``limit`` matches
for ``/search``, the owner's answer for ``/index`` and ``/update``, "deleted on any shard" for
``/delete``, and summed counts for ``/status``.

No ``from __future__ import annotations`` here: Jina reads the ``docs`` annotations at runtime
to learn each endpoint's schemas.
"""

import hashlib
import math
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from docarray import DocList
from jina import Executor, requests

from search.hnsw_store import HNSWStore, check_vector
from executors.schemas import (
    SEARCH_IMAGE,
    SEARCH_TEXT,
    Match,
    SearchDoc,
    StatusDoc,
    has_image,
    is_text_query,
)

DEFAULT_LIMIT = 10
UNKNOWN_ID = "unknown id"
NO_CONTENT_ERROR = "document has neither text nor image"
IMAGE_TO_TEXT_SEARCH = f"an image query: send it to {SEARCH_IMAGE}"
TEXT_TO_IMAGE_SEARCH = f"a text query: send it to {SEARCH_TEXT}"
NO_EMBEDDING = "no embedding to search with"
# Set by a shard on each document whose id another shard owns; `MatchMerger` replaces it.
NOT_OWNER = "not this shard's id (a sharded HNSWIndexer needs MatchMerger as uses_after)"
OWNER_DID_NOT_ANSWER = "the shard that owns this id did not answer"
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

    @property
    def shards(self) -> int:
        """Number of shards of the index (1 when not sharded)."""
        return int(getattr(self.runtime_args, "shards", None) or 1)

    @property
    def shard_id(self) -> int:
        """This shard's number, 0 .. ``shards - 1``."""
        return int(getattr(self.runtime_args, "shard_id", None) or 0)

    @requests(on="/index")
    def index(self, docs: DocList[SearchDoc], **kwargs: Any) -> DocList[SearchDoc]:
        """Store (or replace) every document that has an embedding and whose id this shard
        owns; id-less ones get an id (see the module's docstring)."""
        embedded = []
        for doc in _without_error(docs):
            if doc.embedding is None:
                doc.error = _not_embedded(doc, "no embedding to index")
                continue
            if not doc.id:  # documents posted over HTTP without an id
                doc.id = content_id(doc) if self.shards > 1 else uuid.uuid4().hex
            embedded.append(doc)
        todo = self._owned(embedded)
        errors = self._store.upsert(
            [d.id for d in todo],
            [d.embedding for d in todo],
            uri=[d.uri for d in todo],
            text=[d.text for d in todo],
            tags=[d.tags for d in todo],
        )
        _set_errors(todo, errors)
        return _strip_payloads(docs)

    @requests(on=SEARCH_TEXT)
    def search(
        self, docs: DocList[SearchDoc], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[SearchDoc]:
        """Set ``matches`` (best first) of every document with an embedding (from the text
        encoder, or sent along). Parameters: ``limit`` (default 10, clamped to ``max_limit``)
        and ``ef``."""
        return self._search(
            docs, parameters or {}, wrong_modality=has_image, hint=IMAGE_TO_TEXT_SEARCH
        )

    @requests(on=SEARCH_IMAGE)
    def search_by_image(
        self, docs: DocList[SearchDoc], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[SearchDoc]:
        """`search` for documents the image encoder embedded."""
        return self._search(
            docs, parameters or {}, wrong_modality=is_text_query, hint=TEXT_TO_IMAGE_SEARCH
        )

    def _search(
        self, docs: DocList[SearchDoc], parameters: dict, wrong_modality: Any, hint: str
    ) -> DocList[SearchDoc]:
        limit, error = search_limit(parameters, self.max_limit)
        ef, ef_error = (None, None)
        if parameters.get("ef") is not None:
            ef, ef_error = positive_int(parameters["ef"], "ef")
        queries, vectors = [], []
        for doc in _without_error(docs):
            doc.error = error or ef_error
            if doc.error is None and doc.embedding is None:
                doc.error = hint if wrong_modality(doc) else _not_embedded(doc, NO_EMBEDDING)
            if doc.error is None:
                vec, doc.error = check_vector(doc.embedding, self._store.dim)
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
        with error ``unknown id`` for ids that are not in the index.

        Every shard deletes the ids it has, owned or not: normally only the owner has an id,
        but copies that an earlier ``/index`` polled ANY (or another number of shards) left on
        another shard go too. `MatchMerger` reports an id deleted when any shard deleted it."""
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
        """Change stored fields of existing ids that this shard owns: ``embedding``, ``uri``
        and ``text`` when set, ``tags`` when not empty; unknown ids get error ``unknown id``."""
        todo = self._owned(self._with_ids(docs))
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

    def _owned(self, docs: Iterable[SearchDoc]) -> list[SearchDoc]:
        """The documents whose id this shard owns; the others get error `NOT_OWNER`."""
        owned = []
        for doc in docs:
            if self.shards == 1 or owner_shard(doc.id, self.shards) == self.shard_id:
                owned.append(doc)
            else:
                doc.error = NOT_OWNER
        return owned

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

    @requests(on=[SEARCH_TEXT, SEARCH_IMAGE])
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

    @requests(on=["/index", "/update", "/delete"])
    def merge_outcomes(
        self,
        docs: DocList[SearchDoc],
        docs_matrix: list[DocList[SearchDoc]] | None = None,
        **kwargs: Any,
    ) -> DocList[SearchDoc]:
        """Each document as its owner shard answered it (the others answer `NOT_OWNER`), its
        error included; error `OWNER_DID_NOT_ANSWER` when no answer is the owner's (its shard
        failed). Where several shards answered for a document (``/delete``, or a document that
        arrived with an error, or without an id), it succeeded if any shard succeeded: the
        others do not know its id."""
        merged = DocList[SearchDoc]()
        for answers in _per_document(docs, docs_matrix):
            answers = [a for a in answers if a.error != NOT_OWNER] or answers
            doc = answers[0]
            errors = [a.error for a in answers]
            if errors == [NOT_OWNER] * len(errors):
                doc.error = OWNER_DID_NOT_ANSWER
                merged.append(doc)
                continue
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


def owner_shard(doc_id: str, shards: int) -> int:
    """The shard (0 .. ``shards - 1``) that stores ``doc_id``: a 64-bit BLAKE2b hash of its
    UTF-8 bytes modulo ``shards``, the same in every process (unlike Python's salted ``hash``).
    Not CRC-32: it is linear, so its low bits spread similar ids badly."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def content_id(doc: SearchDoc) -> str:
    """An id for a document that has none, the same on every shard that sees the request:
    a hash of its embedding (dtype, shape, bytes), ``uri`` and ``text``. Indexing the same
    id-less document again therefore replaces it instead of adding a copy."""
    vec = np.ascontiguousarray(np.asarray(doc.embedding))
    digest = hashlib.sha256()
    for part in (vec.dtype.str, str(vec.shape), doc.uri, doc.text):
        digest.update(repr(part).encode("utf-8") + b"\0")
    digest.update(vec.tobytes())
    return digest.hexdigest()[:32]


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


def _not_embedded(doc: SearchDoc, otherwise: str) -> str:
    """Why a document reached the indexer without an embedding."""
    return NO_CONTENT_ERROR if doc.text is None and not has_image(doc) else otherwise


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
