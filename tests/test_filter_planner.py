"""The filtered-search planner: a pure choice over counts, and the estimates that explain it."""

from __future__ import annotations

import pytest

from search.filter_planner import Plan, plan

N = 100_000


@pytest.mark.parametrize(
    ("n_queries", "fraction", "path"),
    [
        (1, 0.5, "walk"),  # broad filter, one query: the walk is nearly an unfiltered search
        (1, 0.1, "walk"),
        (1, 0.01, "scan"),  # selective: few vectors to read, a long walk
        (1000, 0.5, "walk"),
        (1000, 0.1, "scan"),  # a batch reads each matching vector once for all its queries
        (1000, 0.001, "scan"),
    ],
)
def test_the_cheaper_path_is_chosen(n_queries, fraction, path):
    chosen = plan(n_queries, int(N * fraction), N, dim=512, ef=64)
    assert isinstance(chosen, Plan) and chosen.path == path
    assert (chosen.scan_s <= chosen.walk_s) == (path == "scan")


def test_estimates_grow_with_the_work():
    base = plan(10, 5000, N, dim=512, ef=64)
    assert plan(10, 5000, N, dim=512, ef=128).walk_s == pytest.approx(2 * base.walk_s)
    assert plan(10, 5000, N, dim=512, ef=128).scan_s == base.scan_s  # a scan has no ef
    assert plan(10, 5000, 2 * N, dim=512, ef=64).walk_s == pytest.approx(2 * base.walk_s)
    assert plan(10, 10_000, N, dim=512, ef=64).walk_s == pytest.approx(base.walk_s / 2)
    assert plan(20, 5000, N, dim=512, ef=64).scan_s > base.scan_s
    wide = plan(10, 5000, N, dim=1024, ef=64)
    assert wide.walk_s == pytest.approx(2 * base.walk_s) and wide.scan_s > base.scan_s
