"""Which shard owns an id, and one answer per document out of every shard's answers.

Every id has exactly one owner shard (`owner_shard`). With the index split over N shards,
every shard sees every request: `/index` and `/update` are carried out by the owner of each
id alone (the others answer `NOT_OWNER`), `/delete` by every shard that has the id, searches
and `/status` by all. The `merge_*` functions turn the shards' answers into one per document.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from imagepairs.documents import Document

# Set by a shard on each document whose id another shard owns; `merge_outcomes` replaces it.
NOT_OWNER = "not this shard's id (a sharded HNSWIndexer needs MatchMerger as uses_after)"
OWNER_DID_NOT_ANSWER = "the shard that owns this id did not answer"
UNKNOWN_ID = "unknown id"
_SUMMED_STATUS = ("count", "deleted_slots", "capacity", "thumbnails", "thumbnail_bytes")


def owner_shard(doc_id: str, shards: int) -> int:
    """The shard (0 .. `shards - 1`) that stores `doc_id`: a 64-bit BLAKE2b hash of its UTF-8
    bytes modulo `shards`, the same in every process (unlike Python's salted `hash`). Not
    CRC-32: it is linear, so its low bits spread similar ids badly."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def reports_outcome(doc_id: str | None, shard_id: int, shards: int) -> bool:
    """Whether shard `shard_id` reports a document's outcome (in counts, metrics): every shard
    sees every document, so the owner of its id does, or shard 0 for one without an id."""
    return owner_shard(doc_id, shards) == shard_id if doc_id else shard_id == 0


def content_id(doc: Document) -> str:
    """An id for a document that has none, the same on every shard that sees the request:
    a hash of its embedding (dtype, shape, bytes), `uri` and `text`. Indexing the same
    id-less document again therefore replaces it instead of adding a copy."""
    vec = np.ascontiguousarray(np.asarray(doc.embedding))
    digest = hashlib.sha256()
    for part in (vec.dtype.str, str(vec.shape), doc.uri, doc.text):
        digest.update(repr(part).encode("utf-8") + b"\0")
    digest.update(vec.tobytes())
    return digest.hexdigest()[:32]


def per_document(
    docs: Sequence[Any], shard_answers: Sequence[Sequence[Any] | None] | None
) -> list[list[Any]]:
    """The answers of all shards for each document, in request order.

    Shards answer the same request, so their answers line up by position (which also works
    for documents without an id); by id is the fallback should their lengths differ. A shard
    that failed is left out.
    """
    shards = [shard for shard in shard_answers or [] if shard is not None]
    if not shards:
        return [[doc] for doc in docs]
    if len({len(shard) for shard in shards}) == 1:
        return [list(answers) for answers in zip(*shards, strict=True)]
    by_id: dict[Any, list[Any]] = {}
    for shard in shards:
        for doc in shard:
            by_id.setdefault(doc.id, []).append(doc)
    return list(by_id.values())


def merge_matches(answers: Sequence[Any], limit: int | None) -> tuple[list[Any], str | None]:
    """(global top `limit` matches best first, the first error) of one query's answers.

    All shards check a query the same way, except an empty shard that does not know the
    dimension yet, so an error of any shard is kept."""
    matches = sorted((m for a in answers for m in a.matches), key=lambda m: -m.score)
    error = next((a.error for a in answers if a.error), None)
    return (matches[:limit] if limit else matches), error


def merge_outcome(answers: Sequence[Any]) -> tuple[Any, str | None]:
    """(the answer to keep, its error) for one document of `/index`, `/update`, `/delete` or
    `/get`.

    The owner's answer, its error included; `OWNER_DID_NOT_ANSWER` when no answer is the
    owner's (its shard failed). Where several shards answered (`/delete`, or a document that
    arrived with an error or without an id), it succeeded if any shard succeeded: the others
    do not know its id.
    """
    answers = [a for a in answers if a.error != NOT_OWNER] or list(answers)
    errors = [a.error for a in answers]
    if errors == [NOT_OWNER] * len(errors):
        return answers[0], OWNER_DID_NOT_ANSWER
    if None in errors:
        return answers[errors.index(None)], None
    # the shard that has the id says more than the others' "unknown id"
    return answers[0], next((e for e in errors if e != UNKNOWN_ID), errors[0])


def missing_shards(answered: int, shards: int) -> int:
    """How many of `shards` did not answer, given `answered` answers."""
    return max(0, int(shards) - int(answered))


def missing_shard_ids(answered: Iterable[int], shards: int) -> list[int]:
    """The shards of 0 .. `shards - 1` not among the `answered` ones."""
    return sorted(set(range(int(shards))) - {int(s) for s in answered})


def missing_shards_error(missing: int, shards: int, what: str) -> str:
    """The error of a document whose answer lacks `missing` of `shards` shards: `what` says
    what the answer would have been (partial results, an unknown id that may be elsewhere)."""
    return f"{missing} of {shards} index shards did not answer; {what}"


def merge_status(infos: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One status out of the shards': counts summed, parameters of the first, `shards`."""
    info = {k: v for k, v in infos[0].items() if k not in ("seq", "snapshot_seq")}
    info.update({key: sum(i.get(key) or 0 for i in infos) for key in _SUMMED_STATUS})
    info["dim"] = next((i["dim"] for i in infos if i.get("dim")), None)
    info["tags"] = merge_tag_summaries([i.get("tags") or {} for i in infos])
    # a shard that has stored nothing yet has recorded no towers (each shard's are in `shards`)
    info["towers"] = {k: v for i in reversed(infos) for k, v in (i.get("towers") or {}).items()}
    info["shards"] = [{k: v for k, v in i.items() if k != "tags"} for i in infos]
    return info


def merge_tag_summaries(summaries: Sequence[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The shards' tag summaries as one: values in first-seen order, the widest range."""
    out: dict[str, dict[str, Any]] = {}
    for summary in summaries:
        for field, part in summary.items():
            merged = out.setdefault(field, {})
            if "values" in part:
                merged["values"] = list(dict.fromkeys([*merged.get("values", []), *part["values"]]))
            for key, pick in (("min", min), ("max", max)):
                if key in part:
                    merged[key] = pick(part[key], merged.get(key, part[key]))
    return out
