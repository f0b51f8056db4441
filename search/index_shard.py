"""The index's rules over `HNSWStore`, per document: what is stored, searched, updated, deleted.

Every operation answers per document: a rejected document gets `error` set and the good
documents beside it go through; documents that arrive with `error` already set (by an
encoder) are passed through untouched, and one that arrives without an embedding is told why
(nothing to embed, or an image sent to text search and vice versa). Answers carry no large
payloads (`blob`, `tensor`, `embedding`).

One `IndexShard` is one shard (`shard_id` of `shards`; 1 shard owns everything): see
`search.sharding` for how ids are routed.

The index records the towers that embedded it at its first write and refuses embeddings made
by other towers, per document and per query (`search.towers`). An update changes only what it
names (`update`): tags are merged, and a new caption on an image leaves its image embedding.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from finetune.tower_ids import TEXT_TOWER, VISION_TOWER, tower_kind
from imagepairs.documents import STORED_FIELDS, Document, Match, pending, set_errors
from search.filters import FilterError, parse_filter
from search.hnsw_store import UNRECORDED, HNSWStore, Record, check_vector
from search.limits import (
    MAX_EXACT_INT,
    MAX_ID_LENGTH,
    NOT_UNICODE,
    bounded_text,
    document_error,
    encodable,
    refuse_oversized,
    shown,
    tags_error,
)
from search.sharding import NOT_OWNER, UNKNOWN_ID, content_id, owner_shard
from search.thumbnails import ThumbnailStore, data_uri
from search.towers import tower_error as embedding_tower_error
from search.towers import towers_error, towers_to_record

DEFAULT_LIMIT = 10
DEFAULT_MAX_LIMIT = 1000
NO_CONTENT_ERROR = "document has neither text nor image"
NO_EMBEDDING = "no embedding to search with"
MISSING_ID = "missing id"
# The store's meta key of the towers that embedded the index ({tower name: fingerprint}).
TOWERS_META = "towers"
# `/update`'s parameter: true replaces the stored tags whole instead of merging into them.
REPLACE_TAGS = "replace_tags"
TEXT, IMAGE = "text", "image"
# Why a query of the other modality reached a search: where it should have gone instead.
WRONG_MODALITY = {
    TEXT: "an image query: send it to /search_by_image",
    IMAGE: "a text query: send it to /search",
}


class IndexShard:
    """One shard of the durable cosine index, answering per document."""

    def __init__(
        self,
        store: HNSWStore,
        shard_id: int = 0,
        shards: int = 1,
        max_limit: int = DEFAULT_MAX_LIMIT,
        thumbnails: ThumbnailStore | None = None,
        compatible_towers: Iterable[str] = (),
    ) -> None:
        """`thumbnails`: where image thumbnails are kept (default: beside the store);
        `compatible_towers`: tower ids accepted beside the index's own (`search.towers`)."""
        if not 0 <= shard_id < shards:
            raise ValueError(f"shard_id must be in 0..{shards - 1}, got {shard_id}")
        self.store = store
        self.thumbnails = thumbnails or ThumbnailStore(store.path)
        self.shard_id, self.shards = int(shard_id), int(shards)
        self.max_limit = int(max_limit)
        self.compatible_towers = frozenset(compatible_towers)
        # An update reads a document and writes it back changed: writes take turns, so that
        # no write lands between the two.
        self._writing = threading.RLock()

    @property
    def towers(self) -> dict[str, str]:
        """The towers that embedded this index ({tower name: fingerprint}), recorded at its
        first write of a document embedded through the encoders; empty before."""
        recorded = self.store.get_meta(TOWERS_META)
        return json.loads(recorded) if recorded else {}

    def towers_error(self, serving: Mapping[str, str]) -> str | None:
        """Why encoders with the towers `serving` cannot serve this index, or None."""
        return towers_error(serving, self.towers, self.compatible_towers)

    def index(self, docs: list[Document]) -> list[Document]:
        """Store (or replace) every document that has an embedding and whose id this shard
        owns. An id-less document gets one: random on one shard, and derived from its content
        (`content_id`) when sharded, because each shard sees the request and must pick the
        same. Documents over a limit of `search.limits` are refused, each with the limit."""
        if refuse_oversized(docs):
            return _answer(docs)
        embedded = []
        for doc in pending(docs):
            if doc.embedding is None:
                doc.error = _not_embedded(doc, "no embedding to index")
                continue
            if not doc.id:
                doc.id = content_id(doc) if self.shards > 1 else uuid.uuid4().hex
            doc.error = id_error(doc.id) or document_error(doc)
            if doc.error is None:
                embedded.append(doc)
        with self._writing:
            todo = self._owned(self._checked_towers(embedded))
            errors = self.store.upsert(
                [d.id for d in todo],
                [d.embedding for d in todo],
                meta=self._towers_meta(todo),
                **_stored_fields(todo),
            )
            set_errors(todo, errors)
            # each stored document's thumbnail, or none where it has no image now; the request
            # is acknowledged only after this, so a crash before it loses nothing acknowledged
            self.thumbnails.put([(d.id, d.thumbnail) for d in pending(todo)])
        return _answer(docs)

    def search(
        self, docs: list[Document], parameters: dict[str, Any], modality: str = TEXT
    ) -> list[Document]:
        """Set `matches` (best first) of every document with an embedding. Parameters:
        `limit` (default 10, clamped to `max_limit`), `ef`, `filter` (over tags, see
        `search.filters`; a bad one is each query's error) and `thumbnails` (true: each
        match carries its image's thumbnail as a data: URI). `modality` is the endpoint's: a
        query of the other one is told where to go."""
        if refuse_oversized(docs):
            return _answer(docs)
        limit, error = search_limit(parameters, self.max_limit)
        ef, ef_error = (None, None)
        if parameters.get("ef") is not None:
            ef, ef_error = positive_int(parameters["ef"], "ef")
        try:
            tag_filter = parse_filter(parameters.get("filter"))
        except FilterError as exc:
            tag_filter, error = None, error or str(exc)
        thumbnails = parameters.get("thumbnails")
        if thumbnails is not None and not isinstance(thumbnails, bool):
            error = error or f"thumbnails must be true or false, got {thumbnails!r}"
        wrong = (lambda d: d.has_image) if modality == TEXT else (lambda d: d.is_text_query)
        queries, vectors = [], []
        for doc in pending(docs):
            doc.error = error or ef_error
            if doc.error is None and doc.embedding is None:
                doc.error = WRONG_MODALITY[modality] if wrong(doc) else _not_embedded(doc)
            if doc.error is None:
                doc.error = embedding_tower_error(
                    doc.embedded_by, self.towers, self.compatible_towers
                )
            if doc.error is None:
                vec, doc.error = check_vector(doc.embedding, self.store.dim)
                if vec is not None:
                    queries.append(doc)
                    vectors.append(vec)
        if queries:
            try:
                results = self.store.search(
                    np.stack(vectors), limit=limit, ef=ef, filter=tag_filter
                )
            except ValueError as exc:  # the dimension got fixed by an /index running meanwhile
                results = [[]] * len(queries)
                set_errors(queries, [str(exc)] * len(queries))
            for doc, hits in zip(queries, results, strict=True):
                doc.matches = [Match(**hit._asdict()) for hit in hits]
                for match in doc.matches:
                    match.text = bounded_text(match.text)
            if thumbnails is True:
                self._attach_thumbnails([m for doc in queries for m in doc.matches])
        return _answer(docs)

    def get(self, docs: list[Document]) -> list[Document]:
        """Each document's stored fields and embedding, by id (`unknown id` when not here):
        what "more like this" searches with, on any shard."""
        if refuse_oversized(docs):
            return docs
        todo = self._with_ids(docs)
        for doc, record in zip(todo, self.store.get([d.id for d in todo]), strict=True):
            if record is None:
                doc.error = UNKNOWN_ID
            else:
                doc.embedding = record.embedding
                for name in STORED_FIELDS:
                    setattr(doc, name, getattr(record, name))
        return docs

    def delete(self, docs: list[Document], ids: Iterable[Any] = ()) -> list[Document]:
        """Delete the documents' ids and `ids`; one document per id comes back, with error
        `unknown id` for ids that are not in the index.

        Every shard deletes the ids it has, owned or not: normally only the owner has an id,
        but copies left on another shard (an index filled with another number of shards)
        go too. `merge_outcome` reports an id deleted when any shard deleted it."""
        answer = [*docs, *(Document(id=id_text(i)) for i in ids)]
        if refuse_oversized(answer):
            return _answer(answer)
        todo = self._with_ids(answer)
        deleted, unknown = self.store.delete([d.id for d in todo])
        self.thumbnails.delete(deleted)
        unknown = set(unknown)
        for doc in todo:
            if doc.id in unknown:
                doc.error = UNKNOWN_ID
        return _answer(answer)

    def update(self, docs: list[Document], replace_tags: Any = False) -> list[Document]:
        """Change what each document names of an existing id this shard owns, and nothing
        else; unknown ids get error `unknown id`.

        - `tags` are merged into the stored tags, a key sent as None removing that key;
          with `replace_tags` true they replace the stored tags whole.
        - `text` and `uri` replace the stored ones when set.
        - The embedding changes only when the content that made it changed: a new image (the
          image encoder re-embedded it), an embedding the caller gave, or new text of a
          document whose embedding came from its text. New text on an image document is its
          new caption; its image embedding stays.
        """
        if refuse_oversized(docs):
            return _answer(docs)
        bad_flag = not isinstance(replace_tags, bool)
        for doc in self._with_ids(docs):
            doc.error = (
                f"{REPLACE_TAGS} must be true or false, got {replace_tags!r}"
                if bad_flag
                else document_error(doc)
            )
        with self._writing:
            todo = self._owned(self._checked_towers(pending(docs)))
            ready, embeddings, tags = self._changes(todo, replace_tags)
            errors = self.store.update(
                [d.id for d in ready],
                embeddings=embeddings,
                meta=self._towers_meta(ready),
                **{**_stored_fields(ready), "tags": tags},
            )
            set_errors(ready, errors)
            reembedded = zip(ready, embeddings, strict=True)
            self.thumbnails.put(
                [
                    (d.id, d.thumbnail)
                    for d, v in reembedded
                    if v is not None and d.thumbnail and d.error is None
                ]
            )
        return _answer(docs)

    def _changes(
        self, docs: list[Document], replace_tags: bool
    ) -> tuple[list[Document], list[np.ndarray | None], list[dict[str, Any]]]:
        """For an update: the documents that can be written, each one's new embedding (None:
        the stored one stays) and its tags after the merge; the others get their error."""
        stored = self.store.get([d.id for d in docs])
        unrecorded = [
            d.id for d, r in zip(docs, stored, strict=True) if r and r.embedded_by == UNRECORDED
        ]
        images = self.thumbnails.get(unrecorded)
        ready, embeddings, tags = [], [], []
        for doc, record in zip(docs, stored, strict=True):
            if record is None:
                doc.error = UNKNOWN_ID
                continue
            merged = merged_tags(record.tags, doc.tags, replace_tags)
            doc.error = tags_error(merged)
            if doc.error is None:
                ready.append(doc)
                tags.append(merged)
                reembed = _reembeds(doc, record, doc.id in images)
                embeddings.append(doc.embedding if reembed else None)
        return ready, embeddings, tags

    def status(self) -> dict[str, Any]:
        """The store's counts and parameters, the towers that embedded it, and this shard's
        place; no filesystem paths (callers need not know where the service keeps its data)."""
        info = self.store.status()
        info.pop("path", None)
        return {
            **info,
            **self.thumbnails.stats(),
            "towers": self.towers,
            "compatible_towers": sorted(self.compatible_towers),
            "shard_id": self.shard_id,
            "shards": self.shards,
        }

    def close(self) -> None:
        self.thumbnails.close()
        self.store.close()

    def _attach_thumbnails(self, matches: list[Match]) -> None:
        found = self.thumbnails.get([m.id for m in matches])
        for match in matches:
            if match.id in found:
                match.thumbnail = data_uri(found[match.id])

    def _checked_towers(self, docs: list[Document]) -> list[Document]:
        """The documents whose embedding fits the index's towers; the others get the error."""
        recorded = self.towers
        for doc in docs:
            if doc.embedding is not None:
                doc.error = embedding_tower_error(doc.embedded_by, recorded, self.compatible_towers)
        return pending(docs)

    def _towers_meta(self, docs: list[Document]) -> dict[str, str] | None:
        """The towers to record with this write (committed only when a document is stored):
        those of the encoders the documents passed, for tower names not recorded yet."""
        seen = [d.towers for d in docs]
        seen += [
            {tower_kind(d.embedded_by): d.embedded_by.split(":", 1)[1]}
            for d in docs
            if tower_kind(d.embedded_by)
        ]
        towers = towers_to_record(self.towers, seen)
        return None if towers is None else {TOWERS_META: json.dumps(towers, sort_keys=True)}

    def _owned(self, docs: Iterable[Document]) -> list[Document]:
        """The documents whose id this shard owns; the others get error `NOT_OWNER`."""
        owned = []
        for doc in docs:
            if self.shards == 1 or owner_shard(doc.id, self.shards) == self.shard_id:
                owned.append(doc)
            else:
                doc.error = NOT_OWNER
        return owned

    @staticmethod
    def _with_ids(docs: list[Document]) -> list[Document]:
        """The documents to act on: no error yet, and a valid id (else they get an error)."""
        for doc in pending(docs):
            doc.error = id_error(doc.id) if doc.id else MISSING_ID
        return pending(docs)


