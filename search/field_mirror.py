"""The fields a search returns, mirrored in memory by label, with the tag index for filters.

For every live item the mirror holds ``(id, uri, text, tags JSON)`` by label, loaded from the
database on open and updated after each commit, so a query never waits on SQLite; that costs
about as much memory as the fields themselves. Its size is the number of live items. A
`search.filters.TagIndex` beside it, built and updated with it, turns a filter into the labels
that match with a few array operations.

Not thread-safe: `search.hnsw_store.HNSWStore` serialises the calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from search.filters import Filter, TagIndex

_NO_TAGS = "{}"  # one shared string for the common case, recognised by identity

# (id, uri, text, tags JSON) of one item
Entry = tuple[str, str | None, str | None, str]


class Hit(NamedTuple):
    """One search result, a plain tuple ``(id, score, uri, text, tags)``."""

    id: str
    score: float
    uri: str | None
    text: str | None
    tags: dict[str, Any]


class FieldMirror:
    """label -> fields of every live item, and a `TagIndex` of their tags."""

    def __init__(self, rows: Iterable[tuple[int, str, str | None, str | None, str]] = ()) -> None:
        """Load ``(label, id, uri, text, tags JSON)`` rows."""
        self._entries: dict[int, Entry] = {
            label: _entry(doc_id, uri, text, tags) for label, doc_id, uri, text, tags in rows
        }
        self.tags = TagIndex()
        for label, (_, _, _, tags) in self._entries.items():
            if tags is not _NO_TAGS:
                self.tags.add(label, json.loads(tags))
        self.tags.compact()

    def __len__(self) -> int:
        return len(self._entries)

    def labels(self) -> np.ndarray:
        """The live labels (int64)."""
        return np.fromiter(self._entries, np.int64, len(self._entries))

    def set(
        self, label: int, doc_id: str, uri: str | None, text: str | None, tags_json: str
    ) -> None:
        """Add or replace a label's fields (and re-index its tags when they changed)."""
        self._replace(label, _entry(doc_id, uri, text, tags_json))

    def drop(self, label: int) -> None:
        """Forget a deleted label."""
        self._replace(label, None)

    def mask(self, flt: Filter, size: int) -> np.ndarray:
        """A boolean array over labels ``0 .. size - 1``, True where the item matches ``flt``."""
        return self.tags.mask(flt, size)

    def hits(self, labels: list[list[int]], scores: list[list[float]]) -> list[list[Hit]]:
        """Each query's hits, from its row of labels and scores (unknown labels are skipped)."""
        return [
            _hits(self._entries, label_row, score_row)
            for label_row, score_row in zip(labels, scores, strict=True)
        ]

    def _replace(self, label: int, entry: Entry | None) -> None:
        """Replace (None: drop) a label's entry and re-index its tags."""
        old = self._entries.pop(label, None) if entry is None else self._entries.get(label)
        old_tags = None if old is None else old[3]
        new_tags = None if entry is None else entry[3]
        if entry is not None:
            self._entries[label] = entry
        if old_tags != new_tags:
            if old_tags not in (None, _NO_TAGS):
                self.tags.remove(label, json.loads(old_tags))
            if new_tags not in (None, _NO_TAGS):
                self.tags.add(label, json.loads(new_tags))


def _entry(doc_id: str, uri: str | None, text: str | None, tags_json: str) -> Entry:
    """An item's entry; empty tags share one string, which `_hits` recognises by identity."""
    return doc_id, uri, text, _NO_TAGS if tags_json == _NO_TAGS else tags_json


def _hits(entries: dict[int, Entry], labels: list[int], scores: list[float]) -> list[Hit]:
    """One query's hits. The hot loop of a search: a plain loop and `tuple.__new__` (skipping
    the NamedTuple's Python-level constructor) make each hit cheaper."""
    out = []
    for label, score in zip(labels, scores, strict=True):
        item = entries.get(label)
        if item is not None:
            doc_id, uri, text, tags = item
            tags = {} if tags is _NO_TAGS else json.loads(tags)
            out.append(_new_tuple(Hit, (doc_id, score, uri, text, tags)))
    return out


_new_tuple = tuple.__new__
