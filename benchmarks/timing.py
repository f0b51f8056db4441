"""Timing on a noisy machine: one stopwatch, contenders taking turns, medians and percentiles.

This VM's speed swings by tens of percent within minutes, so contenders timed one after the
other are compared across different moments. Here they take turns instead: every contender
runs in every round or block of items, in an order that changes from turn to turn (reversed
every other turn, or shuffled), and the benchmarks quote medians and per-round ratios. Blocks
of 1 alternate item by item; with a multi-threaded torch or ONNX Runtime on one of the
contenders, use longer blocks: its threads spin for a while after each call and slow whichever
contender runs next.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
PERCENTILE_METHODS = ("linear", "nearest-rank", "rank-above")


class Stopwatch:
    """Wall seconds of a `with` block: `with Stopwatch() as watch: ...`, then `watch.seconds`."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


def seconds(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of `fn`."""
    with Stopwatch() as watch:
        fn()
    return watch.seconds


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of `repeats` calls, after one warm-up call."""
    fn()
    return statistics.median(seconds(fn) for _ in range(repeats))


def alternating(contenders: Sequence[T], turn: int) -> Sequence[T]:
    """The order of turn `turn`: as given in even turns, reversed in odd ones, so that no
    contender always runs right after the same other one."""
    return contenders if turn % 2 == 0 else contenders[::-1]


def in_blocks(
    contenders: dict[str, Callable[[T], object]],
    items: Sequence[T],
    block: int,
    rng: random.Random | None = None,
    idle_s: dict[str, float] | None = None,
) -> dict[str, list[float]]:
    """Every item through every contender, in turns of `block` items; wall seconds per item
    and contender. Each turn's order is shuffled by `rng`, or `alternating` without one. A
    contender named in `idle_s` sleeps that long before each of its items, outside the timing
    (to let caches and the core go cold, as a Flow's executors do between requests)."""
    idle_s = idle_s or {}
    out: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for turn, first in enumerate(range(0, len(items), block)):
        if rng is not None:
            rng.shuffle(names)
        for name in names if rng is not None else alternating(names, turn):
            run, idle = contenders[name], idle_s.get(name, 0.0)
            for item in items[first : first + block]:
                if idle:
                    time.sleep(idle)
                with Stopwatch() as watch:
                    run(item)
                out[name].append(watch.seconds)
    return out


def in_rounds(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each contender in each of `rounds` rounds, one call per round, the order
    `alternating` from round to round."""
    calls = {name: (lambda _round, fn=fn: fn()) for name, fn in contenders.items()}
    return in_blocks(calls, range(rounds), block=1)


def timings(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds of each function; after one warm-up call each, the functions
    run in turn (in the same order) `repeats` times, so that they share the machine's load."""
    samples: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            samples[name]["wall"].append(time.perf_counter() - wall)
            samples[name]["cpu"].append(time.process_time() - cpu)
    return {
        name: {clock: statistics.median(values) for clock, values in by_clock.items()}
        for name, by_clock in samples.items()
    }


def percentile(values: Iterable[float], q: float, method: str = "linear") -> float:
    """The `q` quantile (0 <= q <= 1) of `values`, by one of `PERCENTILE_METHODS`:

    - `linear`: numpy's default, interpolated between the two values around it;
    - `nearest-rank`: the smallest value with at least a share `q` of the values at or below
      it (rank ceil(q n) of n): a value that occurred;
    - `rank-above`: the smallest value with more than a share `q` at or below it (rank
      floor(q n) + 1): one rank above `nearest-rank` where q n is a whole number.
    """
    if method not in PERCENTILE_METHODS:
        raise ValueError(f"method must be one of {PERCENTILE_METHODS}, got {method!r}")
    if method == "linear":
        return float(np.quantile(list(values), q))
    ordered = sorted(values)
    n = len(ordered)
    rank = math.ceil(q * n) if method == "nearest-rank" else math.floor(q * n) + 1
    return ordered[min(n, max(1, rank)) - 1]
