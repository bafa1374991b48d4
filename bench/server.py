"""edgecloud's server against its own stack's ceiling and against MLServer, in one run.

Servers, all on this machine, started by the bench:

* ``ceiling``: a fixed-response ASGI app (bench/ceiling_app.py: read the body,
  answer 200 bytes of JSON) on the same uvicorn + httptools + uvloop stack
  ``edgecloud serve`` runs on — what the stack alone can do (HTTP only), as
  ONE process;
* ``ceiling-N``: the same app as N processes (``uvicorn --workers N``: one
  shared listening socket), the apples-to-apples ceiling for edgecloud-N;
* ``edgecloud-1``: ``edgecloud serve`` as one process (``--workers 1`` when
  serve knows the flag);
* ``edgecloud-N``: ``edgecloud serve --workers N`` (N = the number of cores);
  skipped, with the reason, when serve refuses the flag;
* ``mlserver``: MLServer 1.7.1 through bench/peers (its onnxruntime runtime),
  one instance per model; it has no binary extension over HTTP.

Cases: ``digits-small`` (batch 1, 64 FP32) and ``minilm`` (batch 1, 16
tokens), JSON and binary (HTTP: JSON tensors vs the binary tensor extension;
gRPC: typed ``contents`` vs ``raw_input_contents``), HTTP and gRPC, c = 1 / 8
/ 64. Within every (model, protocol, encoding, c) the servers run back to
back in an order that rotates, so drift hits all alike. HTTP load comes from
``wrk`` when installed (else bench/loadgen.py), gRPC load from
bench/grpc_loadgen.py (grpc.aio; at high rates the generator is itself a
limit, the same for every server).

    python bench/server.py [--repo model-repo] [--seconds 5] [--quick] [--no-mlserver]

Prints a table, writes bench/results/server.json (top-level ``ceiling_ratio``:
edgecloud-N / ceiling-N req/s on digits-small, HTTP JSON, c=64 — same number
of processes on both sides, from the medians of ``--headline-rounds`` (5)
interleaved rounds of that case run after the table (one 4 s run moves with
the machine); edgecloud-1 / ceiling when N workers were
skipped, as ``ceiling_ratio_server`` says; ``ceiling_ratio_1`` is
edgecloud-1 / ceiling and ``ceiling_ratio_n_over_1`` edgecloud-N / the
one-process ceiling) and
bench/results/server.png. The default (4 s per case after a 1 s warm-up)
runs in about 9-10 minutes with MLServer; ``--quick`` runs every case for
1.5 s after a 0.5 s warm-up (``"quick": true`` in the JSON): a smoke run, not
a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import infer_bodies, machine, parse_bench_args, results_dir, write_result
from grpc_loadgen import infer_request, run_grpc_load
from loadgen import run_load
from peers.mlserver import start_mlserver

from edgecloud import ModelRepository
from edgecloud.server.launch import ServerProcess, free_port, launch, serve_process
from edgecloud.zoo import build_zoo

HERE = Path(__file__).resolve().parent
MODELS = ["digits-small", "minilm"]
SERVERS = ["ceiling", "ceiling-N", "edgecloud-1", "edgecloud-N", "mlserver"]
HEADLINE = ("digits-small", "http", "json", 64)
WRK_LUA = """wrk.method = "POST"
wrk.body = io.open("{body}", "rb"):read("*a")
wrk.headers["Content-Type"] = "{content_type}"
{extra}
"""

Inputs = dict[str, np.ndarray[Any, Any]]


@dataclass
class Contender:
    """One started server: its ports, or why it is not measured."""

    name: str
    http_port: int | None = None
    grpc_port: int | None = None
    process: ServerProcess | None = None
    skipped: str | None = None
    """Why this server is not measured at all (e.g. serve refuses --workers)."""
    models: set[str] = field(default_factory=set)
    """Models it serves (empty: any path, the ceiling)."""

    def why_not(self, model: str, protocol: str, encoding: str) -> str | None:
        """Why a case is skipped for this server, or None when it runs."""
        if self.skipped:
            return self.skipped
        if self.name.startswith("ceiling") and protocol == "grpc":
            return "the ceiling is an HTTP (ASGI) app"
        if self.name == "mlserver" and protocol == "http" and encoding == "binary":
            return "MLServer has no binary tensor extension over HTTP"
        if self.models and model not in self.models:
            return f"{self.name} does not serve {model}"
        return None


def inputs_of(model: str) -> Inputs:
    """One row of each model's inputs (seeded)."""
    rng = np.random.default_rng(0)
    if model == "digits-small":
        return {"pixels": rng.random((1, 64), dtype=np.float32)}
    ids = rng.integers(0, 30521, size=(1, 16), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def http_bodies(inputs: Inputs) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The same request as JSON and with binary tensors (outputs binary too)."""
    as_json, header, binary = infer_bodies(inputs)
    return {
        "json": (as_json, {"Content-Type": "application/json"}),
        "binary": (
            binary,
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(header)),
            },
        ),
    }


def loadgen(
    port: int, path: str, body: bytes, headers: dict[str, str], c: int, seconds: float,
    warmup: float,
) -> dict[str, Any]:  # fmt: skip
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run_load(port, path, body, headers, concurrency=c, seconds=seconds,
                             warmup=warmup))  # fmt: skip
    summary: dict[str, Any] = result.summary()
    return summary


def wrk(
    port: int, path: str, body: bytes, headers: dict[str, str], c: int, seconds: float,
    warmup: float,
) -> dict[str, Any]:  # fmt: skip
    """wrk -t1 (after ``warmup`` seconds of the same load, discarded)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "body").write_bytes(body)
        extra = "\n".join(
            f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items() if k != "Content-Type"
        )
        script = WRK_LUA.format(
            body=Path(tmp) / "body", content_type=headers["Content-Type"], extra=extra
        )
        (Path(tmp) / "post.lua").write_text(script)
        url = f"http://127.0.0.1:{port}{path}"

        def once(duration: float) -> str:
            return subprocess.run(
                ["wrk", "-t1", f"-c{c}", f"-d{max(1, round(duration))}s", "--latency",
                 "-s", str(Path(tmp) / "post.lua"), url],
                capture_output=True, text=True, timeout=duration + 30,
            ).stdout  # fmt: skip

        if warmup > 0:
            once(warmup)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = once(seconds)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    done = re.search(r"(\d+) requests in", out)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "concurrency": c,
        "req_per_s": float(rate.group(1)) if rate else float("nan"),
        # wrk's own CPU (user + system) per request: the share of the machine's
        # cores the load generator takes, which bounds what more workers can add
        "loadgen_cpu_us_per_request": cpu * 1e6 / int(done.group(1)) if done else float("nan"),
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


