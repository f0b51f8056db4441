"""The one batching helper: consecutive lists of at most `size` items from any iterable."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")


def batched(
    items: Iterable[T],
    size: int,
    weight: Callable[[T], int] | None = None,
    max_weight: int | None = None,
) -> Iterator[list[T]]:
    """Lists of `size` consecutive items (the last may be shorter); lazy, so a generator of
    documents is read only one batch ahead. With `weight` and `max_weight`, a batch also ends
    before its items' total weight would pass `max_weight` (an item heavier than that alone
    makes a batch of one)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    if weight is None or max_weight is None:
        it = iter(items)
        while batch := list(islice(it, size)):
            yield batch
        return
    batch, total = [], 0
    for item in items:
        w = weight(item)
        if batch and (len(batch) == size or total + w > max_weight):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += w
    if batch:
        yield batch
