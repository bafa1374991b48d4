"""Per-stage cost of one ``edgecloud serve`` infer request, measured in-process.

Each stage of the server's request path is timed on its own, on the real
objects the server uses (a ModelHost over the demo zoo's ``digits-small``,
the REST decoder and encoder, the prometheus metrics, the SQLite idempotency
store), in alternating rounds (bench/_common.py ``interleaved``) so machine
drift hits every stage alike. The stages that only exist as differences
(thread hand-off, batcher queue, idempotency) are measured as the difference
of two complete paths through ``ModelHost.infer`` on one event loop.

    python bench/request_path.py [--repo model-repo] [--rounds 15]

Prints the table the README's design section quotes and writes
bench/results/request_path.json (microseconds per request, median of rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine, parse_bench_args, summary, write_result

from edgecloud import ModelRepository
from edgecloud.server.host import INLINE_WINDOW, ModelHost, RunCost, input_elements
from edgecloud.server.http import HttpApp
from edgecloud.server.settings import ServerSettings
from edgecloud.tensors import InferRequest
from edgecloud.wire.rest import decode_request, encode_response
from edgecloud.zoo import build_zoo

MODEL = "digits-small"


class NeverInline(RunCost):
    """A cost that never sends a request inline: the pool and batcher paths."""

    def inline(self, elements: int) -> bool:
        return False


def body() -> bytes:
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    tensor = {"name": "pixels", "shape": [1, 64], "datatype": "FP32"}
    return json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()


async def _deferred_updates(children: tuple[Any, ...], requests: int) -> None:
    """The 7 metric updates of ``requests`` requests on the loop, then their flush."""
    count, latency, started, done, queue, compute, batch = children
    for _ in range(requests):
        count.inc()
        latency.observe(1e-4)
        started.inc()
        done.inc()
        queue.observe(0)
        compute.observe(1e-5)
    batch.observe(requests)
    await asyncio.sleep(0)  # the flush runs at the end of this iteration


async def _together(host: ModelHost, request: InferRequest, n: int) -> None:
    """``n`` concurrent requests: one tick batch (one merged onnxruntime call)."""
    await asyncio.gather(*(host.infer(request) for _ in range(n)))


async def _nothing() -> None:
    """A coroutine that does nothing: run_until_complete's own cost."""


