"""The candidate table and the latency-vs-bandwidth plot of a split profile."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.table import Column, Table

from .planner import ALL_LOCAL, ALL_REMOTE, Link, PowerModel, SplitPlanner
from .profile import SplitProfile

__all__ = ["plot", "table"]


def table(
    profile: SplitProfile,
    bandwidths_mbps: Sequence[float],
    rtt_s: float,
    *,
    objective: str = "latency",
    power: PowerModel | None = None,
) -> Table:
    """One row per candidate; predicted cost at each bandwidth, the planner's pick in bold."""
    planner = SplitPlanner(profile.candidates, objective=objective, power=power)  # type: ignore[arg-type]
    unit = "mJ" if objective == "energy" else "ms"
    title = (f"{profile.model} v{profile.version}: device {profile.device_threads} thread(s), "
             f"tail {profile.tail_source}; "
             f"predicted {objective} at RTT {rtt_s * 1e3:g} ms")  # fmt: skip
    widest = max(len(c.key) for c in profile.candidates)
    columns: list[Column | str] = [
        Column("split", no_wrap=True, min_width=widest), "head ms", "tail ms",
        Column("bytes up", no_wrap=True), "cosine",
    ]  # fmt: skip
    result = Table(*columns, *(f"{b:g} Mbit/s {unit}" for b in bandwidths_mbps), title=title)
    links = [Link(rtt_s, b * 1e6) for b in bandwidths_mbps]
    best = [planner.rank(link)[0][1].key for link in links]
    for candidate in profile.candidates:
        cells = []
        for link, winner in zip(links, best, strict=True):
            text = f"{planner.cost(candidate, link) * 1e3:.1f}"
            cells.append(f"[bold green]{text}[/]" if candidate.key == winner else text)
        result.add_row(
            candidate.key,
            f"{candidate.head_s * 1e3:.2f}",
            f"{candidate.tail_s * 1e3:.2f}",
            f"{candidate.bytes_up:,}",
            f"{candidate.cosine:.4f}",
            *cells,
        )
    return result


def plot(profile: SplitProfile, path: Path, rtt_s: float, *, min_cosine: float = 0.0) -> Path:
    """Expected latency of every candidate from 0.5 to 500 Mbit/s, and the planner's envelope."""
    from .._optional import require

    matplotlib = require("matplotlib", extra="bench", feature="split --plot")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", extra="bench", feature="split --plot")

    planner = SplitPlanner(profile.candidates, min_cosine=min_cosine)
    bandwidths = np.logspace(np.log10(0.5), np.log10(500), 80)
    links = [Link(rtt_s, b * 1e6) for b in bandwidths]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for candidate in planner.profiles:
        ms = [planner.cost(candidate, link) * 1e3 for link in links]
        trivial = candidate.name in (ALL_LOCAL, ALL_REMOTE)
        ax.plot(bandwidths, ms, lw=2 if trivial else 1, ls="-" if trivial else "--",
                label=candidate.key)  # fmt: skip
    envelope = [planner.rank(link)[0][0] * 1e3 for link in links]
    ax.plot(bandwidths, envelope, color="black", lw=3, alpha=0.35, label="planner's choice")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("uplink bandwidth (Mbit/s)")
    ax.set_ylabel("expected latency (ms)")
    ax.set_title(f"{profile.model}: split latency vs bandwidth (RTT {rtt_s * 1e3:g} ms)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
