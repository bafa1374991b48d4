"""Each hybrid mode under each network profile: latency, accuracy, bytes up, share remote.

The server is a real ``edgecloud serve`` process on loopback serving
digits-large; the device runs digits-small and digits-large locally. The link
between them is shaped in process (ShapedLink: delay, jitter, bandwidth, loss,
outages), because this machine's kernel has no netem; the profiles are the
usual ones. Every mode sees the same 360 held-out digits, one request every
10 ms (so the flapping link goes down and up during a run).

    python bench/hybrid_network.py [--repo model-repo] [--images 360]

Writes bench/results/hybrid_network.json and bench/results/hybrid_network.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_bench_args, results_dir, write_result

from edgecloud import InferRequest, LocalBackend, ModelRepository, RemoteBackend
from edgecloud.errors import EdgecloudError
from edgecloud.routing import (
    Cascade,
    CircuitBreaker,
    Fastest,
    ShapedLink,
    calibrate,
    prefer_remote,
)
from edgecloud.server.launch import serve_process
from edgecloud.zoo import build_zoo, datasets

PACE_S = 0.01  # a device sending 100 requests a second: the flapping link goes up and down
PROFILES: dict[str, dict[str, Any]] = {
    "LAN": {"delay_s": 0.001, "jitter_s": 0.0002, "bandwidth_bps": 1e9},
    "4G-like": {"delay_s": 0.050, "jitter_s": 0.015, "bandwidth_bps": 20e6, "loss": 0.005},
    "3G-like": {"delay_s": 0.200, "jitter_s": 0.050, "bandwidth_bps": 1e6, "loss": 0.02},
    "flapping": {"delay_s": 0.050, "jitter_s": 0.015, "bandwidth_bps": 20e6,
                 "outages": [(0.5 + 2 * k, 1.5 + 2 * k) for k in range(200)]},
}  # fmt: skip


def trees(local: LocalBackend, link: ShapedLink, threshold: float) -> dict[str, Any]:
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=0.3)
    cascade = Cascade(
        local,
        prefer_remote(link, local, breaker=CircuitBreaker(reset_after_s=0.3)),
        threshold=threshold,
        small_model="digits-small",
        large_model="digits-large",
    )
    return {
        "only_local (small)": ("digits-small", local),
        "only_remote (large)": ("digits-large", link),
        "prefer_remote": ("digits-large", prefer_remote(link, local, breaker=breaker)),
        "cascade": ("digits", cascade),
        "fastest (large)": ("digits-large", Fastest([link, local], explore=0.1, seed=0)),
    }


def run(model: str, tree: Any, test: Any) -> dict[str, Any]:
    latencies, right, remote, bytes_up, failed = [], 0, 0, 0, 0
    for image, label in zip(test.x, test.y, strict=True):
        time.sleep(PACE_S)
        started = time.perf_counter()
        try:
            response = tree.infer(InferRequest(model, {"pixels": image[None]}))
        except EdgecloudError:
            failed += 1
            latencies.append(time.perf_counter() - started)
            continue
        latencies.append(time.perf_counter() - started)
        right += int(response.outputs["probabilities"].argmax()) == int(label)
        remote += "remote:" in response.trace.served_by
        bytes_up += response.trace.bytes_up
    ms = np.array(latencies) * 1e3
    n = len(test)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "accuracy": right / n,
        "failed": failed,
        "share_remote": remote / n,
        "bytes_up": bytes_up,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repo", default="model-repo", type=Path)
    parser.add_argument("--images", default=360, type=int)
    args = parse_bench_args(parser)
    repo = ModelRepository(args.repo)
    build_zoo(repo, ["digits-small", "digits-large"])
    val, full = datasets.digits("val"), datasets.digits("test")
    test = type(full)(full.x[: args.images], full.y[: args.images])
    local = LocalBackend(repo, intra_op_threads=1)
    probs = [local.infer(InferRequest(m, {"pixels": val.x})).outputs["probabilities"]
             for m in ("digits-small", "digits-large")]  # fmt: skip
    threshold = calibrate(probs[0], probs[1], val.y, target_relative_accuracy=0.995).threshold
    server = serve_process(repo.root)
    results = []
    try:
        cases = [(p, m) for p in PROFILES for m in trees(local, ShapedLink(local), 0.5)]
        for profile, mode in track(cases, description="profiles × modes"):
            remote = RemoteBackend(server.url, timeout=1.0)
            link = ShapedLink(remote, seed=1, **PROFILES[profile])
            model, tree = trees(local, link, threshold)[mode]
            results.append({"profile": profile, "mode": mode, **run(model, tree, test)})
            remote.close()
    finally:
        server.stop()
    report(results, threshold, len(test))


def report(results: list[dict[str, Any]], threshold: float, n: int) -> None:
    title = f"{n} digits, one request each; cascade threshold {threshold:.2f}"
    table = Table("profile", "mode", "p50 ms", "p99 ms", "accuracy", "failed", "share remote",
                  "bytes up", title=title)  # fmt: skip
    for r in results:
        table.add_row(r["profile"], r["mode"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.1f}",
                      f"{r['accuracy']:.1%}", str(r["failed"]), f"{r['share_remote']:.0%}",
                      f"{r['bytes_up']:,}")  # fmt: skip
    Console().print(table)
    write_result(
        "hybrid_network",
        {
            "benchmark": "hybrid_network",
            "network": "in-process ShapedLink (no netem in this kernel) to a real loopback server",
            "profiles": {
                name: {k: v for k, v in spec.items() if k != "outages"}
                for name, spec in PROFILES.items()
            },
            "cascade_threshold": threshold,
            "images": n,
            "cases": results,
            "machine": machine(),
        },
    )
    plot(results)


def plot(results: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = list(PROFILES)
    modes = list(dict.fromkeys(r["mode"] for r in results))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        rows = [
            next(r for r in results if r["profile"] == p and r["mode"] == mode) for p in profiles
        ]
        x = np.arange(len(profiles)) + (i - len(modes) / 2 + 0.5) * width
        a.bar(x, [r["p99_ms"] for r in rows], width, label=mode)
        b.bar(x, [r["accuracy"] for r in rows], width, label=mode)
    a.set_yscale("log")
    a.set_title("p99 latency per request (ms, log)")
    b.set_ylim(0.9, 1.0)
    b.set_title("accuracy (failed requests count as wrong)")
    for ax in (a, b):
        ax.set_xticks(np.arange(len(profiles)), profiles)
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results_dir() / "hybrid_network.png", dpi=110)


if __name__ == "__main__":
    main()