def merged_tags(
    stored: dict[str, Any], changes: dict[str, Any] | None, replace: bool = False
) -> dict[str, Any]:
    """The tags after an update: `changes` merged into `stored` (a key whose value is None is
    removed), or `changes` whole with `replace`."""
    if replace:
        return dict(changes or {})
    merged = dict(stored)
    for key, value in (changes or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _stored_fields(docs: list[Document]) -> dict[str, list[Any]]:
    """The documents' values of each stored field, as the store takes them."""
    return {name: [getattr(d, name) for d in docs] for name in STORED_FIELDS}


def _reembeds(doc: Document, stored: Record, has_thumbnail: bool) -> bool:
    """Whether an update's embedding replaces the stored one: it came with the document (the
    caller's), from a new image, or from new text of a document embedded from its text."""
    if doc.embedding is None:
        return False
    kind = tower_kind(doc.embedded_by)
    if kind != TEXT_TOWER:
        return True  # an image re-embedded, or an embedding the caller gave
    stored_kind = tower_kind(stored.embedded_by)
    if stored.embedded_by == UNRECORDED:  # written before sources were recorded
        stored_kind = VISION_TOWER if has_thumbnail or stored.uri else TEXT_TOWER
    return stored_kind == TEXT_TOWER


def positive_int(value: Any, name: str) -> tuple[int | None, str | None]:
    """`(n, None)` for an integral number from 1 to `MAX_EXACT_INT` (protobuf sends ints as
    floats, HTTP clients may send strings), else `(None, reason)`."""
    number: float = math.nan
    if isinstance(value, int) and not isinstance(value, bool):
        number = value  # compared exactly below, whatever its size
    elif not isinstance(value, bool):
        with contextlib.suppress(TypeError, ValueError, OverflowError):
            number = float(value)
    if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
        return None, f"{name} must be an integer, got {shown(value)}"
    if number < 1:
        return None, f"{name} must be >= 1"
    if number > MAX_EXACT_INT:
        return (
            None,
            f"{name} is {shown(value)}, more than the limit of {MAX_EXACT_INT} (MAX_EXACT_INT)",
        )
    return int(number), None


def search_limit(parameters: dict[str, Any], max_limit: int) -> tuple[int | None, str | None]:
    """The `limit` parameter (default 10) clamped to `max_limit`, or an error message."""
    limit, error = positive_int(parameters.get("limit", DEFAULT_LIMIT), "limit")
    return (None, error) if error else (min(limit, max_limit), None)


def id_error(doc_id: str) -> str | None:
    """Why an id cannot be stored, or None: control characters (a NUL would cut the id short
    in SQLite's JSON functions, so the document could never be deleted), lone surrogates
    (not text SQLite can store) or over-long ids."""
    if len(doc_id) > MAX_ID_LENGTH:
        return f"id is {len(doc_id)} characters long, more than the limit of {MAX_ID_LENGTH}"
    if not encodable(doc_id):
        return f"id {NOT_UNICODE}"
    bad = next((c for c in doc_id if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        return f"id contains the control character {bad!r}; ids must be printable text"
    return None


def id_text(value: Any) -> str:
    """An id given as a parameter, as text (protobuf turns the number 7 into 7.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _not_embedded(doc: Document, otherwise: str = NO_EMBEDDING) -> str:
    """Why a document reached the index without an embedding."""
    return NO_CONTENT_ERROR if doc.text is None and not doc.has_image else otherwise


def _answer(docs: list[Document]) -> list[Document]:
    for doc in docs:
        doc.drop_payloads()
    return docs
