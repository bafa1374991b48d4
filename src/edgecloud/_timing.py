"""Timing a call the same way everywhere: one warm-up call, then ``rounds`` timed ones."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["time_calls"]


def time_calls(fn: Callable[[], object], rounds: int) -> list[float]:
    """Seconds each of ``rounds`` calls of ``fn`` took, after one untimed warm-up call
    (first-run allocations, lazy loading, connection set-up)."""
    fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times
