"""Split computing end to end: device-only, server-only and the planner, over a shaped link.

The server is a real ``edgecloud serve`` process in its own network namespace,
serving the models and their tails (``<model>.tail.<cut>``) with all cores. The
link is a veth pair whose bandwidth is shaped by the kernel (``tc tbf`` both
ways; netem is not compiled into this kernel, so the RTT is added in process
with ShapedLink's delay). The device runs in this process with one onnxruntime
thread, and every device computation is stretched ``--device-slowdown``
times (16 by default: resnet18-like takes ~0.55 s, a low-end phone CPU or a
Raspberry Pi class board), so the device is ~35× slower than the server, as
a phone is next to a GPU server; the measured ratio is recorded.

At every (RTT, bandwidth) point the planner starts from a ping and one probe
transfer, then answers ``--requests`` requests, learning the link from its own
transfers. Device-only and server-only answer the same requests, interleaved;
each path's latency is the 10 %-trimmed mean of its samples.

    python bench/split.py [--repo model-repo] [--device-slowdown 16]

Writes bench/results/split.json (top level: max_speedup, worst_ratio) and
bench/results/split.png.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.netns
from _common import machine, parse_bench_args, results_dir, write_result

from edgecloud import InferRequest, InferResponse, LocalBackend, ModelRepository, RemoteBackend
from edgecloud.backends.base import Backend
from edgecloud.routing import ShapedLink
from edgecloud.server.launch import free_port, serve_process
from edgecloud.split import RemoteTailTimer, SplitBackend, SplitProfile
from edgecloud.split.profile import profile_split
from edgecloud.split.workflow import sample_inputs, write_splits
from edgecloud.zoo import build_zoo
from tests.netns import NetNamespace, netns_unavailable

MODELS = ("resnet18-like", "minilm")


class SlowDevice(Backend):
    """The device: one onnxruntime thread, each computation stretched ``factor`` times.

    After every call the device sleeps ``factor - 1`` times what the call took,
    so it answers as a CPU ``factor`` times slower would — deterministically,
    without throttling the client's own networking.
    """

    def __init__(self, inner: LocalBackend, factor: float) -> None:
        self.inner, self.factor = inner, factor
        self.name = f"device(×{factor:g} slower)"

    def infer(self, request: InferRequest) -> InferResponse:
        started = time.perf_counter()
        response = self.inner.infer(request)
        time.sleep((time.perf_counter() - started) * (self.factor - 1))
        return response

    def close(self) -> None:
        self.inner.close()


def shape(ns: NetNamespace, mbps: float | None) -> None:
    """Token-bucket rate limit on both ends of the veth pair (None: remove it)."""
    for prefix, dev in (([], ns.host_if), (["ip", "netns", "exec", ns.name], ns.ns_if)):
        if mbps is None:
            subprocess.run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"],
                           capture_output=True, check=False)  # fmt: skip
            continue
        rate = mbps * 1e6 / 8  # bytes per second
        burst = max(16_000, int(rate / 250))
        limit = max(64_000, int(rate * 0.5))
        subprocess.run(
            [*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
             "rate", f"{mbps}mbit", "burst", str(burst), "limit", str(limit)],
            check=True, capture_output=True,
        )  # fmt: skip


def trimmed_mean(samples: list[float], cut: float = 0.1) -> float:
    """Mean without the lowest and highest 10 %.

    Latency on this rig is bimodal (a share of round trips take ~6 ms more),
    and a median jumps between the modes: two identical server paths differed
    by 6 % in medians. The trimmed mean is stable and still drops outliers.
    """
    ordered = sorted(samples)
    k = int(len(ordered) * cut)
    return statistics.fmean(ordered[k : len(ordered) - k])


def timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def measure_point(
    model: str, sample: dict[str, Any], profile: SplitProfile, local: Backend, url: str,
    rtt_s: float, requests: int,
) -> dict[str, Any]:  # fmt: skip
    request = InferRequest(model, sample)
    remote = RemoteBackend(url, timeout=120.0)
    link = ShapedLink(remote, delay_s=rtt_s)
    split = SplitBackend(local, link, profile, explore=0.0)
    split.probe(request)  # a ping and one whole transfer: the planner's first link estimate
    fastest_s = split.planner.rank(split.tracker.link())[0][0]
    # Cheap points get more requests (noise between two identical server paths is ~1-2 %);
    # the device path is steady, so it is sampled in at most 10 of the rounds.
    requests = min(max(requests, round(4.0 / max(fastest_s, 1e-3))), 60)
    device_every = max(1, requests // 10)
    times: dict[str, list[float]] = {"device": [], "server": [], "planner": []}
    chosen: Counter[str] = Counter()
    for i in range(requests):
        if i % device_every == 0:  # rotate over the device rounds themselves
            order, turn = ["device", "server", "planner"], i // device_every
        else:
            order, turn = ["server", "planner"], i
        for name in order[turn % len(order) :] + order[: turn % len(order)]:
            if name == "device":
                seconds, _ = timed(lambda: local.infer(request))
            elif name == "server":
                seconds, _ = timed(lambda: link.infer(request))
            else:
                seconds, response = timed(lambda: split.infer(request))
                chosen[response.trace.served_by.removeprefix("split:")] += 1
            times[name].append(seconds)
    estimate = split.tracker.link()
    remote.close()
    medians = {k: trimmed_mean(v) * 1e3 for k, v in times.items()}
    best_pure = min(medians["device"], medians["server"])
    server = times["server"]  # the rig's own noise: one path against itself
    noise = trimmed_mean(server[0::2]) / trimmed_mean(server[1::2]) - 1
    return {
        "device_ms": medians["device"],
        "server_ms": medians["server"],
        "planner_ms": medians["planner"],
        "planner_choice": chosen.most_common(1)[0][0],
        "choices": dict(chosen),
        "link_estimate": {
            "rtt_ms": estimate.rtt_s * 1e3,
            "bandwidth_mbps": estimate.bandwidth_bps / 1e6,
        },
        "requests": requests,
        "server_halves_differ": noise,
        "speedup": best_pure / medians["planner"],
        "ratio": medians["planner"] / best_pure,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--repo", default="model-repo", type=Path)
    parser.add_argument("--device-slowdown", default=16.0, type=float)
    parser.add_argument("--bandwidths", default="1,2,5,10,20,50,100,200")
    parser.add_argument("--rtts", default="10,50", help="milliseconds")
    parser.add_argument("--requests", default=5, type=int, help="per point, at least")
    parser.add_argument("--codecs", default="fp32,int8")
    args = parse_bench_args(parser)
    reason = netns_unavailable()
    if reason:
        raise SystemExit(f"bench/split.py needs a network namespace to shape: {reason}")
    repo = ModelRepository(args.repo)
    build_zoo(repo, list(MODELS))
    bandwidths = [float(b) for b in args.bandwidths.split(",")]
    rtts = [float(r) / 1e3 for r in args.rtts.split(",")]
    codecs = args.codecs.split(",")
    samples, pairs = {}, {}
    for model in MODELS:
        parent = repo.get(model)
        samples[model] = sample_inputs(parent)
        pairs[model] = write_splits(repo, parent, codecs, samples[model])[0]
    results: list[dict[str, Any]] = []
    profiles: dict[str, dict[str, Any]] = {}
    with NetNamespace() as ns:
        port = free_port()
        log = Path(tempfile.gettempdir()) / "edgecloud-bench-split-server.log"
        server = serve_process(repo.root, host=ns.ns_ip, http_port=port, wrap=ns.command,
                               extra=["--threads", "0"], log=log)  # fmt: skip
        url = f"http://{ns.ns_ip}:{port}"
        try:
            device = f"1 onnxruntime thread, {args.device_slowdown:g}× slower than this CPU"
            with Progress() as progress:
                local = SlowDevice(LocalBackend(repo, intra_op_threads=1), args.device_slowdown)
                for model in MODELS:
                    parent = repo.get(model)
                    with RemoteBackend(url, timeout=120.0) as remote:
                        profile = profile_split(
                            parent, pairs[model], samples[model], RemoteTailTimer(remote),
                            repository=repo, device=local, progress=progress,
                        )  # fmt: skip
                    profile.save(results_dir() / f"split-profile-{model}.json")
                    by_key = {c.key: c for c in profile.candidates}
                    profiles[model] = {
                        "device_over_server": by_key["all-local"].head_s
                        / max(by_key["all-remote"].tail_s, 1e-9),
                        "candidates": [c.key for c in profile.candidates],
                    }
                    points = [(r, b) for r in rtts for b in bandwidths]
                    task = progress.add_task(f"{model}: sweep", total=len(points))
                    for rtt_s, mbps in points:
                        shape(ns, mbps)
                        point = measure_point(model, samples[model], profile, local, url,
                                              rtt_s, args.requests)  # fmt: skip
                        results.append({"model": model, "rtt_ms": rtt_s * 1e3,
                                        "bandwidth_mbps": mbps, **point})  # fmt: skip
                        progress.advance(task)
                    shape(ns, None)
                local.close()
        finally:
            server.stop()
    report(results, profiles, device, args)


def report(results: list[dict[str, Any]], profiles: dict[str, Any], device: str,
           args: argparse.Namespace) -> None:  # fmt: skip
    table = Table("model", "RTT ms", "Mbit/s", "device ms", "server ms", "planner ms",
                  "planner's split", "vs best pure",
                  title=f"split computing: device {device}, server all cores")  # fmt: skip
    for r in results:
        table.add_row(r["model"], f"{r['rtt_ms']:g}", f"{r['bandwidth_mbps']:g}",
                      f"{r['device_ms']:.1f}", f"{r['server_ms']:.1f}", f"{r['planner_ms']:.1f}",
                      r["planner_choice"], f"{r['speedup']:.2f}×")  # fmt: skip
    Console().print(table)
    best = max(results, key=lambda r: r["speedup"])
    worst = max(results, key=lambda r: r["ratio"])
    noise = max(abs(r["server_halves_differ"]) for r in results)
    print(f"max speedup {best['speedup']:.2f}× ({best['model']}, {best['bandwidth_mbps']:g} Mbit/s,"
          f" RTT {best['rtt_ms']:g} ms); worst ratio {worst['ratio']:.3f}; rig noise (server "
          f"path against itself) up to {noise:.1%}")  # fmt: skip
    write_result(
        "split",
        {
            "benchmark": "split",
            "max_speedup": best["speedup"],
            "worst_ratio": worst["ratio"],
            "statistic": "trimmed mean (10 % each side) of each path's latencies per point",
            "noise_floor": noise,
            "targets": {"worst_ratio_at_most": 1.05, "max_speedup_at_least": 2.0},
            "device": device,
            "device_slowdown": args.device_slowdown,
            "server": "edgecloud serve, all cores (onnxruntime threads 0), in a network namespace",
            "network": "veth pair shaped with tc tbf both ways (no netem in this kernel); "
            "RTT added in process (ShapedLink delay)",
            "requests_per_point": f"at least {args.requests}, up to 60 where requests are fast "
            "(device-only: at most 10)",
            "profiles": profiles,
            "cases": results,
            "machine": machine(),
        },
    )
    plot(results)


def plot(results: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["rtt_ms"]) for r in results})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (model, rtt) in zip(axes[0], panels, strict=True):
        rows = [r for r in results if r["model"] == model and r["rtt_ms"] == rtt]
        x = [r["bandwidth_mbps"] for r in rows]
        for key, label, style in (("device_ms", "device only", "-"),
                                  ("server_ms", "server only", "-"),
                                  ("planner_ms", "planner", "o-")):  # fmt: skip
            ax.plot(
                x, [r[key] for r in rows], style, label=label, lw=2 if key == "planner_ms" else 1
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("bandwidth (Mbit/s)")
        ax.set_title(f"{model}, RTT {rtt:g} ms", fontsize=10)
    axes[0][0].set_ylabel("latency, trimmed mean (ms)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results_dir() / "split.png", dpi=110)


if __name__ == "__main__":
    main()