def serve_knows_workers() -> bool:
    """Whether ``edgecloud serve`` takes ``--workers`` (its --help lists it)."""
    out = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "serve", "--help"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    return "--workers" in out.stdout


def start_edgecloud(repo: Path, name: str, workers: int | None, logs: Path) -> Contender:
    http_port, grpc_port = free_port(), free_port()
    extra = ["--workers", str(workers)] if workers is not None else []
    process = serve_process(
        repo, http_port=http_port, grpc_port=grpc_port, extra=extra, log=logs / f"{name}.log"
    )
    return Contender(name, http_port, grpc_port, process, models=set(MODELS))


def start_ceiling(logs: Path, workers: int = 1) -> Contender:
    """The fixed-response app; ``workers`` > 1 runs ``uvicorn --workers`` (``ceiling-N``)."""
    port = free_port()
    name = "ceiling" if workers == 1 else "ceiling-N"
    extra = [] if workers == 1 else ["--workers", str(workers)]
    argv = [
        sys.executable, "-m", "uvicorn", "ceiling_app:app", "--host", "127.0.0.1",
        "--port", str(port), "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning", "--lifespan", "on", *extra,
    ]  # fmt: skip
    process = launch(
        argv, f"http://127.0.0.1:{port}", log=logs / f"{name}.log", cwd=HERE,
        ready_path="/ready",
    )  # fmt: skip
    return Contender(name, port, None, process)


def start_peer(model: str, repo: ModelRepository, workdir: Path) -> Contender:
    http_port, grpc_port = free_port(), free_port()
    process = start_mlserver(
        repo.get(model).model_path.resolve(), model, workdir / model, http_port, grpc_port,
        free_port(),
    )  # fmt: skip
    return Contender("mlserver", http_port, grpc_port, process, models={model})


