"""Shared helpers for the benchmarks: interleaved timing, result files, tables."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved(
    contenders: dict[str, Callable[[], object]], *, rounds: int, per_round: int
) -> dict[str, list[float]]:
    """Seconds per call for each contender, measured in alternating rounds.

    Each round times ``per_round`` calls of every contender back to back, in an
    order that rotates every round, so drift in machine load hits all alike.
    """
    names = list(contenders)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for fn in contenders.values():  # warm caches and allocators
        for _ in range(max(10, per_round // 10)):
            fn()
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn = contenders[name]
            start = time.perf_counter()
            for _ in range(per_round):
                fn()
            samples[name].append((time.perf_counter() - start) / per_round)
    return samples


def summary(seconds: list[float]) -> dict[str, float]:
    """Median and spread of per-round means, in microseconds."""
    us = np.array(seconds) * 1e6
    return {
        "median_us": float(statistics.median(us)),
        "p10_us": float(np.percentile(us, 10)),
        "p90_us": float(np.percentile(us, 90)),
    }


def machine() -> dict[str, Any]:
    import onnxruntime

    return {
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
