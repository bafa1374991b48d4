"""Cascade digits-small (device) → digits-large (server): accuracy vs share escalated.

The threshold is calibrated on the validation split (target: 99.5 % of the
remote-only accuracy with the fewest escalations); the operating point is then
measured on the held-out test split through a real Cascade whose large model
is a RemoteBackend talking to a real ``edgecloud serve`` process, next to
remote-only and local-only on the same images.

    python bench/cascade.py [--repo model-repo] [--target 0.995] [--measure max_prob]

Writes bench/results/cascade.json (top-level ``relative_accuracy`` and
``escalation_rate`` at the calibrated point) and bench/results/cascade.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_bench_args, results_dir, write_result

from edgecloud import InferRequest, LocalBackend, ModelRepository, RemoteBackend
from edgecloud.routing import Cascade, calibrate, sweep
from edgecloud.server.launch import serve_process
from edgecloud.zoo import build_zoo, datasets


def probabilities(local: LocalBackend, model: str, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return local.infer(InferRequest(model, {"pixels": x})).outputs["probabilities"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repo", default="model-repo", type=Path)
    parser.add_argument("--target", default=0.995, type=float)
    parser.add_argument("--measure", default="max_prob", choices=["max_prob", "margin", "entropy"])
    args = parse_bench_args(parser)
    repo = ModelRepository(args.repo)
    build_zoo(repo, ["digits-small", "digits-large"])
    val, test = datasets.digits("val"), datasets.digits("test")
    local = LocalBackend(repo)
    val_small, val_large = (
        probabilities(local, m, val.x) for m in ("digits-small", "digits-large")
    )
    point = calibrate(
        val_small, val_large, val.y, measure=args.measure, target_relative_accuracy=args.target
    )
    test_small, test_large = (
        probabilities(local, m, test.x) for m in ("digits-small", "digits-large")
    )
    curve = sweep(test_small, test_large, test.y, measure=args.measure)

    server = serve_process(repo.root)
    try:
        remote = RemoteBackend(server.url)
        cascade = Cascade(
            LocalBackend(repo), remote, threshold=point.threshold, confidence_measure=args.measure,
            small_model="digits-small", large_model="digits-large",
        )  # fmt: skip
        predictions, escalated, bytes_up = [], 0, 0
        for image in test.x:  # one request per image, as a device would send them
            response = cascade.infer(InferRequest("digits", {"pixels": image[None]}))
            predictions.append(int(response.outputs["probabilities"].argmax()))
            escalated += int(response.parameters.get("escalated_rows", 0))
            bytes_up += response.trace.bytes_up
        remote_only = [
            int(remote.infer(InferRequest("digits-large", {"pixels": image[None]}))
                .outputs["probabilities"].argmax())
            for image in test.x
        ]  # fmt: skip
    finally:
        server.stop()
    accuracy = float(np.mean(np.array(predictions) == test.y))
    remote_accuracy = float(np.mean(np.array(remote_only) == test.y))
    local_accuracy = float(np.mean(test_small.argmax(axis=1) == test.y))
    result = {
        "relative_accuracy": accuracy / remote_accuracy,
        "escalation_rate": escalated / len(test),
        "threshold": point.threshold,
        "measure": args.measure,
        "calibrated_on": "digits val split",
        "calibration_point": point.as_dict(),
        "test": {
            "cascade_accuracy": accuracy,
            "remote_only_accuracy": remote_accuracy,
            "local_only_accuracy": local_accuracy,
            "images": len(test),
            "bytes_up_cascade": bytes_up,
            "bytes_up_remote_only": int(test.x.nbytes),
        },
        "target": {"relative_accuracy": ">= 0.995", "escalation_rate": "<= 0.20"},
        "curve": [p.as_dict() for p in curve],
        "peer": "remote-only (digits-large on edgecloud serve)",
        "machine": machine(),
    }
    write_result("cascade", result)
    plot(curve, result)
    title = f"cascade, threshold {point.threshold:.3f} ({args.measure}), calibrated on val"
    table = Table("path", "test accuracy", "share sent to the server", "bytes up", title=title)
    table.add_row("local only (digits-small)", f"{local_accuracy:.2%}", "0 %", "0")
    table.add_row(
        "remote only (digits-large)", f"{remote_accuracy:.2%}", "100 %", f"{test.x.nbytes:,}"
    )
    table.add_row("cascade", f"{accuracy:.2%}", f"{escalated / len(test):.1%}", f"{bytes_up:,}")
    Console().print(table)
    print(f"relative accuracy {result['relative_accuracy']:.4f}, escalation rate "
          f"{result['escalation_rate']:.3f}; wrote {results_dir() / 'cascade.json'}")  # fmt: skip


def plot(curve: list[Any], result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot([p.escalation_rate for p in curve], [p.accuracy for p in curve], label="cascade (test)")
    ax.axhline(result["test"]["remote_only_accuracy"], ls="--", c="gray", label="remote only")
    ax.axhline(result["test"]["local_only_accuracy"], ls=":", c="gray", label="local only")
    ax.scatter([result["escalation_rate"]], [result["test"]["cascade_accuracy"]], c="red", zorder=3,
               label=f"calibrated point (t={result['threshold']:.2f})")  # fmt: skip
    ax.set_xlabel("share of requests escalated to the server")
    ax.set_ylabel("accuracy")
    ax.set_title("digits-small → digits-large cascade")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(results_dir() / "cascade.png", dpi=110)


if __name__ == "__main__":
    main()
