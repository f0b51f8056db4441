"""Which way a filtered search goes: a cost model over counts, pure and explainable.

A search with a tag filter knows the labels that match it (`search.filters.TagIndex`), and takes
the cheaper of two exact-enough ways:

* ``"walk"``: a graph walk that only admits matching labels (hnswlib's filter). It costs about
  as much per query as an unfiltered search divided by the fraction of items that match, since
  the walk crosses more non-matching nodes as the filter gets more selective.
* ``"scan"``: an exact scan of the matching vectors read from SQLite. It reads each matching
  vector once for the whole batch, so its cost is linear in the matches and independent of
  the graph: it wins for selective filters and for large batches.

`plan` returns the chosen path with both estimates, so that a caller can say why.
"""

from __future__ import annotations

from typing import NamedTuple

# Seconds per unit of work at dim 512 and ef 64 on 2 cores, fitted to the timings of
# `python benchmarks/bench_filter.py`; only their ratios matter.
FETCH_S = 8e-6  # reading one matching vector from SQLite for a scan
DOT_S = 7e-9  # one query-vector product of that scan (a batched matmul)
WALK_S = 2.5e-4  # one filtered graph walk, per unit of 1 / (fraction of items matching)


class Plan(NamedTuple):
    """A filtered search's path, ``"walk"`` or ``"scan"``, and the estimates that chose it."""

    path: str
    scan_s: float
    walk_s: float


def plan(n_queries: int, n_matching: int, n_items: int, dim: int, ef: int) -> Plan:
    """The quicker path for a batch of ``n_queries`` over ``n_items`` live items of which
    ``n_matching`` (at least 1) match the filter, at dimension ``dim`` and search ``ef``."""
    scale = dim / 512
    scan = n_matching * (FETCH_S + n_queries * DOT_S * scale)
    walk = n_queries * WALK_S * scale * (ef / 64) * n_items / n_matching
    return Plan("scan" if scan <= walk else "walk", scan, walk)
