"""A small filter language over each document's ``tags`` (a JSON object), and an index for it.

A filter is a dict of fields, all of which must match (AND); there is no ``$or`` and no
negation. Per field, one of:

* a value: equality, ``{"colour": "red"}``; the value is a string, a number or a boolean.
  Numbers compare as numbers (``1`` matches ``1.0``), booleans are not numbers (``true`` does
  not match ``1``), strings never match numbers (``"1"`` does not match ``1``).
* ``{"$in": [v, ...]}``: equal to one of the values (1 to `MAX_IN` of them).
* a range, ``{"$gt": x}``, ``$gte``, ``$lt``, ``$lte``, combinable in one dict
  (``{"$gte": 10, "$lt": 50}``): bounds are finite numbers, and only number tags match (a string
  or a boolean never does). Numbers compare as float64.

A tag that is a list matches a condition when one of its elements does (``{"sizes": [38, 40]}``
matches ``{"sizes": 40}`` and ``{"sizes": {"$gt": 39}}``); elements that are lists or objects,
and tags that are objects, match nothing. A missing tag matches nothing. ``$in`` and range
operators cannot be mixed in one field. At most `MAX_FIELDS` fields. An empty filter (``{}`` or
None) means no filter.

`parse_filter` checks a filter and raises `FilterError` naming the bad part
(``filter.price: $lt needs a number, got "cheap"``). `Filter.matches` tests one document's tags.
`TagIndex` answers a filter for a whole collection at once: it keeps, per tag field, the labels
of each string or boolean value (sorted int64 arrays) and the (value, label) pairs of its
numbers (sorted by value), so the labels matching a filter come from a few array lookups
instead of one Python test per document.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_FIELDS = 32
MAX_IN = 1024
OPERATORS = ("$in", "$gt", "$gte", "$lt", "$lte")
_RANGE_OPS = ("$gt", "$gte", "$lt", "$lte")
_USE = "use equality, $in, $gt, $gte, $lt, $lte"
# Keys of boolean values among the string keys of a field (True == 1 in Python, so a bare bool
# would collide with a number; strings cannot collide with these tuples).
_BOOL_KEYS = {False: ("bool", False), True: ("bool", True)}
# Pending changes of one posting list are merged into its array once they outnumber it (or at
# the next query), so a long run of writes does not hold them all in Python sets.
_MIN_PENDING = 1024


class FilterError(ValueError):
    """A filter that cannot be used; the message names the bad part."""


def _show(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def as_number(value: Any) -> float | None:
    """``value`` as a finite float64 when it is a number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float64
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Condition:
    """One field's condition: equal to one of ``strings``/``bools``/``numbers`` (equality and
    ``$in``), or within the range from ``low`` to ``high`` (None: unbounded)."""

    field: str
    strings: frozenset[str] = frozenset()
    bools: frozenset[bool] = frozenset()
    numbers: frozenset[float] = frozenset()
    low: float | None = None
    low_inclusive: bool = True
    high: float | None = None
    high_inclusive: bool = True

    @property
    def is_range(self) -> bool:
        return self.low is not None or self.high is not None

    def accepts(self, value: Any) -> bool:
        """Whether one tag value (a scalar, not a list) satisfies the condition."""
        number = as_number(value)
        if self.is_range:
            return number is not None and self.in_range(number)
        if isinstance(value, bool):
            return value in self.bools
        if isinstance(value, str):
            return value in self.strings
        return number is not None and number in self.numbers

    def in_range(self, number: float) -> bool:
        if self.low is not None:
            if number < self.low or (number == self.low and not self.low_inclusive):
                return False
        if self.high is not None:
            if number > self.high or (number == self.high and not self.high_inclusive):
                return False
        return True


