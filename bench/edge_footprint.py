"""What does the edge path cost a device at start, over onnxruntime alone?

Cold start = a fresh Python process's imports + model load + first inference:

- edge: ``import edgecloud``, ``LocalBackend(repo)`` and one ``infer`` on the
  model's ones, with LocalBackend's defaults as a device runs them: the load
  checks the version's files against their sha256, and a file a previous load
  checked and that has not changed since is not read again (its record in the
  state directory: edgecloud._verified); the request that loads the session is
  its first run (no separate warm-up);
- edge, first start: the same with no record (a fresh, empty state directory per
  run), so every file is hashed: the first start after a version is installed;
- bare: ``import onnxruntime``, ``InferenceSession(model.onnx)``, one ``run``.

The edge's modules are byte-compiled first (``compileall``), as an installed
package is (pip compiles at install; onnxruntime's and numpy's are): a source
checkout run with PYTHONDONTWRITEBYTECODE=1 otherwise compiles every edgecloud
module in every child (~15-30 ms here) and measures the compiler. The records
of the "edge" runs live in a temporary state directory, written by one untimed
edge run before the timed ones.

Both import numpy and build the same inputs; each is timed inside the child
from its first import to the answer, and its peak RSS is ``VmHWM`` of
``/proc/self/status`` after the answer. Runs interleave the three (the order
rotates every run) so drift in machine load hits all alike; median (min, max)
of ``--runs`` each.

    python bench/edge_footprint.py [--repo model-repo] [--runs 10]

A run with other settings than the defaults (e.g. --runs 3) is a trial and
writes bench/results/local/ instead, unless --write is given.

Prints a table and writes bench/results/edge_footprint.json, whose top-level
``cold_start_ratio`` (median edge / median bare) and ``rss_delta_mb`` (median
peak RSS edge - bare, MB) are digits-small's; targets ≤ 1.3× and ≤ +10 MB.
``cold_start_ratio_max`` is the larger ratio of the two models, and each case
has ``first_start_ratio`` (edge, first start / bare).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_bench_args, write_result

MODELS = ("digits-small", "minilm")
TARGET_RATIO = 1.3
TARGET_RSS_MB = 10.0
#: Modules the edge path must not load (they are what tests/test_edge_imports.py blocks).
HEAVY = ("pydantic", "yaml", "rich", "typer", "httpx", "grpc", "ruamel", "asyncio", "ssl")

CHILD = r"""
import sys, time
t0 = time.perf_counter()
import json
import numpy as np
mode, repo, model, path = sys.argv[1:5]
shapes = json.loads(sys.argv[5])
if mode != "bare":
    import edgecloud
    from edgecloud import InferRequest, LocalBackend

    feeds = {n: np.ones(s, np.dtype(d)) for n, (s, d) in shapes.items()}
    local = LocalBackend(repo)
    out = local.infer(InferRequest(model, feeds)).outputs
else:
    import onnxruntime as ort

    feeds = {n: np.ones(s, np.dtype(d)) for n, (s, d) in shapes.items()}
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
elapsed = time.perf_counter() - t0
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({
    "cold_start_s": elapsed,
    "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
    "modules": sorted({m.split(".")[0] for m in sys.modules}),
    "outputs": {k: float(np.asarray(v, np.float64).sum()) for k, v in out.items()},
}))
"""


def feeds_for(repo: Path, model: str) -> tuple[str, dict[str, tuple[list[int], str]]]:
    """The model file and one row of ones per input (variable dims 8): (shape, numpy dtype)."""
    from edgecloud import ModelRepository, numpy_dtype

    entry = ModelRepository(repo).get(model, verify=False)
    config = entry.config
    shapes = {
        s.name: (
            [8 if d == -1 else d for d in ((1, *s.shape) if config.batched else s.shape)],
            numpy_dtype(s.datatype).str,
        )
        for s in config.inputs
    }
    return str(entry.model_path), shapes


MODES = ("edge", "first", "bare")
"""edge: with the record of a previous check; first: edge with none; bare: onnxruntime."""


def run_child(
    mode: str, repo: Path, model: str, path: str, shapes: Any, state: Path
) -> dict[str, Any]:
    """One fresh process of ``mode``; ``state``: the edge's state directory (records)."""
    with tempfile.TemporaryDirectory(prefix="edge-first-") as empty:
        env = {**os.environ, "EDGECLOUD_STATE_DIR": empty if mode == "first" else str(state)}
        result = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(repo), model, path, json.dumps(shapes)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    if result.returncode != 0:
        raise SystemExit(f"{mode} child failed on {model}:\n{result.stderr}")
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def seed(repo: Path, model: str, path: str, shapes: Any, state: Path) -> None:
    """One untimed edge run that leaves the record of its check in ``state``; files
    changed within the record's racy window (2 s: a zoo just built) are waited for."""
    from edgecloud._verified import RACY_NS

    newest = max(p.stat().st_ctime_ns for p in Path(path).parent.iterdir())
    time.sleep(max(0.0, (newest + RACY_NS - time.time_ns()) / 1e9))
    run_child("edge", repo, model, path, shapes, state)


