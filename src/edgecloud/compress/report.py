"""The compression report: a rich table in the terminal, Markdown and a PNG beside the model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from rich.table import Table

if TYPE_CHECKING:
    from . import CompressionResult
    from .evaluate import Evaluation

__all__ = ["Row", "markdown", "plot", "table"]


class Row(NamedTuple):
    """One compressed version in a report, before it is published (``version``: its number)."""

    model: str
    method: str
    parent_version: int
    version: int
    evaluation: Evaluation


def _row(r: CompressionResult | Row) -> Row:
    if isinstance(r, Row):
        return r
    return Row(r.model, r.method, r.parent_version, r.version.version, r.evaluation)


def _fidelity(result: CompressionResult | Row) -> str:
    e = result.evaluation
    if e.accuracy_drop_points is not None:
        drop = -e.accuracy_drop_points
        return f"accuracy {e.parent_accuracy:.2%} → {e.accuracy:.2%} ({drop:+.2f} pt)"
    return f"min cosine {e.cosine_min:.4f}" + (
        f", top-1 agreement {e.top1_agreement:.1%}" if e.top1_agreement is not None else ""
    )


def table(results: list[CompressionResult]) -> Table:
    out = Table("model", "method", "version", "size", "latency b=1", "latency b=32", "fidelity",
                title="compressed vs parent (ratios: compressed / parent)")  # fmt: skip
    for r in results:
        e = r.evaluation
        out.add_row(
            r.model, r.method, f"{r.parent_version} → {r.version.version}",
            f"{e.size_bytes / 1e6:.2f} MB ({e.size_ratio:.3f}×)",
            f"{e.latency_ms['1']:.3f} ms ({e.latency_ratio['1']:.2f}×)",
            f"{e.latency_ms['32']:.3f} ms ({e.latency_ratio['32']:.2f}×)",
            _fidelity(r),
        )  # fmt: skip
    return out


def markdown(results: Sequence[CompressionResult | Row]) -> str:
    lines = [
        "| model | method | version | size ratio | latency ratio b=1 | latency ratio b=32 "
        "| fidelity |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in map(_row, results):
        e = r.evaluation
        lines.append(
            f"| {r.model} | {r.method} | {r.parent_version} → {r.version} | "
            f"{e.size_ratio:.3f} | {e.latency_ratio['1']:.2f} | {e.latency_ratio['32']:.2f} | "
            f"{_fidelity(r)} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: Sequence[CompressionResult | Row], path: Path) -> Path:
    """Size vs latency, one point per method, annotated with fidelity."""
    from .._optional import require

    matplotlib = require("matplotlib", extra="bench", feature="compress --plot")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", extra="bench", feature="compress --plot")

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter([1.0], [1.0], marker="s", c="gray", label="parent (fp32)")
    for r in results:
        e = r.evaluation
        ax.scatter([e.size_ratio], [e.latency_ratio["1"]], label=f"{r.model} {r.method}")
        ax.annotate(_fidelity(r).split(" (")[0][-22:], (e.size_ratio, e.latency_ratio["1"]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("size (compressed / parent)")
    ax.set_ylabel("batch-1 latency (compressed / parent)")
    ax.set_xlim(0, 1.1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
