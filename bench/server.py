"""edgecloud's server vs MLServer 1.7.1, same ONNX model, same machine, same load.

Both serve ``digits-small`` (MLServer through the small onnxruntime runtime in
bench/peers/mlserver_onnx, the documented way to add a runtime to it). Each
case is measured with our closed-loop generator (bench/loadgen.py) and, when
installed, with ``wrk`` as an independent one; servers alternate within every
concurrency level so drift hits both alike. MLServer has no binary tensor
extension, so the headline ratio compares JSON with JSON.

    python bench/server.py [--repo model-repo] [--seconds 5] [--concurrency 1 8 64]

Prints a table, writes bench/results/server.json (top-level ``ratio``:
edgecloud / MLServer req/s at concurrency 8) and bench/results/server.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_result
from loadgen import run_load
from peers.mlserver import start_mlserver

from edgecloud import ModelRepository
from edgecloud.server.launch import free_port, serve_process
from edgecloud.zoo import build_zoo

MODEL = "digits-small"
PATH = f"/v2/models/{MODEL}/infer"
WRK_LUA = """wrk.method = "POST"
wrk.body = io.open("{body}", "rb"):read("*a")
wrk.headers["Content-Type"] = "{content_type}"
{extra}
"""


def bodies() -> dict[str, tuple[bytes, dict[str, str]]]:
    """The same 2x64 FP32 request, as JSON and with binary tensors."""
    x = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    tensor = {"name": "pixels", "shape": [2, 64], "datatype": "FP32"}
    as_json = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return {
        "json": (as_json, {"Content-Type": "application/json"}),
        "binary": (
            header + x.tobytes(),
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(header)),
            },
        ),
    }


def loadgen(
    port: int, body: bytes, headers: dict[str, str], c: int, seconds: float
) -> dict[str, Any]:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run_load(port, PATH, body, headers, concurrency=c, seconds=seconds))
    summary: dict[str, Any] = result.summary()
    return summary


def wrk(port: int, body: bytes, headers: dict[str, str], c: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "body").write_bytes(body)
        extra = "\n".join(
            f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items() if k != "Content-Type"
        )
        script = WRK_LUA.format(
            body=Path(tmp) / "body", content_type=headers["Content-Type"], extra=extra
        )
        (Path(tmp) / "post.lua").write_text(script)
        out = subprocess.run(
            ["wrk", "-t1", f"-c{c}", f"-d{int(seconds)}s", "--latency",
             "-s", str(Path(tmp) / "post.lua"), f"http://127.0.0.1:{port}{PATH}"],
            capture_output=True, text=True, timeout=seconds + 30,
        ).stdout  # fmt: skip
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "concurrency": c,
        "req_per_s": rate,
        "p50_ms": _wrk_ms(out, "50%"),
        "p99_ms": _wrk_ms(out, "99%"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


def _wrk_ms(out: str, pct: str) -> float:
    match = re.search(rf"{re.escape(pct)}\s+([\d.]+)(us|ms|s)", out)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repo", default="model-repo", type=Path)
    parser.add_argument("--seconds", default=5.0, type=float)
    parser.add_argument("--concurrency", default=[1, 8, 64], type=int, nargs="+")
    args = parser.parse_args()
    console = Console()
    repo = ModelRepository(args.repo)
    build_zoo(repo, [MODEL])
    model_file = repo.get(MODEL).model_path.resolve()
    payloads = bodies()
    ec_port, ml_port = free_port(), free_port()
    console.print("starting edgecloud and MLServer (MLServer's virtualenv is built on first use)…")
    edgecloud = serve_process(repo.root, http_port=ec_port)
    workdir = Path(tempfile.mkdtemp(prefix="mlserver-"))
    mlserver = start_mlserver(model_file, MODEL, workdir, ml_port, free_port(), free_port())
    contenders = [
        ("edgecloud", "binary", ec_port),
        ("edgecloud", "json", ec_port),
        ("mlserver", "json", ml_port),
    ]
    generators = [("loadgen", loadgen)] + ([("wrk", wrk)] if shutil.which("wrk") else [])
    cases: list[dict[str, Any]] = []
    total = len(args.concurrency) * len(contenders) * len(generators)
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("load", total=total)
            for i, c in enumerate(args.concurrency):
                order = contenders[i % 3 :] + contenders[: i % 3]
                for gen_name, generate in generators:
                    for server, encoding, port in order:
                        body, headers = payloads[encoding]
                        result = generate(port, body, headers, c, args.seconds)
                        cases.append(
                            {
                                "server": server,
                                "encoding": encoding,
                                "generator": gen_name,
                                **result,
                            }
                        )
                        progress.advance(task)
    finally:
        ec_stop = edgecloud.stop()
        ml_stop = mlserver.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(console, cases, args, ec_stop, ml_stop)


def find(
    cases: list[dict[str, Any]], server: str, encoding: str, gen: str, c: int
) -> dict[str, Any]:
    key = (server, encoding, gen, c)
    return next(
        r for r in cases if (r["server"], r["encoding"], r["generator"], r["concurrency"]) == key
    )


def report(
    console: Console,
    cases: list[dict[str, Any]],
    args: Any,
    ec_stop: float | None,
    ml_stop: float | None,
) -> None:
    table = Table(
        "generator", "concurrency", "edgecloud binary req/s", "edgecloud json req/s",
        "MLServer json req/s", "ratio (json)", "p99 ms ec json / MLServer",
        title=f"{MODEL}, 2×64 FP32 per request, {args.seconds:g} s per case",
    )  # fmt: skip
    ratios = {}
    for gen in sorted({r["generator"] for r in cases}):
        for c in args.concurrency:
            eb = find(cases, "edgecloud", "binary", gen, c)
            ej = find(cases, "edgecloud", "json", gen, c)
            mj = find(cases, "mlserver", "json", gen, c)
            ratio = ej["req_per_s"] / mj["req_per_s"]
            ratios[(gen, c)] = ratio
            table.add_row(
                gen, str(c), f"{eb['req_per_s']:,.0f}", f"{ej['req_per_s']:,.0f}",
                f"{mj['req_per_s']:,.0f}", f"{ratio:.2f}×",
                f"{ej['p99_ms']:.2f} / {mj['p99_ms']:.2f}",
            )  # fmt: skip
    console.print(table)
    c8 = 8 if 8 in args.concurrency else args.concurrency[0]
    head_ec, head_ml = (
        find(cases, "edgecloud", "json", "loadgen", c8),
        find(cases, "mlserver", "json", "loadgen", c8),
    )
    shutdown = {"edgecloud_s": ec_stop, "mlserver_s": ml_stop}
    console.print(f"SIGTERM → exit: edgecloud {_secs(ec_stop)}, MLServer {_secs(ml_stop)}")
    path = write_result(
        "server",
        {
            "benchmark": "server",
            "peer": "MLServer 1.7.1 (1 worker, onnxruntime custom runtime)",
            "model": MODEL,
            "ratio": ratios[("loadgen", c8)],
            "ratio_definition": f"edgecloud / MLServer req/s at concurrency {c8}, JSON "
            "(MLServer has no binary tensor extension), own load generator",
            "p99_ratio": head_ec["p99_ms"] / head_ml["p99_ms"],
            "target": ">= 2x throughput at concurrency >= 8 with p99 no worse",
            "cases": cases,
            "sigterm_exit": shutdown,
            "seconds_per_case": args.seconds,
            "machine": machine(),
        },
    )
    plot(cases, args.concurrency)
    console.print(f"wrote {path} and {RESULTS / 'server.png'}")


def _secs(value: float | None) -> str:
    return "did not exit in 15 s" if value is None else f"{value:.2f} s"


def plot(cases: list[dict[str, Any]], levels: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_p99) = plt.subplots(1, 2, figsize=(11, 4))
    series = [("edgecloud", "binary"), ("edgecloud", "json"), ("mlserver", "json")]
    width = 0.27
    x = np.arange(len(levels))
    for i, (server, encoding) in enumerate(series):
        rows = [find(cases, server, encoding, "loadgen", c) for c in levels]
        label = f"{server} {encoding}"
        ax_rate.bar(x + (i - 1) * width, [r["req_per_s"] for r in rows], width, label=label)
        ax_p99.bar(x + (i - 1) * width, [r["p99_ms"] for r in rows], width, label=label)
    for ax, title in (
        (ax_rate, "throughput (req/s, higher is better)"),
        (ax_p99, "p99 latency (ms, lower is better)"),
    ):
        ax.set_xticks(x, [f"c={c}" for c in levels])
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"{MODEL} over the Open Inference Protocol, same machine, same load generator")
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / "server.png", dpi=110)


if __name__ == "__main__":
    main()
