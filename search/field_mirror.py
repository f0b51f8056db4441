"""The fields a search returns, mirrored in memory by label, with the tag index for filters.

For every live item the mirror holds its id and `HIT_COLUMNS` (the stored fields a `Match`
has: uri, text, tags JSON) by label, loaded from the database on open and updated after each
commit, so a query never waits on SQLite; that costs about as much memory as the fields
themselves. Its size is the number of live items. A `search.filters.TagIndex` beside it, built
and updated with it, turns a filter into the labels that match with a few array operations.

Not thread-safe: `search.hnsw_store.HNSWStore` serialises the calls.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from imagepairs.documents import Match
from search.filters import Filter, TagIndex
from search.item_db import COLUMNS

_NO_TAGS = "{}"  # one shared string for the common case, recognised by identity

# The stored columns a hit carries: the fields of a `Match` that the store has, in its order.
HIT_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Match) if f.name in COLUMNS)
_TAGS = HIT_COLUMNS.index("tags") + 1  # where the tags JSON sits in an entry

# (id, *HIT_COLUMNS) of one item, tags as JSON text
Entry = tuple[Any, ...]

# One search result, a plain tuple ``(id, score, *HIT_COLUMNS)``: ``(id, score, uri, text,
# tags)``, in the order of `Match`'s fields.
Hit = NamedTuple("Hit", [("id", str), ("score", float), *((c, Any) for c in HIT_COLUMNS)])


class FieldMirror:
    """label -> fields of every live item, and a `TagIndex` of their tags."""

    def __init__(self, rows: Iterable[tuple[Any, ...]] = ()) -> None:
        """Load ``(label, id, *HIT_COLUMNS)`` rows."""
        self._entries: dict[int, Entry] = {label: _entry(entry) for label, *entry in rows}
        self.tags = TagIndex()
        for label, entry in self._entries.items():
            tags = entry[_TAGS]
            if tags is not _NO_TAGS:
                self.tags.add(label, json.loads(tags))
        self.tags.compact()

    def __len__(self) -> int:
        return len(self._entries)

    def labels(self) -> np.ndarray:
        """The live labels (int64)."""
        return np.fromiter(self._entries, np.int64, len(self._entries))

    def set(self, label: int, doc_id: str, *values: Any) -> None:
        """Add or replace a label's id and `HIT_COLUMNS` values (and re-index its tags when
        they changed)."""
        self._replace(label, _entry([doc_id, *values]))

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
        old_tags = None if old is None else old[_TAGS]
        new_tags = None if entry is None else entry[_TAGS]
        if entry is not None:
            self._entries[label] = entry
        if old_tags != new_tags:
            if old_tags not in (None, _NO_TAGS):
                self.tags.remove(label, json.loads(old_tags))
            if new_tags not in (None, _NO_TAGS):
                self.tags.add(label, json.loads(new_tags))


def _entry(values: list[Any]) -> Entry:
    """An item's entry; empty tags share one string, which `_hits` recognises by identity."""
    if len(values) != len(HIT_COLUMNS) + 1:
        raise ValueError(f"an entry is an id and {HIT_COLUMNS}, got {len(values)} values")
    if values[_TAGS] == _NO_TAGS:
        values[_TAGS] = _NO_TAGS
    return tuple(values)


def _hits(entries: dict[int, Entry], labels: list[int], scores: list[float]) -> list[Hit]:
    """One query's hits. The hot loop of a search: a plain loop and `tuple.__new__` (skipping
    the NamedTuple's Python-level constructor) make each hit cheaper."""
    out = []
    for label, score in zip(labels, scores, strict=True):
        item = entries.get(label)
        if item is not None:
            tags = item[_TAGS]
            tags = {} if tags is _NO_TAGS else json.loads(tags)
            out.append(_new_tuple(Hit, (item[0], score, *item[1:_TAGS], tags, *item[_TAGS + 1 :])))
    return out


_new_tuple = tuple.__new__