def host_for(repo: ModelRepository, db: Path, **overrides: Any) -> ModelHost:
    settings = ServerSettings(idempotency_db=db, **overrides)
    host = ModelHost(repo, settings)
    host.load_all()
    return host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", default="model-repo", type=Path)
    parser.add_argument("--rounds", default=15, type=int)
    parser.add_argument("--per-round", default=400, type=int)
    args = parse_bench_args(parser)
    repo = ModelRepository(args.repo)
    build_zoo(repo, [MODEL])
    tmp = Path(tempfile.mkdtemp(prefix="request-path-"))
    raw = body()
    loop = asyncio.new_event_loop()
    inline = host_for(repo, tmp / "a.db")
    pooled = host_for(repo, tmp / "b.db", dynamic_batching=False)
    batched = host_for(repo, tmp / "c.db")
    loaded = inline.local.load(MODEL)
    decoded = decode_request(raw, None, MODEL, None)
    request = decoded.request
    response = loop.run_until_complete(inline.infer(request))
    for _ in range(INLINE_WINDOW * 20):  # the inline host decides after its first runs
        loop.run_until_complete(inline.infer(request))
        if inline.cost(loaded).inline(input_elements(request.inputs)):
            break  # (a busy machine can make a pool run look slow: try again)
    assert inline.cost(loaded).inline(input_elements(request.inputs)), (
        "digits-small did not qualify for the inline path"
    )
    for host in (pooled, batched):  # always the thread pool / the batcher
        held = host.local.load(MODEL)
        host._costs[held.label] = (weakref.ref(held.session), NeverInline())
    keys = iter(range(10**9))

    def keyed() -> InferRequest:
        return decode_request(raw, None, MODEL, None, f"k{next(keys)}").request

    app = HttpApp(inline)
    app.settings = inline.settings.model_copy(update={"access_log": True})
    logging.getLogger("edgecloud.access").addHandler(logging.NullHandler())
    logging.getLogger("edgecloud.access").propagate = False
    logging.getLogger("edgecloud.access").setLevel(logging.INFO)
    scope = {"method": "POST", "path": f"/v2/models/{MODEL}/infer", "client": ("127.0.0.1", 1)}
    metrics = inline.metrics
    counter, latency = app._request_metrics(MODEL, 200)
    children = (counter, latency, *inline._metrics_of(MODEL))

    def run(coro: Any) -> Any:
        return loop.run_until_complete(coro)

    stages = {
        "decode (JSON body -> InferRequest)": lambda: decode_request(raw, None, MODEL, None),
        "validation": lambda: loaded.validator.validate(request.inputs),
        "onnxruntime run": lambda: loaded.run(request.inputs, None, 1),
        "encode (InferResponse -> JSON)": lambda: encode_response(response, decoded),
        "metrics, deferred: 16 requests' updates + one flush": lambda: run(
            _deferred_updates(children, 16)
        ),
        "metrics via labels() (7 updates)": lambda: (
            metrics.requests.labels(MODEL, "http", "200").inc(),
            metrics.latency.labels(MODEL, "http").observe(1e-4),
            metrics.computations_started.labels(MODEL).inc(),
            metrics.computations.labels(MODEL).inc(),
            metrics.queue.labels(MODEL).observe(0),
            metrics.compute.labels(MODEL).observe(1e-5),
            metrics.batch_size.labels(MODEL).observe(1),
        ),
        "access log line (when --access-log)": lambda: app._log_access(
            scope, 200, 300, time.perf_counter()
        ),
        "event loop round trip (baseline)": lambda: run(_nothing()),
        "host.infer, inline": lambda: run(inline.infer(request)),
        "host.infer, tick batch of 16 (all 16)": lambda: run(_together(inline, request, 16)),
        "host.infer, thread pool": lambda: run(pooled.infer(request)),
        "host.infer, batcher": lambda: run(batched.infer(request)),
        "host.infer, inline + idempotency key": lambda: run(inline.infer(keyed())),
    }
    samples = interleaved(stages, rounds=args.rounds, per_round=args.per_round)
    results = {name: summary(s) for name, s in samples.items()}
    med = {name: r["median_us"] for name, r in results.items()}
    base = med["event loop round trip (baseline)"]
    derived = {
        "host path, inline (host.infer - loop round trip)": med["host.infer, inline"] - base,
        "host path, tick batch of 16, per request": (
            med["host.infer, tick batch of 16 (all 16)"] - base
        )
        / 16,
        "metrics, deferred, per request": med["metrics, deferred: 16 requests' updates + one flush"]
        / 16,
        "thread hand-off (pool - inline)": med["host.infer, thread pool"]
        - med["host.infer, inline"],
        "batcher queue (batcher - pool)": med["host.infer, batcher"]
        - med["host.infer, thread pool"],
        "idempotency, keyed (incl. decode of the key)": med["host.infer, inline + idempotency key"]
        - med["host.infer, inline"]
        - med["decode (JSON body -> InferRequest)"],
    }
    table = Table("stage", "µs / request (median)", "p10–p90", title=f"{MODEL}, batch 1, JSON")
    for name, r in results.items():
        table.add_row(name, f"{r['median_us']:.1f}", f"{r['p10_us']:.1f}–{r['p90_us']:.1f}")
    for name, value in derived.items():
        table.add_row(name, f"{value:.1f}", "(difference)")
    Console().print(table)
    path = write_result(
        "request_path",
        {
            "benchmark": "request_path",
            "model": MODEL,
            "stages_us": results,
            "derived_us": derived,
            "rounds": args.rounds,
            "per_round": args.per_round,
            "machine": machine(),
        },
    )
    for host in (inline, pooled, batched):
        loop.run_until_complete(host.close())
    loop.close()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