def measure(repo: Path, model: str, runs: int, state: Path) -> dict[str, Any]:
    path, shapes = feeds_for(repo, model)
    seed(repo, model, path, shapes, state)
    samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for i in range(runs):
        for mode in MODES[i % 3 :] + MODES[: i % 3]:
            samples[mode].append(run_child(mode, repo, model, path, shapes, state))
    out: dict[str, Any] = {"model": model}
    for mode, rows in samples.items():
        out[mode] = {
            "cold_start_ms": stats([r["cold_start_s"] * 1e3 for r in rows]),
            "peak_rss_mb": stats([r["peak_rss_mb"] for r in rows]),
        }
    edge, bare = samples["edge"][-1], samples["bare"][-1]
    for name, value in edge["outputs"].items():  # the same answer, or the timing means nothing
        if abs(value - bare["outputs"][name]) > 1e-3 * max(1.0, abs(value)):
            theirs = bare["outputs"][name]
            raise SystemExit(f"{model}: output {name} differs: edge {value}, bare {theirs}")
    out["heavy_modules_on_edge"] = sorted(set(edge["modules"]) & set(HEAVY))
    out["extra_modules_on_edge"] = sorted(set(edge["modules"]) - set(bare["modules"]))
    out["cold_start_ratio"] = (
        out["edge"]["cold_start_ms"]["median"] / (out["bare"]["cold_start_ms"]["median"])
    )
    out["rss_delta_mb"] = (
        out["edge"]["peak_rss_mb"]["median"] - out["bare"]["peak_rss_mb"]["median"]
    )
    out["first_start_ratio"] = (
        out["first"]["cold_start_ms"]["median"] / out["bare"]["cold_start_ms"]["median"]
    )
    return out


def show(results: list[dict[str, Any]], runs: int) -> None:
    table = Table(
        "model",
        "path",
        "cold start ms: median (min–max)",
        "peak RSS MB: median (min–max)",
        title=f"Edge path vs bare onnxruntime: fresh processes, {runs} runs each",
    )
    names = {"bare": "bare", "edge": "edge", "first": "edge, first start"}
    for r in results:
        for mode in ("bare", "edge", "first"):
            t, m = r[mode]["cold_start_ms"], r[mode]["peak_rss_mb"]
            table.add_row(
                r["model"],
                names[mode],
                f"{t['median']:.0f} ({t['min']:.0f}–{t['max']:.0f})",
                f"{m['median']:.1f} ({m['min']:.1f}–{m['max']:.1f})",
            )
        table.add_row(
            "", "edge/bare", f"{r['cold_start_ratio']:.2f}× (first start "
            f"{r['first_start_ratio']:.2f}×)", f"{r['rss_delta_mb']:+.1f} MB", end_section=True,
        )  # fmt: skip
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repo", default="model-repo", type=Path)
    parser.add_argument("--runs", default=10, type=int, help="fresh processes per side")
    args = parse_bench_args(parser)
    from edgecloud import ModelRepository
    from edgecloud.zoo import build_zoo

    build_zoo(ModelRepository(args.repo), list(MODELS))
    import edgecloud

    compileall.compile_dir(Path(edgecloud.__file__).parent, quiet=1)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="edge-state-") as state:
        results = [measure(args.repo, model, args.runs, Path(state)) for model in MODELS]
    load_after = os.getloadavg()[0]
    show(results, args.runs)
    first = results[0]
    path = write_result(
        "edge_footprint",
        {
            "benchmark": "edge_footprint",
            "peer": "onnxruntime.InferenceSession + run in a fresh process",
            "cold_start_ratio": first["cold_start_ratio"],
            "rss_delta_mb": first["rss_delta_mb"],
            "cold_start_ratio_max": max(r["cold_start_ratio"] for r in results),
            "definition": "digits-small: median edge/bare cold start (import + load + first "
            "inference, fresh process; the edge's sha256 check vouched for by the record of a "
            "previous check, as every start after the first since install) and median peak "
            "RSS (VmHWM) edge - bare, MB; cold_start_ratio_max: the larger ratio of "
            "digits-small and minilm; first_start_ratio per case: with no record (every file "
            "hashed)",
            "targets": {"cold_start_ratio": TARGET_RATIO, "rss_delta_mb": TARGET_RSS_MB},
            "runs": args.runs,
            "load_average_1min": {"before": load_before, "after": load_after},
            "cases": results,
            "machine": machine(),
        },
    )
    print(
        f"digits-small: cold start {first['cold_start_ratio']:.2f}× (target ≤ {TARGET_RATIO}×), "
        f"peak RSS {first['rss_delta_mb']:+.1f} MB (target ≤ +{TARGET_RSS_MB:.0f} MB); "
        + ", ".join(f"{r['model']} {r['cold_start_ratio']:.2f}×" for r in results[1:])
        + f"; wrote {path}"
    )


if __name__ == "__main__":
    main()
