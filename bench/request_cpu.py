"""CPU per request of the server's event loop, edgecloud vs the bare stack, in process.

Each case runs in a fresh process: an HTTP app on uvicorn with the protocol,
loop and collector settings ``edgecloud serve`` uses, on one loopback socket,
driven by ``wrk -c64`` (digits-small, batch 1, JSON, the body bench/server.py
sends); the process's event-loop thread CPU time (``time.thread_time``) is
divided by the requests answered. CPU time, unlike req/s, barely moves when
other jobs share the machine. Cases:

* ``bare``: bench/ceiling_app.py (read the body, answer 200 bytes of JSON);
* ``edgecloud``: ``HttpApp`` over ``ModelHost`` on the protocol ``serve`` uses
  (the infer fast lane, ``server/protocol.py``), the collector set up as
  ``serve`` sets it (``tune_gc``);
* ``edgecloud, ASGI path``: the same with the fast lane off (every request an
  ASGI cycle, as other routes are);
* ``edgecloud, default gc``: the same with CPython's collector thresholds;
* ``lane: fixed answer``, ``lane: decode``, ``lane: decode + host``: the
  fast lane answering a fixed 200-byte body, after nothing, after the REST
  decode, and after the decode and the host's run (tick batch included):
  each stage's cost inside the running server, where caches are cold and
  the loop schedules everything (a stage timed in a loop of its own costs
  a fraction of it). Benchmark-only stand-ins for ``HttpApp.infer_direct``.

Rounds alternate the cases (bench/_common.py's rule: drift hits all alike).

    python bench/request_cpu.py [--repo model-repo] [--rounds 3] [--seconds 4]

Prints a table, writes bench/results/request_cpu.json (top-level
``cpu_ratio``: edgecloud / bare CPU per request) and request_cpu.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CASES = [
    "bare", "edgecloud", "edgecloud, ASGI path", "edgecloud, default gc",
    "lane: fixed answer", "lane: decode", "lane: decode + host",
]  # fmt: skip
STAGES = {"lane: fixed answer": 0, "lane: decode": 1, "lane: decode + host": 2}


def _stage(upto: int) -> Any:
    """A stand-in for ``HttpApp.infer_direct`` that runs the request path up to stage
    ``upto`` (0 nothing, 1 the REST decode, 2 the decode and the host's run) and
    answers a fixed body, as the ceiling app does."""
    from edgecloud.server.http import JSON
    from edgecloud.wire.rest import decode_request

    sys.path.insert(0, str(HERE))
    from ceiling_app import BODY

    def infer_direct(
        app: Any, cycle: Any, model: str, header_length: int | None, body: bytes
    ) -> None:
        if upto == 0:
            cycle.reply(200, BODY, JSON)
            return
        decoded = decode_request(body, header_length, model, None, None)
        if upto == 1:
            cycle.reply(200, BODY, JSON)
            return
        waiter = _Fixed(cycle)  # as the lane's own waiter, answered by the tick batch
        outcome = app._start(decoded, waiter)
        if isinstance(outcome, asyncio.Future):
            outcome.add_done_callback(lambda _: cycle.reply(200, BODY, JSON))
        elif outcome is not waiter:
            cycle.reply(200, BODY, JSON)

    class _Fixed:
        def __init__(self, cycle: Any) -> None:
            self.cycle = cycle

        def done(self) -> bool:
            return False

        def set_result(self, _: Any) -> None:
            self.cycle.reply(200, BODY, JSON)

        def set_exception(self, _: BaseException) -> None:
            self.cycle.reply(500, BODY, JSON)

    return infer_direct


def _serve_one(case: str, repo: str, seconds: float, body_file: str) -> dict[str, float]:
    """In the child process: serve ``case`` on loopback, drive it with wrk, measure."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import uvicorn
    import uvloop

    from edgecloud import ModelRepository
    from edgecloud.server.app import http_protocol, tune_gc
    from edgecloud.server.host import ModelHost
    from edgecloud.server.http import HttpApp
    from edgecloud.server.settings import ServerSettings

    app: Any
    if case in STAGES:
        HttpApp.infer_direct = _stage(STAGES[case])  # type: ignore[method-assign]
    if case == "bare":
        sys.path.insert(0, str(HERE))
        from ceiling_app import app
    else:
        state = tempfile.mkdtemp(prefix="request-cpu-")
        settings = ServerSettings(
            grpc_port=None, intra_op_threads=1, idempotency_db=Path(state) / "idem.db"
        )
        host = ModelHost(ModelRepository(repo), settings)
        host.load_all()
        app = HttpApp(host)
    if case != "edgecloud, default gc":
        tune_gc()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    port = sock.getsockname()[1]
    fast = case not in ("bare", "edgecloud, ASGI path")
    config = uvicorn.Config(
        app, http=http_protocol(app if fast else None), lifespan="on", access_log=False,
        log_level="warning", proxy_headers=False, server_header=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    lua = Path(tempfile.mkdtemp()) / "post.lua"
    lua.write_text(
        f'wrk.method = "POST"\nwrk.body = io.open("{body_file}", "rb"):read("*a")\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    url = f"http://127.0.0.1:{port}/v2/models/digits-small/infer"

    async def drive(duration: float) -> str:
        process = await asyncio.create_subprocess_exec(
            "wrk", "-t1", "-c64", f"-d{max(1, round(duration))}s", "-s", str(lua), url,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        out, _ = await process.communicate()
        return out.decode()

    async def main() -> dict[str, float]:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.02)
        await drive(1.0)  # warm-up: the inline decision, caches
        before = server.server_state.total_requests
        cpu = time.thread_time()
        out = await drive(seconds)
        cpu = time.thread_time() - cpu
        answered = server.server_state.total_requests - before
        server.should_exit = True
        await task
        rate = float(out.split("Requests/sec:")[1].split()[0])
        return {"cpu_us_per_request": cpu * 1e6 / max(answered, 1), "req_per_s": rate}

    return uvloop.run(main())


def main() -> None:
    sys.path.insert(0, str(HERE))
    from _common import machine, parse_bench_args, write_result

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", default="model-repo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--body", help=argparse.SUPPRESS)
    if "--child" in sys.argv:  # one case, in its own process
        args = parser.parse_args()
        print(json.dumps(_serve_one(args.child, args.repo, args.seconds, args.body)))
        return
    args = parse_bench_args(parser)
    if shutil.which("wrk") is None:
        sys.exit("bench/request_cpu.py needs wrk (apt-get install wrk)")
    import numpy as np
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from edgecloud import ModelRepository
    from edgecloud.zoo import build_zoo

    build_zoo(ModelRepository(args.repo), ["digits-small"])
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    body = Path(tempfile.mkdtemp()) / "body.json"
    body.write_text(json.dumps({"inputs": [
        {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}
    ]}))  # fmt: skip
    samples: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    with Progress() as progress:
        task = progress.add_task("rounds", total=args.rounds * len(CASES))
        for round_ in range(args.rounds):
            order = CASES[round_ % len(CASES) :] + CASES[: round_ % len(CASES)]
            for case in order:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", case, "--repo", args.repo,
                     "--seconds", str(args.seconds), "--body", str(body)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                samples[case].append(json.loads(out.stdout.strip().splitlines()[-1]))
                progress.advance(task)
    rows = {
        case: {
            "cpu_us_per_request": statistics.median(s["cpu_us_per_request"] for s in runs),
            "req_per_s": statistics.median(s["req_per_s"] for s in runs),
            "runs": runs,
        }
        for case, runs in samples.items()
    }
    table = Table("case", "event-loop CPU µs / request (median)", "req/s (median)",
                  title="digits-small, HTTP JSON, wrk -c64, one process")  # fmt: skip
    for case, row in rows.items():
        table.add_row(case, f"{row['cpu_us_per_request']:.1f}", f"{row['req_per_s']:,.0f}")
    Console().print(table)
    ratio = rows["edgecloud"]["cpu_us_per_request"] / rows["bare"]["cpu_us_per_request"]
    lane_gain = (
        rows["edgecloud, ASGI path"]["cpu_us_per_request"] / rows["edgecloud"]["cpu_us_per_request"]
    )
    gc_gain = (
        rows["edgecloud, default gc"]["cpu_us_per_request"]
        / rows["edgecloud"]["cpu_us_per_request"]
    )
    print(
        f"cpu_ratio (edgecloud / bare): {ratio:.2f}; ASGI path / fast lane: {lane_gain:.2f}; "
        f"default gc / tuned: {gc_gain:.2f}"
    )
    stages = {
        "lane and protocol (fixed answer)": rows["lane: fixed answer"]["cpu_us_per_request"],
        "REST decode": rows["lane: decode"]["cpu_us_per_request"]
        - rows["lane: fixed answer"]["cpu_us_per_request"],
        "host (validation, tick batch, onnxruntime)": rows["lane: decode + host"][
            "cpu_us_per_request"
        ]
        - rows["lane: decode"]["cpu_us_per_request"],
        "encode, count and answer": rows["edgecloud"]["cpu_us_per_request"]
        - rows["lane: decode + host"]["cpu_us_per_request"],
    }
    print("in the server, µs / request: " + "; ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    path = write_result(
        "request_cpu",
        {
            "benchmark": "request_cpu",
            "peer": "the bare uvicorn app (bench/ceiling_app.py) on the same protocol and loop",
            "cpu_ratio": ratio,
            "asgi_path_over_fast_lane": lane_gain,
            "default_gc_over_tuned": gc_gain,
            "stages_us_per_request": stages,
            "definition": "event-loop thread CPU time / requests answered, in process, wrk -c64",
            "seconds_per_case": args.seconds,
            "rounds": args.rounds,
            "cases": rows,
            "machine": machine(),
        },
    )
    _plot(rows, path.with_suffix(".png"))
    print(f"wrote {path}")


def _plot(rows: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(rows)
    ax.barh(names, [rows[n]["cpu_us_per_request"] for n in names], color="#4477aa")
    ax.set_xlabel("event-loop CPU per request (µs), lower is better")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
