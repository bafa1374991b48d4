"""Shared helpers for the benchmarks: interleaved timing, result files, tables."""

from __future__ import annotations

import argparse
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
"""The committed figures: written only by a run with every default setting (or ``--write``)."""
LOCAL_RESULTS = RESULTS / "local"
"""Where a trial run (any setting other than the defaults) writes: ignored by git."""
#: Settings that say where things are, not what is measured.
WHERE = frozenset({"repo", "write", "help"})
_out = RESULTS


def parse_bench_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the script's arguments (adding ``--write``) and choose where its results go.

    One rule for every bench script: a run with the defaults (``make bench``)
    writes the committed ``bench/results/``; a run with any other setting
    (``--runs 3``, ``--quick``, ``--only swap``...) is a trial and writes
    ``bench/results/local/`` (ignored by git) unless ``--write`` is given. See
    :func:`results_dir`.
    """
    parser.add_argument(
        "--write",
        action="store_true",
        help="write bench/results/ (the committed figures) even when a setting differs "
        "from its default; without it such a trial run writes bench/results/local/",
    )
    # --help as a terminal shows it: the docstring without RST markup, every default said
    if parser.description:
        parser.description = parser.description.replace("``", "")
    for action in parser._actions:
        shown = action.default not in (None, False, argparse.SUPPRESS)
        if shown and action.option_strings and "%(default)" not in (action.help or ""):
            action.help = f"{action.help or ''} (default: %(default)s)".lstrip()
    args = parser.parse_args()
    trial = [
        a.option_strings[0]
        for a in parser._actions
        if a.dest not in WHERE and a.option_strings and getattr(args, a.dest) != a.default
    ]
    global _out
    _out = RESULTS if args.write or not trial else LOCAL_RESULTS
    if trial and not args.write:
        print(f"trial run ({', '.join(trial)} not the default): results go to {_out}/")
    return args


def results_dir() -> Path:
    """The directory this run writes its JSON and figures to (created)."""
    _out.mkdir(parents=True, exist_ok=True)
    return _out


def interleaved(
    contenders: dict[str, Callable[[], object]],
    *,
    rounds: int,
    per_round: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call for each contender, measured in alternating rounds.

    Each round times ``per_round`` calls of every contender back to back, in an
    order that rotates every round, so drift in machine load hits all alike.
    ``clock``: ``time.thread_time`` counts only this thread's CPU time, which
    other jobs on a shared machine cannot stretch (for code that never waits).
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
            start = clock()
            for _ in range(per_round):
                fn()
            samples[name].append((clock() - start) / per_round)
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
    """Write ``<name>.json`` to :func:`results_dir`; the path written."""
    path = results_dir() / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def infer_bodies(inputs: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """One Open Inference Protocol request over HTTP, both ways: (the JSON body, the
    binary extension's JSON header, the binary body = header + raw tensors); the
    binary form asks for binary outputs too. ``inputs``: name -> FP32 or INT64 array."""

    def tensor(name: str, x: Any) -> dict[str, Any]:
        datatype = {"float32": "FP32", "int64": "INT64"}[x.dtype.name]
        return {"name": name, "shape": list(x.shape), "datatype": datatype}

    as_json = json.dumps(
        {"inputs": [{**tensor(n, x), "data": x.ravel().tolist()} for n, x in inputs.items()]}
    ).encode()
    header = json.dumps(
        {
            "inputs": [
                {**tensor(n, x), "parameters": {"binary_data_size": x.nbytes}}
                for n, x in inputs.items()
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return as_json, header, header + b"".join(x.tobytes() for x in inputs.values())
