"""The hybrid part of ``edgecloud demo``: a cascade against a real server, through an outage.

Starts ``edgecloud serve`` on loopback, routes digits through
``Cascade(local digits-small → prefer_remote(server digits-large, local digits-large))``
with the threshold calibrated on the validation split, cuts the link in the
middle third of the run, and prints where requests went, why, how fast and
how accurately. Stops the server it started.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .backends.local import LocalBackend
from .backends.remote import RemoteBackend
from .repository import ModelRepository
from .routing.calibrate import calibrate
from .routing.cascade import Cascade
from .routing.fallback import prefer_remote
from .routing.link import ShapedLink
from .routing.resilience import CircuitBreaker
from .server.launch import serve_process
from .tensors import InferRequest, InferResponse

__all__ = ["run_hybrid_demo"]

PHASES = ("link up", "link DOWN", "link back")
PACE_S = 0.005  # one image every 5 ms, like a 200 fps sensor


def _tier(response: InferResponse) -> str:
    served = response.trace.served_by
    reasons = " ".join(s.reason for s in response.trace.spans if s.kind == "decision")
    if "remote:" in served:
        return "server"
    if "fallback:" in reasons:
        return "fallback"
    return "device"


def run_hybrid_demo(repo: ModelRepository, console: Console) -> None:
    from .zoo import datasets

    console.rule("[bold]Hybrid: cascade to a real server, with an outage in the middle")
    val, test = datasets.digits("val"), datasets.digits("test")
    local = LocalBackend(repo, intra_op_threads=1)
    probs = [
        local.infer(InferRequest(m, {"pixels": val.x})).outputs["probabilities"]
        for m in ("digits-small", "digits-large")
    ]
    point = calibrate(probs[0], probs[1], val.y, target_relative_accuracy=0.995)
    server = serve_process(repo.root)
    try:
        link = ShapedLink(RemoteBackend(server.url, timeout=1), delay_s=0.002)
        large = prefer_remote(
            link, local, breaker=CircuitBreaker(failure_threshold=2, reset_after_s=PACE_S * 20)
        )
        cascade = Cascade(
            local, large, threshold=point.threshold,
            small_model="digits-small", large_model="digits-large",
        )  # fmt: skip
        rows = _run(cascade, link, test)
    finally:
        server.stop()
    _report(console, rows, point.threshold)


def _run(cascade: Cascade, link: ShapedLink, test: Any) -> list[dict[str, Any]]:
    rows = []
    third = len(test) // 3
    for i, (image, label) in enumerate(zip(test.x, test.y, strict=True)):
        phase = PHASES[min(i // third, 2)]
        link.outages = [(0.0, float("inf"))] if phase == "link DOWN" else []
        time.sleep(PACE_S)
        started = time.perf_counter()
        response = cascade.infer(InferRequest("digits", {"pixels": image[None]}))
        rows.append(
            {
                "phase": phase,
                "tier": _tier(response),
                "ms": (time.perf_counter() - started) * 1e3,
                "right": int(response.outputs["probabilities"].argmax()) == int(label),
                "bytes_up": response.trace.bytes_up,
                "reasons": [s.reason for s in response.trace.spans if s.kind == "decision"],
            }
        )
    return rows


def _report(console: Console, rows: list[dict[str, Any]], threshold: float) -> None:
    tiers = ["device", "server", "fallback"]
    table = Table(
        "phase", "requests", "on device", "to server", "server down: device", "p50 ms",
        "p99 ms", "accuracy", "bytes up",
        title=f"{len(rows)} held-out digits, one request each; cascade threshold {threshold:.2f} "
        "(calibrated on the validation split)",
    )  # fmt: skip
    for phase in PHASES:
        part = [r for r in rows if r["phase"] == phase]
        counts = Counter(r["tier"] for r in part)
        ms = np.array([r["ms"] for r in part])
        table.add_row(
            phase, str(len(part)), *[str(counts.get(t, 0)) for t in tiers],
            f"{np.percentile(ms, 50):.2f}", f"{np.percentile(ms, 99):.2f}",
            f"{np.mean([r['right'] for r in part]):.1%}", f"{sum(r['bytes_up'] for r in part):,}",
        )  # fmt: skip
    console.print(table)
    for phase in PHASES:
        example = next((r for r in rows if r["phase"] == phase and r["tier"] != "device"), None)
        if example:
            console.print(
                f"[bold]{phase}[/] why: " + " → ".join(example["reasons"]), highlight=False
            )
    down = [r for r in rows if r["phase"] == "link DOWN"]
    back = [r for r in rows if r["phase"] == "link back"]
    console.print(
        f"While the link was down all {len(down)} requests were answered "
        f"({sum(r['tier'] == 'fallback' for r in down)} escalations fell back to the device's "
        f"copy of the large model); after it came back, "
        f"{sum(r['tier'] == 'server' for r in back)} escalations went to the server again."
    )
