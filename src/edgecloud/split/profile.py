"""Measuring each split: head time on this device, tail time (scaled for the server), bytes."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .partition import CutPoint, extract
from .planner import ALL_LOCAL, ALL_REMOTE, CutProfile

__all__ = ["profile_cuts"]

Arrays = dict[str, np.ndarray[Any, Any]]


def _session(path: str | os.PathLike[str], threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _timed(session: Any, feed: Arrays, repeats: int) -> tuple[float, list[np.ndarray[Any, Any]]]:
    outputs = session.run(None, feed)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = session.run(None, feed)
        times.append(time.perf_counter() - started)
    return statistics.median(times), outputs


def profile_cuts(
    model_path: str | os.PathLike[str],
    cuts: list[CutPoint],
    inputs: Arrays,
    workdir: Path,
    *,
    server_speedup: float = 1.0,
    repeats: int = 5,
    threads: int = 1,
) -> list[CutProfile]:
    """Profiles of all-local, all-remote and every given cut, on ``inputs``.

    Tail times are measured here and divided by ``server_speedup`` (how much
    faster the server runs the same graph, e.g. from a profile measured there).
    """
    if server_speedup <= 0:
        raise ConfigError("server_speedup must be positive")
    full_s, outputs = _timed(_session(model_path, threads), inputs, repeats)
    down = sum(int(o.nbytes) for o in outputs)
    up = sum(int(a.nbytes) for a in inputs.values())
    profiles = [
        CutProfile(ALL_LOCAL, full_s, 0.0, 0, 0),
        CutProfile(ALL_REMOTE, 0.0, full_s / server_speedup, up, down),
    ]
    for cut in cuts:
        head_path, tail_path = extract(model_path, cut, workdir / cut.name)
        head = _session(head_path, threads)
        head_s, middle = _timed(head, inputs, repeats)
        produced = dict(zip([o.name for o in head.get_outputs()], middle, strict=True))
        feed = {name: produced[name] if name in produced else inputs[name] for name in cut.tensors}
        tail_s, _ = _timed(_session(tail_path, threads), feed, repeats)
        sent = sum(int(v.nbytes) for v in feed.values())
        profiles.append(CutProfile(cut.name, head_s, tail_s / server_speedup, sent, down))
    return profiles
