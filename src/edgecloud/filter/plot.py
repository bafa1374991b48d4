"""The signal with its trigger scores and the events that were forwarded (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._optional import require
from .segment import Event

__all__ = ["plot_events"]


def plot_events(
    signal: np.ndarray,
    scores: Sequence[float],
    events: Sequence[Event],
    threshold: float,
    chunk_s: float,
    path: Path,
    truth: Sequence[tuple[float, float]] = (),
) -> None:
    matplotlib = require("matplotlib", extra="bench", feature="filter plots")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", extra="bench", feature="filter plots")

    duration = len(scores) * chunk_s
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True)
    flat = signal.reshape(len(signal), -1) if signal.ndim > 1 else signal[:, None]
    step = max(1, len(flat) // 20_000)
    t = np.linspace(0, duration, len(flat))[::step]
    top.plot(t, flat[::step], linewidth=0.4)
    top.set_ylabel("signal")
    for a, b in truth:
        top.axvspan(a, b, color="green", alpha=0.15)
    for e in events:
        top.axvspan(e.start_s, e.end_s, color="red", alpha=0.25)
        bottom.axvspan(e.start_s, e.end_s, color="red", alpha=0.25)
    bottom.plot(np.arange(len(scores)) * chunk_s, scores, linewidth=0.6)
    bottom.axhline(threshold, color="black", linestyle=":", label=f"threshold {threshold:g}")
    bottom.set_ylabel("trigger score")
    bottom.set_xlabel("seconds")
    bottom.legend(fontsize=7, loc="upper right")
    sent = sum(e.duration_s for e in events)
    top.set_title(f"{len(events)} events forwarded (red), {sent:.1f} s of {duration:.1f} s"
                  + (" — ground truth green" if truth else ""))  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
