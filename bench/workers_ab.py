"""``edgecloud serve`` with 1 worker vs N workers (and thread/runner variants), interleaved.

Every variant is an ``edgecloud serve`` started once (all up at the same time,
idle but for the one under load); then, round after round, each (model,
concurrency, variant) takes the same load as bench/server.py (HTTP JSON,
batch 1, its body and wrk -t1; gRPC: typed contents from
bench/grpc_loadgen.py over ONE channel, which is one HTTP/2 connection and
so one worker) back to back, in an order that rotates every round, so
drift in a shared machine's load hits all alike. Reports medians over the
rounds of req/s, p50/p99, the mean rows per runtime call
(``edgecloud_batch_size`` from /metrics) and the server's CPU per request
(user + system of the server and its workers, /proc, over the warm-up and the
run, divided by the rows run): the figure that the machine's other load
disturbs least, since a compute-bound server's req/s on a quiet machine is its
cores over it.

    python bench/workers_ab.py [--rounds 6] [--seconds 4] [--concurrency 64 8]
        [--models minilm digits-small] [--variants w1 w2 w2-2slots ...]

A variant is ``NAME=ARGS`` with ARGS the extra ``serve`` flags and
``EDGECLOUD_SERVER_*`` settings as ``KEY:VALUE``, comma-separated, e.g.
``w2r1=--workers:2,EDGECLOUD_SERVER_RUNNERS_PER_MODEL:1``; a bare name picks
one of :data:`VARIANTS`. Writes ``workers_ab.json`` and ``.png`` (bench/_common.py's
results rule: bench/results/local/ unless the defaults or ``--write``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_bench_args, write_result
from grpc_loadgen import infer_request, run_grpc_load
from server import http_bodies, inputs_of, wrk

from edgecloud.server.launch import ServerProcess, free_port, serve_process

#: Named variants: serve flags and EDGECLOUD_SERVER_* settings.
VARIANTS: dict[str, str] = {
    "w1": "--workers:1",
    "w2": "--workers:2",
    # the previous default of 2 workers: 2 runner slots per model in each worker
    "w2-2slots": "--workers:2,EDGECLOUD_SERVER_RUNNERS_PER_MODEL:4",
    # every worker with all cores' threads: what one gRPC channel (one worker) needed
    # before a worker could borrow the cores the others leave idle (server/cores.py)
    "w2-t2": "--workers:2,--threads:2",
}


def parse_variant(spec: str) -> tuple[str, list[str], dict[str, str]]:
    """``NAME=--flag:value,ENV_KEY:value`` (or a name of :data:`VARIANTS`) ->
    (name, serve flags, environment)."""
    name, _, body = spec.partition("=")
    body = body or VARIANTS[name]
    flags: list[str] = []
    env: dict[str, str] = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition(":")
        if key.startswith("--"):
            flags += [key, value] if value else [key]
        else:
            env[key] = value
    return name, flags, env


def start(
    repo: Path, flags: list[str], env: dict[str, str], log: Path, grpc_port: int
) -> ServerProcess:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return serve_process(repo, http_port=free_port(), grpc_port=grpc_port, extra=flags, log=log)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def batch_totals(url: str, model: str) -> tuple[float, float]:
    """(executions, rows) of ``model`` so far: ``edgecloud_batch_size`` _count and _sum
    from ``/metrics`` (summed over workers by the server)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = [
        float(m.group(1)) if m else 0.0
        for m in (
            re.search(rf'^edgecloud_batch_size_{part}{{model="{model}"}} (\S+)$', text, re.M)
            for part in ("count", "sum")
        )
    ]
    return found[0], found[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live children (a supervisor's
    workers), from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for each in [pid, *map(int, children)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def connections_per_process(port: int) -> list[int]:
    """Established connections on the server's ``port`` per server process, most first
    (``ss -tnp``: how the kernel's ``SO_REUSEPORT`` hash spread the load's connections)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip
    pids = re.findall(r"pid=(\d+)", out)
    return sorted((pids.count(p) for p in set(pids)), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 8])
    parser.add_argument("--models", nargs="+", default=["minilm", "digits-small"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument(
        "--protocols", nargs="+", default=["http", "grpc"], choices=["http", "grpc"],
        help="grpc: bench/grpc_loadgen.py, ONE channel (one HTTP/2 connection, so one "
        "worker of N takes it all), typed contents",
    )  # fmt: skip
    args = parse_bench_args(parser)
    variants = [parse_variant(v) for v in args.variants]
    bodies = {m: http_bodies(inputs_of(m))["json"] for m in args.models}
    messages = {m: infer_request(m, inputs_of(m), raw=False) for m in args.models}
    samples: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, ServerProcess] = {}
        grpc_ports: dict[str, int] = {}
        try:
            for name, flags, env in variants:
                grpc_ports[name] = free_port()
                log = Path(tmp) / f"{name}.log"
                servers[name] = start(args.repo, flags, env, log, grpc_ports[name])
            cases = [
                (m, protocol, c, name)
                for m in args.models
                for protocol in args.protocols
                for c in args.concurrency
                for name, _, _ in variants
            ]
            for r in range(args.rounds):
                shift = r % len(cases)
                for model, protocol, c, name in cases[shift:] + cases[:shift]:
                    http_port = int(servers[name].url.rsplit(":", 1)[1])
                    port = grpc_ports[name] if protocol == "grpc" else http_port
                    body, headers = bodies[model]
                    before = batch_totals(servers[name].url, model)
                    pid = servers[name].process.pid
                    cpu = cpu_seconds(pid)
                    split: list[list[int]] = []
                    probe = threading.Timer(
                        args.warmup + args.seconds / 2,
                        lambda port=port, split=split: split.append(connections_per_process(port)),
                    )
                    probe.start()
                    if protocol == "grpc":
                        target = f"127.0.0.1:{grpc_ports[name]}"
                        result = asyncio.run(run_grpc_load(
                            target, messages[model], concurrency=c, seconds=args.seconds,
                            warmup=args.warmup,
                        ))  # fmt: skip
                    else:
                        result = wrk(http_port, f"/v2/models/{model}/infer", body, headers,
                                     c, args.seconds, args.warmup)  # fmt: skip
                    probe.join()
                    result["connections_per_process"] = split[0] if split else None
                    cpu = cpu_seconds(pid) - cpu
                    after = batch_totals(servers[name].url, model)
                    # rows run = requests (batch 1 each), warm-up included as the CPU is
                    served = after[1] - before[1]
                    result["cpu_ms_per_request"] = 1e3 * cpu / served if served else None
                    executions = after[0] - before[0]
                    result["mean_batch_rows"] = served / executions if executions else None
                    samples.setdefault((model, protocol, c, name), []).append(result)
                    print(f"round {r} {model:13} {protocol:4} c={c:<3} {name:10} "
                          f"{result['req_per_s']:8.1f} req/s p99 {result['p99_ms']:7.1f} ms, batch "
                          f"{result['mean_batch_rows'] or 0:.1f}, cpu/req "
                          f"{result['cpu_ms_per_request'] or 0:.2f} ms, connections "
                          f"{result['connections_per_process']}",
                          flush=True)  # fmt: skip
        finally:
            for server in servers.values():
                server.stop()
    rows = []
    print(f"\nmedians over {args.rounds} rounds (JSON / typed contents, batch 1)")
    for (model, protocol, c, name), runs in sorted(samples.items()):
        row = {
            "model": model,
            "protocol": protocol,
            "concurrency": c,
            "variant": name,
            "spec": dict(zip(*[[v[0] for v in variants], args.variants], strict=True))[name],
            "req_per_s": statistics.median(x["req_per_s"] for x in runs),
            "p50_ms": statistics.median(x["p50_ms"] for x in runs),
            "p99_ms": statistics.median(x["p99_ms"] for x in runs),
            "mean_batch_rows": statistics.median(x["mean_batch_rows"] or 0.0 for x in runs),
            "cpu_ms_per_request": statistics.median(x["cpu_ms_per_request"] or 0.0 for x in runs),
            "connections_per_process": [x["connections_per_process"] for x in runs],
            "runs": runs,
        }
        rows.append(row)
        splits = " ".join("/".join(map(str, x or [])) for x in row["connections_per_process"])
        print(f"{model:13} {protocol:4} c={c:<3} {name:10} {row['req_per_s']:8.1f} req/s  "
              f"p50 {row['p50_ms']:6.1f} p99 {row['p99_ms']:6.1f} ms  "
              f"batch {row['mean_batch_rows']:5.1f}  "
              f"cpu/req {row['cpu_ms_per_request']:5.2f} ms  "
              f"connections {splits}")  # fmt: skip
    path = write_result("workers_ab", {"machine": machine(),
                                       "args": vars(args) | {"repo": str(args.repo)},
                                       "rows": rows})  # fmt: skip
    plot(rows, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png').name}")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """req/s (top) and p99 (bottom) per case, one bar per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["model"], r["protocol"], r["concurrency"]) for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["model"], r["protocol"], r["concurrency"], r["variant"]): r for r in rows}
    fig, axes = plt.subplots(2, len(cases), figsize=(2.2 * len(cases), 5.5), squeeze=False)
    colors = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377"]
    for col, (model, protocol, c) in enumerate(cases):
        for row, key, label in ((0, "req_per_s", "req/s"), (1, "p99_ms", "p99 (ms)")):
            ax = axes[row][col]
            values = [by.get((model, protocol, c, v), {}).get(key, 0.0) for v in variants]
            ax.bar(range(len(variants)), values, color=colors[: len(variants)])
            ax.set_xticks(range(len(variants)), variants, rotation=60, fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
            if row == 0:
                ax.set_title(f"{model}\n{protocol} c={c}", fontsize=8)
            if col == 0:
                ax.set_ylabel(label)
    fig.suptitle("edgecloud serve: 1 worker vs N (medians of interleaved rounds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
