"""The decision as a terminal report (rich), Markdown, and PNG plots."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from .decide import FACTOR_TITLES, FACTORS, TITLES, Decision, Flip

__all__ = ["markdown", "plots", "render", "write_outputs"]


def _label(strategy: str | None) -> str:
    if strategy is None:
        return "-"
    return "no feasible option" if strategy == "none" else TITLES.get(strategy, strategy)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.3g}"
    return f"{value:.3g}"


def _flip_text(f: Flip) -> str:
    parts = []
    if f.down is not None:
        parts.append(f"≤ {_fmt(f.down)} → {_label(f.down_to)}")
    if f.up is not None:
        parts.append(f"≥ {_fmt(f.up)} → {_label(f.up_to)}")
    return "; ".join(parts)


def _rows(decision: Decision) -> list[dict[str, str]]:
    months = decision.workload.horizon_months
    rows = []
    for c in decision.candidates:
        chosen = decision.recommended is c
        rows.append({
            "option": ("▶ " if chosen else "") + c.strategy,
            "ok": "yes" if c.feasible else "no",
            "p50 ms": f"{c.latency.p50_ms:,.1f}",
            "p99 ms": f"{c.latency.p99_ms:,.0f}",
            "$/mo": f"{c.costs.average_monthly(months):,.0f}",
            f"$ {months} mo": f"{c.costs.cumulative(months)[-1]:,.0f}",
            "acc": f"{c.accuracy:.1%}",
            "up GB/mo": f"{c.uplink_gb_month:,.0f}",
            "score": f"{c.total:.2f}",
        })  # fmt: skip
    return rows


def render(decision: Decision, flips: list[Flip] | None, console: Console) -> None:
    """Print the report to the terminal."""
    w = decision.workload
    rec = decision.recommended
    head = f"[bold]{rec.title}[/] — {rec.summary}" if rec else "[bold red]no option is feasible[/]"
    console.print(Panel(head, title=f"edgecloud advise: {w.name}", expand=False))
    rows = _rows(decision)
    table = Table(title="Options")
    for key in rows[0]:
        table.add_column(key, justify="left" if key == "option" else "right")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    factors = Table(title="The six factors (0–10)")
    factors.add_column("factor")
    for c in decision.candidates:
        factors.add_column(c.strategy, justify="right")
    for f in FACTORS:
        factors.add_row(
            FACTOR_TITLES[f], *(f"{c.scores[f].value:.1f}" for c in decision.candidates)
        )
    console.print(factors)
    if rec:
        console.print(Group(*(f"  • {f}: {rec.scores[f].why}" for f in FACTORS)))
    console.print("[bold]Why[/]")
    for reason in decision.reasons:
        console.print(f"  {reason}")
    for note in rec.notes if rec else []:
        console.print(f"  [dim]note:[/] {note}")
    if flips is not None:
        moving = [f for f in flips if f.flips]
        flip_table = Table(title="What would flip the decision")
        for col in ("input", "now", "flips at"):
            flip_table.add_column(col)
        for flip in moving:
            flip_table.add_row(flip.path, _fmt(flip.value), _flip_text(flip))
        console.print(flip_table if moving else "Nothing within 1/100× to 100× flips it.")


def markdown(decision: Decision, flips: list[Flip] | None, images: list[str]) -> str:
    w = decision.workload
    rec = decision.recommended
    lines = [f"# edgecloud advise: {w.name}", ""]
    if w.description:
        lines += [w.description.strip(), ""]
    lines += [
        f"**Recommendation: {rec.title}** — {rec.summary}."
        if rec
        else "**No option is feasible.**",
        "",
        "## Why",
        "",
        *(f"- {r}" for r in decision.reasons),
        *(f"- note: {n}" for n in (rec.notes if rec else [])),
        "",
        "## Options",
        "",
    ]
    rows = _rows(decision)
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + "---|" * len(rows[0]))
    lines += ["| " + " | ".join(row.values()) + " |" for row in rows]
    lines += ["", "Ruled out:", ""]
    for c in decision.candidates:
        lines += [f"- **{c.title}**: {why}" for why in c.infeasible]
    lines += ["", "## The six factors (0–10)", ""]
    lines.append("| factor | " + " | ".join(c.strategy for c in decision.candidates) + " |")
    lines.append("|---|" + "---|" * len(decision.candidates))
    for f in FACTORS:
        cells = " | ".join(f"{c.scores[f].value:.1f}" for c in decision.candidates)
        lines.append(f"| {FACTOR_TITLES[f]} | {cells} |")
    lines += [""]
    for c in decision.candidates:
        lines += [f"**{c.title}**", ""]
        lines += [f"- {FACTOR_TITLES[f]}: {c.scores[f].why}" for f in FACTORS]
        months = w.horizon_months
        items = ", ".join(f"{k} ${v:,.0f}" for k, v in c.costs.monthly_usd.items() if v >= 0.5)
        lines.append(
            f"- Cost per month: {items or 'none'}; hardware ${c.costs.hardware_usd:,.0f} up front"
            f" ({c.costs.cumulative(months)[-1]:,.0f} over {months} months)"
        )
        lines.append("")
    if flips is not None:
        lines += ["## What would flip the decision", ""]
        moving = [f for f in flips if f.flips]
        if moving:
            lines += ["| input | now | flips at |", "|---|---|---|"]
            lines += [f"| `{f.path}` | {_fmt(f.value)} | {_flip_text(f)} |" for f in moving]
        else:
            lines.append("No input flips it between 1/100× and 100× of its value.")
        lines.append("")
    for image in images:
        lines += [f"![{Path(image).stem}]({image})", ""]
    return "\n".join(lines)


def plots(decision: Decision, flips: list[Flip] | None, out: Path) -> list[str]:
    """cost.png, latency.png and sensitivity.png in ``out``; the file names written."""
    from .._optional import require

    matplotlib = require("matplotlib", extra="bench", feature="advise plots")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", extra="bench", feature="advise plots")

    w = decision.workload
    written = []
    fig, ax = plt.subplots(figsize=(7, 4))
    months = list(range(w.horizon_months + 1))
    for c in decision.candidates:
        style: dict[str, Any] = {"linewidth": 2.5 if c is decision.recommended else 1.2}
        if not c.feasible:
            style["linestyle"] = "--"
        ax.plot(months, c.costs.cumulative(w.horizon_months), label=c.title
                + ("" if c.feasible else " (infeasible)"), **style)  # fmt: skip
    ax.set_xlabel("month")
    ax.set_ylabel("cumulative cost (USD)")
    ax.set_title(f"{w.name}: total cost over time")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "cost.png", dpi=110)
    plt.close(fig)
    written.append("cost.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    names = [c.strategy for c in decision.candidates]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [c.latency.p50_ms for c in decision.candidates], 0.4,
           label="p50")  # fmt: skip
    ax.bar([x + 0.2 for x in xs], [c.latency.p99_ms for c in decision.candidates], 0.4,
           label="p99")  # fmt: skip
    ax.axhline(w.application.latency_p50_ms, color="C0", linestyle=":", label="p50 target")
    ax.axhline(w.application.latency_p99_ms, color="C1", linestyle=":", label="p99 target")
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title(f"{w.name}: latency vs target")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    written.append("latency.png")

    moving = [f for f in flips or [] if f.flips and f.value > 0]
    if moving:
        import math

        fig, ax = plt.subplots(figsize=(7, 0.4 * len(moving) + 1.2))
        for i, f in enumerate(moving):
            lo = math.log10(f.down / f.value) if f.down else -2.0
            hi = math.log10(f.up / f.value) if f.up else 2.0
            ax.barh(i, hi - lo, left=lo, color="C2", alpha=0.6)
            ax.text(
                lo, i, f" {_fmt(f.down)}" if f.down else "", va="center", ha="right", fontsize=7
            )
            ax.text(hi, i, f" {_fmt(f.up)}" if f.up else "", va="center", ha="left", fontsize=7)
        ax.axvline(0, color="black", linewidth=1)
        ax.set_yticks(range(len(moving)), [f.path for f in moving], fontsize=7)
        ax.set_xlim(-2.3, 2.3)
        ax.set_xlabel("log10(value / current): the decision holds inside each bar")
        ax.set_title(f"{w.name}: how far each input can move")
        fig.tight_layout()
        fig.savefig(out / "sensitivity.png", dpi=110)
        plt.close(fig)
        written.append("sensitivity.png")
    return written


def write_outputs(
    decision: Decision,
    flips: list[Flip] | None,
    out: Path,
    *,
    with_plots: bool = True,
    force: bool = False,
    repository: str = "model-repo",
) -> list[Path]:
    """report.md, the PNGs, deployment.yaml (with deployment.schema.json, which its
    first lines point editors at) and server.env in ``out``; the paths written.
    ``repository``: the model repository as deployment.yaml names it (relative
    to ``out``, where the file is).

    An existing file is replaced only when it holds what would be written or
    is advise's own generated output (:func:`_ours`: the report by its first
    line, a PNG by its signature, the schema by its title); deployment.yaml
    and server.env are the user's to edit (``calibrate`` writes its threshold
    into the deployment), so only identical ones. Anything else is not
    replaced unless ``force`` (ConfigError naming them, and nothing written;
    :func:`edgecloud._outputs.write_outputs`). Every file is replaced whole,
    by rename.
    """
    import json
    import tempfile

    from .._outputs import write_outputs as write_files
    from ..deployment import DeploymentSpec
    from .deploy import SCHEMA_FILE, deployment_yaml, server_env

    files: dict[Path, bytes] = {}
    if decision.recommended is not None:
        files[out / "deployment.yaml"] = deployment_yaml(decision, repository=repository).encode()
        schema = json.dumps(DeploymentSpec.json_schema(), indent=2, allow_nan=False) + "\n"
        files[out / SCHEMA_FILE] = schema.encode()
        env = server_env(decision)
        if env is not None:
            files[out / "server.env"] = env.encode()
    with tempfile.TemporaryDirectory(prefix="edgecloud-advise-") as scratch:
        images = plots(decision, flips, Path(scratch)) if with_plots else []
        report = {out / "report.md": markdown(decision, flips, images).encode()}
        report.update({out / i: (Path(scratch) / i).read_bytes() for i in images})
        everything = {**report, **files}
        ours = {path: _ours(path.name) for path in everything}
        return write_files(
            everything,
            ours={p: test for p, test in ours.items() if test is not None},
            force=force,
            command="advise",
        )


REPORT_HEADER = b"# edgecloud advise: "
"""How every report.md advise writes begins (:func:`markdown`)."""


def _ours(name: str) -> Callable[[bytes], bool] | None:
    """For a file advise generates, a test telling an older one it wrote (to
    replace) from a user's file of that name; None for the user-editable ones."""
    from .._outputs import is_png
    from .deploy import SCHEMA_FILE

    if name == "report.md":
        return lambda data: data.startswith(REPORT_HEADER)
    if name.endswith(".png"):
        return is_png
    if name == SCHEMA_FILE:
        return _is_schema
    return None


def _is_schema(data: bytes) -> bool:
    """Whether ``data`` is a deployment JSON Schema (its ``title``, whatever version)."""
    import json

    from ..deployment import DeploymentSpec

    try:
        schema = json.loads(data)
    except ValueError:
        return False
    title = DeploymentSpec.model_config.get("title")
    return isinstance(schema, dict) and title is not None and schema.get("title") == title