def measure(
    server: Contender, model: str, protocol: str, encoding: str, c: int, args: Any,
    http_gen: Any,
) -> dict[str, Any]:  # fmt: skip
    inputs = inputs_of(model)
    if protocol == "http":
        body, headers = http_bodies(inputs)[encoding]
        assert server.http_port is not None
        path = f"/v2/models/{model}/infer"
        return dict(http_gen(server.http_port, path, body, headers, c, args.seconds, args.warmup))
    request = infer_request(model, inputs, raw=encoding == "binary")
    target = f"127.0.0.1:{server.grpc_port}"
    return asyncio.run(
        run_grpc_load(target, request, concurrency=c, seconds=args.seconds, warmup=args.warmup)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repo", default="model-repo", type=Path)
    parser.add_argument("--seconds", default=4.0, type=float)
    parser.add_argument("--warmup", default=1.0, type=float)
    parser.add_argument("--concurrency", default=[1, 8, 64], type=int, nargs="+")
    parser.add_argument("--models", default=MODELS, nargs="+", choices=MODELS)
    parser.add_argument("--workers", default=os.cpu_count() or 2, type=int,
                        help="N of edgecloud-N (default: the number of cores)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="1.5 s per case: a smoke run")
    parser.add_argument("--no-mlserver", action="store_true", help="leave MLServer out")
    parser.add_argument("--generator", choices=["wrk", "loadgen"], default=None,
                        help="HTTP load generator (default: wrk when installed)")  # fmt: skip
    parser.add_argument("--headline-rounds", default=5, type=int,
                        help="interleaved rounds of the headline case (digits-small "
                        "HTTP JSON c=64) whose medians give the ratios (0: the "
                        "table's one run)")  # fmt: skip
    args = parse_bench_args(parser)
    if args.quick:
        args.seconds, args.warmup, args.headline_rounds = 1.5, 0.5, 0
    generator = args.generator or ("wrk" if shutil.which("wrk") else "loadgen")
    http_gen = wrk if generator == "wrk" else loadgen
    console = Console(width=170)
    repo = ModelRepository(args.repo)
    build_zoo(repo, args.models)
    workdir = Path(tempfile.mkdtemp(prefix="bench-server-"))
    cases: list[dict[str, Any]] = []
    stops: dict[str, float | None] = {}
    rounds: dict[str, list[dict[str, Any]]] = {}
    knows_workers = serve_knows_workers()
    console.print("starting the ceiling app and edgecloud…")
    shared = [
        start_ceiling(workdir),
        start_ceiling(workdir, args.workers),
        start_edgecloud(args.repo, "edgecloud-1", 1 if knows_workers else None, workdir),
    ]
    if knows_workers:
        shared.append(start_edgecloud(args.repo, "edgecloud-N", args.workers, workdir))
    else:
        reason = "edgecloud serve does not take --workers (this checkout has no multi-worker serve)"
        shared.append(Contender("edgecloud-N", skipped=reason))
    try:
        for model in args.models:
            peer = Contender("mlserver", skipped="left out (--no-mlserver)")
            if not args.no_mlserver:
                console.print(f"starting MLServer for {model} (its virtualenv is built once)…")
                peer = start_peer(model, repo, workdir)
            try:
                cases += run_model(console, model, [*shared, peer], args, http_gen, generator)
            finally:
                if peer.process is not None:
                    stops[f"mlserver ({model})"] = peer.process.stop()
        if HEADLINE[0] in args.models and args.headline_rounds > 0:
            rounds = headline_rounds(console, shared, args, http_gen)
    finally:
        for server in shared:
            if server.process is not None:
                stops[server.name] = server.process.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(console, cases, args, stops, generator, rounds)


def headline_rounds(
    console: Console, servers: list[Contender], args: Any, http_gen: Any
) -> dict[str, list[dict[str, Any]]]:
    """The headline case again on the shared servers, ``args.headline_rounds`` times,
    the servers' order rotating each round: one 4 s run per server moves with the
    machine (the ceiling as N processes measured 68k and 75k req/s in two runs
    minutes apart, as ``uvicorn --workers`` spreads wrk's connections well or not),
    so the ratios are taken from medians of interleaved rounds."""
    model, protocol, encoding, c = HEADLINE
    runnable = [s for s in servers if s.why_not(model, protocol, encoding) is None]
    found: dict[str, list[dict[str, Any]]] = {s.name: [] for s in runnable}
    with Progress(console=console) as progress:
        task = progress.add_task("headline rounds", total=args.headline_rounds * len(runnable))
        for r in range(args.headline_rounds):
            shift = r % len(runnable)
            for server in runnable[shift:] + runnable[:shift]:
                found[server.name].append(
                    measure(server, model, protocol, encoding, c, args, http_gen)
                )
                progress.advance(task)
    return found


def run_model(
    console: Console, model: str, servers: list[Contender], args: Any, http_gen: Any,
    generator: str,
) -> list[dict[str, Any]]:  # fmt: skip
    combos = [(p, e) for p in ("http", "grpc") for e in ("json", "binary")]
    cases: list[dict[str, Any]] = []
    rotation = 0
    with Progress(console=console) as progress:
        task = progress.add_task(model, total=len(combos) * len(args.concurrency) * len(servers))
        for c in args.concurrency:
            for protocol, encoding in combos:
                rotation += 1
                order = servers[rotation % len(servers) :] + servers[: rotation % len(servers)]
                for server in order:
                    key = {"server": server.name, "model": model, "protocol": protocol,
                           "encoding": encoding, "concurrency": c}  # fmt: skip
                    reason = server.why_not(model, protocol, encoding)
                    if reason is not None:
                        cases.append({**key, "skipped": reason})
                    else:
                        gen = generator if protocol == "http" else "grpc_loadgen"
                        result = measure(server, model, protocol, encoding, c, args, http_gen)
                        cases.append({**key, "generator": gen, **result})
                    progress.advance(task)
    return cases


def find(cases: list[dict[str, Any]], server: str, *key: Any) -> dict[str, Any] | None:
    """The measured case of ``server`` at (model, protocol, encoding, c), or None."""
    for r in cases:
        if (r["server"], r["model"], r["protocol"], r["encoding"], r["concurrency"]) == (
            server,
            *key,
        ):
            return None if "skipped" in r else r
    return None


def report(
    console: Console, cases: list[dict[str, Any]], args: Any, stops: dict[str, float | None],
    generator: str, rounds: dict[str, list[dict[str, Any]]],
) -> None:  # fmt: skip
    title = (
        f"req/s (p99 ms), batch 1, {args.seconds:g} s per case"
        + (" — QUICK smoke run" if args.quick else "")
        + f"; HTTP load: {generator}, gRPC load: grpc.aio"
    )
    table = Table("model", "protocol", "encoding", "c", *SERVERS, title=title)
    for model in args.models:
        for protocol in ("http", "grpc"):
            for encoding in ("json", "binary"):
                for c in args.concurrency:
                    cells = []
                    for server in SERVERS:
                        r = find(cases, server, model, protocol, encoding, c)
                        cells.append("—" if r is None else
                                     f"{r['req_per_s']:,.0f} ({r['p99_ms']:.1f})")  # fmt: skip
                    table.add_row(model, protocol, encoding, str(c), *cells)
    console.print(table)
    skipped = sorted({f"{r['server']}: {r['skipped']}" for r in cases if "skipped" in r})
    for line in skipped:
        console.print(f"skipped — {line}")
    ceiling = _headline(cases, rounds, "ceiling")
    ceiling_n = _headline(cases, rounds, "ceiling-N")
    one = _headline(cases, rounds, "edgecloud-1")
    many = _headline(cases, rounds, "edgecloud-N")
    peer = find(cases, "mlserver", *HEADLINE)
    if rounds:
        console.print(f"headline case, {args.headline_rounds} interleaved rounds (req/s):")
        for name, runs in rounds.items():
            rates = ", ".join(f"{r['req_per_s']:,.0f}" for r in runs)
            wrk_cpu = np.median([r.get("loadgen_cpu_us_per_request", np.nan) for r in runs])
            console.print(
                f"  {name}: {rates} (median {_median_rate(runs):,.0f}; "
                f"the load generator's CPU {wrk_cpu:.1f} µs / request)"
            )
    ratio_1 = _ratio(one, ceiling)
    ratio_n = _ratio(many, ceiling_n)
    best = "edgecloud-N / ceiling-N" if ratio_n is not None else "edgecloud-1 / ceiling"
    ratio = ratio_n if ratio_n is not None else ratio_1
    for label, value in [
        ("ceiling_ratio (edgecloud-N / ceiling-N, same process count)", ratio_n),
        ("ceiling_ratio_1 (edgecloud-1 / ceiling, one process each)", ratio_1),
        ("ceiling_ratio_n_over_1 (edgecloud-N / one-process ceiling)", _ratio(many, ceiling)),
    ]:
        console.print(f"{label}, digits-small HTTP JSON c=64: "
                      f"{'—' if value is None else f'{value:.2f}'}")  # fmt: skip
    path = write_result(
        "server",
        {
            "benchmark": "server",
            "quick": bool(args.quick),
            "ceiling_ratio": ratio,
            "ceiling_ratio_server": best,
            "ceiling_ratio_definition": "edgecloud with N workers / the bare "
            "uvicorn+httptools+uvloop app with a fixed 200-byte JSON answer run as N "
            "processes (uvicorn --workers N) — the same process count on both sides; "
            "1 / 1 when N workers were skipped; req/s, digits-small batch 1, HTTP JSON, c=64",
            "ceiling_ratio_from": (
                f"medians of {args.headline_rounds} interleaved rounds (headline_rounds)"
                if rounds
                else "the table's one run per server"
            ),
            "headline_rounds": {
                name: [r["req_per_s"] for r in runs] for name, runs in rounds.items()
            },
            "ceiling_ratio_per_round": [
                a["req_per_s"] / b["req_per_s"]
                for a, b in zip(
                    rounds.get("edgecloud-N", []), rounds.get("ceiling-N", []), strict=True
                )
            ],
            "ceiling_ratio_1": ratio_1,
            "ceiling_ratio_n_over_1": _ratio(many, ceiling),
            "ceiling_n_over_1": _ratio(ceiling_n, ceiling),
            "loadgen_cpu_us_per_request": {
                name: float(np.median([r.get("loadgen_cpu_us_per_request", np.nan) for r in runs]))
                for name, runs in rounds.items()
            },
            "workers": args.workers,
            "workers_speedup": many["req_per_s"] / one["req_per_s"] if many and one else None,
            "ratio": one["req_per_s"] / peer["req_per_s"] if one and peer else None,
            "ratio_definition": "edgecloud-1 (its headline median when the rounds ran) / "
            "MLServer req/s, digits-small HTTP JSON c=64",
            "targets": {"ceiling_ratio": ">= 0.5", "workers_speedup": ">= 1.7 at 2 workers"},
            "peer": "MLServer 1.7.1 (1 worker, onnxruntime custom runtime in bench/peers)",
            "http_generator": generator,
            "grpc_generator": "bench/grpc_loadgen.py (grpc.aio, one channel)",
            "cases": cases,
            "sigterm_exit_s": stops,
            "seconds_per_case": args.seconds,
            "warmup_s": args.warmup,
            "machine": machine(),
        },
    )
    plot(cases, args)
    console.print(f"wrote {path} and {results_dir() / 'server.png'}")


def _median_rate(runs: list[dict[str, Any]]) -> float:
    return float(np.median([r["req_per_s"] for r in runs]))


def _headline(
    cases: list[dict[str, Any]], rounds: dict[str, list[dict[str, Any]]], server: str
) -> dict[str, Any] | None:
    """The headline case of ``server``: its median over the rounds when they ran, else
    the table's run."""
    runs = rounds.get(server)
    if runs:
        return {"req_per_s": _median_rate(runs)}
    return find(cases, server, *HEADLINE)


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    """a's req/s over b's, or None when either was not measured."""
    return a["req_per_s"] / b["req_per_s"] if a and b else None


def plot(cases: list[dict[str, Any]], args: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = [(p, e) for p in ("http", "grpc") for e in ("json", "binary")]
    fig, axes = plt.subplots(
        len(args.models), len(combos), figsize=(4 * len(combos), 3.4 * len(args.models)),
        squeeze=False,
    )  # fmt: skip
    width = 0.8 / len(SERVERS)
    x = np.arange(len(args.concurrency))
    for row, model in enumerate(args.models):
        for col, (protocol, encoding) in enumerate(combos):
            ax = axes[row][col]
            for i, server in enumerate(SERVERS):
                rates = [
                    (r["req_per_s"] if r else 0.0)
                    for r in (
                        find(cases, server, model, protocol, encoding, c) for c in args.concurrency
                    )
                ]
                ax.bar(x + (i - (len(SERVERS) - 1) / 2) * width, rates, width, label=server)
            ax.set_xticks(x, [f"c={c}" for c in args.concurrency])
            ax.set_title(f"{model} {protocol} {encoding}", fontsize=9)
            ax.set_ylabel("req/s")
    axes[0][0].legend(fontsize=7)
    quick = " (QUICK smoke run)" if args.quick else ""
    fig.suptitle(f"Open Inference Protocol servers on one machine, batch 1{quick}")
    fig.tight_layout()
    fig.savefig(results_dir() / "server.png", dpi=100)


if __name__ == "__main__":
    main()
