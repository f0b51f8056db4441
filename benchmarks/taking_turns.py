"""Timing several search paths at the same moments of a noisy machine, in turns.

This VM's speed swings by tens of percent within minutes, so paths timed one after the other
are compared across different moments. Here every path gets every query, the paths taking
turns in blocks (in a shuffled order each time). Blocks of 1 alternate query by query; with a
multi-threaded torch on one of the paths, use longer blocks: its threads spin for a while after
each call and slow whichever path runs next.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


def in_blocks_ms(
    searchers: dict[str, Callable[[str], None]],
    texts: list[str],
    block: int,
    rng: random.Random,
    idle_s: dict[str, float] | None = None,
) -> dict[str, list[float]]:
    """Every text through every path, in blocks of `block` texts; ms per query and path. A
    path named in `idle_s` sleeps that long before each of its queries, outside the timing
    (to let caches and the core go cold, as a Flow's executors do between requests)."""
    idle_s = idle_s or {}
    out: dict[str, list[float]] = {name: [] for name in searchers}
    names = list(searchers)
    for first in range(0, len(texts), block):
        rng.shuffle(names)
        for name in names:
            search, idle = searchers[name], idle_s.get(name, 0.0)
            for text in texts[first : first + block]:
                if idle:
                    time.sleep(idle)
                start = time.perf_counter()
                search(text)
                out[name].append((time.perf_counter() - start) * 1000)
    return out