@dataclass(frozen=True)
class Filter:
    """A parsed filter: conditions ANDed. Empty means no filter (everything matches)."""

    conditions: tuple[Condition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def matches(self, tags: Mapping[str, Any] | None) -> bool:
        """Whether a document with these tags passes the filter."""
        tags = tags or {}
        for cond in self.conditions:
            value = tags.get(cond.field)
            if value is None:
                return False
            elements = value if isinstance(value, list) else (value,)
            if not any(cond.accepts(e) for e in elements if not isinstance(e, list | dict)):
                return False
        return True


def parse_filter(obj: Filter | Mapping[str, Any] | None) -> Filter:
    """Check a filter (a dict as described in this module's docstring) and parse it.

    None and ``{}`` give the empty filter; a `Filter` is returned as it is. Raises `FilterError`.
    """
    if obj is None:
        return Filter()
    if isinstance(obj, Filter):
        return obj
    if not isinstance(obj, Mapping):
        raise FilterError(f"filter must be an object of field: condition, got {type(obj).__name__}")
    if len(obj) > MAX_FIELDS:
        raise FilterError(f"filter has {len(obj)} fields, at most {MAX_FIELDS} are allowed")
    conditions = []
    for field, spec in obj.items():
        if not isinstance(field, str) or not field:
            raise FilterError(f"filter: field names are non-empty strings, got {_show(field)}")
        if field.startswith("$"):
            raise FilterError(
                f"filter: unknown operator {field} at the top level (a filter is a dict of "
                f"fields, all of which must match)"
            )
        conditions.append(_parse_field(field, spec))
    return Filter(tuple(conditions))


def _parse_field(field: str, spec: Any) -> Condition:
    where = f"filter.{field}"
    if not isinstance(spec, Mapping):
        return _equality(field, [_scalar(where, "equality", spec)])
    if not spec:
        raise FilterError(f"{where}: empty condition {{}} ({_USE})")
    for op in spec:
        if op not in OPERATORS:
            raise FilterError(f"{where}: unknown operator {op} ({_USE})")
    if "$in" in spec:
        if len(spec) > 1:
            other = next(op for op in spec if op != "$in")
            raise FilterError(f"{where}: $in cannot be combined with {other} in one field")
        values = spec["$in"]
        if not isinstance(values, list | tuple):
            raise FilterError(f"{where}: $in needs a list, got {_show(values)}")
        if not values:
            raise FilterError(f"{where}: $in needs at least one value")
        if len(values) > MAX_IN:
            raise FilterError(f"{where}: $in has {len(values)} values, at most {MAX_IN} allowed")
        return _equality(field, [_scalar(where, f"$in[{i}]", v) for i, v in enumerate(values)])
    bounds = {}
    for op in _RANGE_OPS:
        if op in spec:
            value = spec[op]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise FilterError(f"{where}: {op} needs a number, got {_show(value)}")
            number = as_number(value)
            if number is None:
                raise FilterError(f"{where}: {op} needs a finite number, got {_show(value)}")
            bounds[op] = number
    low, low_inclusive = _tighter(bounds, "$gt", "$gte", max)
    high, high_inclusive = _tighter(bounds, "$lt", "$lte", min)
    return Condition(field, low=low, low_inclusive=low_inclusive, high=high,
                     high_inclusive=high_inclusive)  # fmt: skip


def _tighter(bounds: dict[str, float], strict: str, loose: str, pick: Any) -> tuple:
    """The tighter of a strict and a non-strict bound on one side: (bound, inclusive)."""
    if strict in bounds and loose in bounds:
        best = pick(bounds[strict], bounds[loose])
        return best, best != bounds[strict]
    if strict in bounds:
        return bounds[strict], False
    return bounds.get(loose), True


def _scalar(where: str, what: str, value: Any) -> Any:
    if isinstance(value, str | bool):
        return value
    if isinstance(value, int | float):
        if as_number(value) is None:
            raise FilterError(f"{where}: {what} needs a finite number, got {_show(value)}")
        return value
    hint = ' (use {"$in": [...]} for one of several values)' if isinstance(value, list) else ""
    raise FilterError(
        f"{where}: {what} needs a string, number or boolean, got {_show(value)}{hint}"
    )


def _equality(field: str, values: list[Any]) -> Condition:
    return Condition(
        field,
        strings=frozenset(v for v in values if isinstance(v, str)),
        bools=frozenset(v for v in values if isinstance(v, bool)),
        numbers=frozenset(as_number(v) for v in values if not isinstance(v, str | bool)),
    )


# ---------------------------------------------------------------------- the index


class _Labels:
    """A set of labels as a sorted unique int64 array plus pending additions and removals."""

    __slots__ = ("array", "added", "dropped")

    def __init__(self) -> None:
        self.array = np.empty(0, np.int64)
        self.added: set[int] = set()
        self.dropped: set[int] = set()

    def add(self, label: int) -> None:
        self.added.add(label)
        self._maybe_merge()

    def discard(self, label: int) -> None:
        self.added.discard(label)
        self.dropped.add(label)  # removed before the additions when merged
        self._maybe_merge()

    def _maybe_merge(self) -> None:
        if len(self.added) + len(self.dropped) > max(_MIN_PENDING, self.array.size):
            self.merged()

    def merged(self) -> np.ndarray:
        if self.dropped:
            gone = np.fromiter(self.dropped, np.int64, len(self.dropped))
            self.array = self.array[~np.isin(self.array, gone)]
            self.dropped = set()
        if self.added:
            new = np.sort(np.fromiter(self.added, np.int64, len(self.added)))
            if not self.array.size or new[0] > self.array[-1]:  # new labels: the common case
                self.array = np.concatenate((self.array, new))
            else:
                self.array = np.union1d(self.array, new)
            self.added = set()
        return self.array

    def __len__(self) -> int:
        return self.merged().size


class _Numbers:
    """A field's numbers: (value, label) pairs sorted by value, plus pending changes."""

    __slots__ = ("values", "labels", "added", "dropped")

    def __init__(self) -> None:
        self.values = np.empty(0, np.float64)
        self.labels = np.empty(0, np.int64)
        self.added: dict[int, list[float]] = {}
        self.dropped: set[int] = set()

    def add(self, label: int, number: float) -> None:
        self.added.setdefault(label, []).append(number)
        self._maybe_merge()

    def discard(self, label: int) -> None:
        self.added.pop(label, None)
        self.dropped.add(label)
        self._maybe_merge()

    def _maybe_merge(self) -> None:
        if len(self.added) + len(self.dropped) > max(_MIN_PENDING, self.labels.size):
            self.merge()

    def merge(self) -> None:
        if self.dropped:
            gone = np.fromiter(self.dropped, np.int64, len(self.dropped))
            keep = ~np.isin(self.labels, gone)
            self.values, self.labels = self.values[keep], self.labels[keep]
            self.dropped = set()
        if self.added:
            pairs = [(v, label) for label, vs in self.added.items() for v in vs]
            values = np.array([v for v, _ in pairs], np.float64)
            labels = np.array([label for _, label in pairs], np.int64)
            order = np.argsort(values, kind="stable")
            values, labels = values[order], labels[order]
            at = np.searchsorted(self.values, values)  # one O(n) insert of a sorted batch
            self.values = np.insert(self.values, at, values)
            self.labels = np.insert(self.labels, at, labels)
            self.added = {}

    def between(self, cond: Condition) -> np.ndarray:
        """Labels with a value in the condition's range (unsorted, maybe repeated)."""
        self.merge()
        start, stop = 0, self.values.size
        if cond.low is not None:
            side = "left" if cond.low_inclusive else "right"
            start = int(np.searchsorted(self.values, cond.low, side=side))
        if cond.high is not None:
            side = "right" if cond.high_inclusive else "left"
            stop = int(np.searchsorted(self.values, cond.high, side=side))
        return self.labels[start : max(start, stop)]

    def equal_to(self, numbers: Iterable[float]) -> list[np.ndarray]:
        self.merge()
        out = []
        for number in numbers:
            start = int(np.searchsorted(self.values, number, side="left"))
            stop = int(np.searchsorted(self.values, number, side="right"))
            out.append(self.labels[start:stop])
        return out


class TagIndex:
    """The labels of every document by tag value, answering a `Filter` for all of them at once.

    Not thread-safe: its owner serialises calls. Memory: 8 bytes per (document, string or
    boolean value) and 16 per (document, number), plus a small array per distinct value.
    """

    def __init__(self) -> None:
        self._values: dict[str, dict[Any, _Labels]] = {}  # field -> value key -> labels
        self._numbers: dict[str, _Numbers] = {}  # field -> numbers

    def add(self, label: int, tags: Mapping[str, Any] | None) -> None:
        """Index a document's tags (the document must not be indexed already)."""
        for field, key, number in _entries(tags):
            if number is None:
                self._values.setdefault(field, {}).setdefault(key, _Labels()).add(label)
            else:
                self._numbers.setdefault(field, _Numbers()).add(label, number)

    def remove(self, label: int, tags: Mapping[str, Any] | None) -> None:
        """Un-index a document; ``tags`` are the ones it was indexed with."""
        for field, key, number in _entries(tags):
            if number is None:
                labels = self._values.get(field, {}).get(key)
                if labels is not None:
                    labels.discard(label)
            elif field in self._numbers:
                self._numbers[field].discard(label)

    def compact(self) -> None:
        """Merge all pending changes, dropping emptied values (e.g. after a bulk load)."""
        for field, by_value in list(self._values.items()):
            for key, labels in list(by_value.items()):
                if not len(labels):
                    del by_value[key]
            if not by_value:
                del self._values[field]
        for field, numbers in list(self._numbers.items()):
            numbers.merge()
            if not numbers.labels.size:
                del self._numbers[field]

    def mask(self, flt: Filter, size: int) -> np.ndarray:
        """Bool array over labels ``0..size-1``: True where the document matches ``flt``.

        Every indexed label must be below ``size``. The empty filter matches every label.
        """
        out: np.ndarray | None = None
        for cond in flt.conditions:
            hit = np.zeros(size, bool)
            for labels in self._condition_labels(cond):
                hit[labels] = True
            if out is None:
                out = hit
            else:
                out &= hit
            if not out.any():
                break
        return np.ones(size, bool) if out is None else out

    def summary(self, max_values: int = 50) -> dict[str, dict[str, Any]]:
        """What each tag field holds, for filter controls: `values` (its most common string
        and boolean values, at most `max_values`, commonest first) and `min` / `max` of its
        numbers."""
        self.compact()
        out: dict[str, dict[str, Any]] = {}
        for field, by_value in self._values.items():
            ranked = sorted(by_value.items(), key=lambda kv: -len(kv[1]))
            values = [key[1] if isinstance(key, tuple) else key for key, _ in ranked]
            out[field] = {"values": values[:max_values]}
        for field, numbers in self._numbers.items():
            out.setdefault(field, {}).update(
                min=float(numbers.values.min()), max=float(numbers.values.max())
            )
        return out

    def nbytes(self) -> int:
        """Bytes held by the arrays (pending changes and Python objects not counted)."""
        total = sum(
            labels.array.nbytes
            for by_value in self._values.values()
            for labels in by_value.values()
        )
        return total + sum(n.values.nbytes + n.labels.nbytes for n in self._numbers.values())

    def _condition_labels(self, cond: Condition) -> list[np.ndarray]:
        numbers = self._numbers.get(cond.field)
        if cond.is_range:
            return [] if numbers is None else [numbers.between(cond)]
        by_value = self._values.get(cond.field, {})
        keys = [*cond.strings, *(_BOOL_KEYS[b] for b in cond.bools)]
        out = [by_value[key].merged() for key in keys if key in by_value]
        if numbers is not None and cond.numbers:
            out += numbers.equal_to(cond.numbers)
        return out


def _entries(tags: Mapping[str, Any] | None) -> set[tuple[str, Any, float | None]]:
    """(field, value key, None) for string and boolean values, (field, None, number) for
    numbers; a list contributes its elements. A set, so a repeated element counts once."""
    out: set[tuple[str, Any, float | None]] = set()
    for field, value in (tags or {}).items():
        for element in value if isinstance(value, list) else (value,):
            if isinstance(element, bool):
                out.add((field, _BOOL_KEYS[element], None))
            elif isinstance(element, str):
                out.add((field, element, None))
            else:
                number = as_number(element)
                if number is not None:
                    out.add((field, None, number))
    return out
