"""GPU serving path (torch on CUDA) vs onnxruntime on the CPU cores of the same machine.

Runs only where torch sees a CUDA device; elsewhere it says so and exits 0.
Two levels, same model file set (resnet18-like: ONNX + its TorchScript copy):

1. LocalBackend: ``device="cuda"`` vs ``device="cpu"`` (onnxruntime, all cores),
   batch 1, 8 and 32, interleaved rounds.
2. The server end to end: ``edgecloud serve --device cuda`` vs ``--device cpu``,
   binary tensors, one 224x224 image per request, closed loop at concurrency
   1, 8 and 32 (dynamic batching merges concurrent requests on both).

    python bench/gpu_serving.py [--repo model-repo] [--seconds 5]

Writes bench/results/gpu_serving.json (top-level ``ratio``: GPU / CPU server
throughput at concurrency 8) and bench/results/gpu_serving.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine, parse_bench_args, results_dir, summary, write_result
from loadgen import run_load

from edgecloud import InferRequest, LocalBackend, ModelRepository
from edgecloud.backends.torch_runner import cuda_available
from edgecloud.server.launch import serve_process
from edgecloud.zoo import build_zoo

MODEL = "resnet18-like"


def local_level(repo: ModelRepository, rounds: int) -> list[dict[str, Any]]:
    threads = os.cpu_count() or 1
    cpu = LocalBackend(repo, intra_op_threads=threads, device="cpu")
    gpu = LocalBackend(repo, device="cuda")
    rows = []
    for batch in (1, 8, 32):
        image = (
            np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        )
        request = InferRequest(MODEL, {"image": image})
        np.testing.assert_allclose(  # same answers before timing
            gpu.infer(request).outputs["logits"], cpu.infer(request).outputs["logits"],
            rtol=5e-2, atol=5e-2,
        )  # fmt: skip
        per_round = max(2, 40 // batch)
        samples = interleaved(
            {"cpu": lambda r=request: cpu.infer(r), "cuda": lambda r=request: gpu.infer(r)},
            rounds=rounds,
            per_round=per_round,
        )
        c, g = summary(samples["cpu"]), summary(samples["cuda"])
        rows.append(
            {
                "batch": batch,
                "cpu_onnxruntime_ms": c["median_us"] / 1e3,
                "cuda_torch_ms": g["median_us"] / 1e3,
                "speedup": c["median_us"] / g["median_us"],
                "cpu_threads": threads,
            }
        )
    return rows


def server_level(repo: Path, seconds: float) -> list[dict[str, Any]]:
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    header = json.dumps(
        {
            "inputs": [{"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32",
                        "parameters": {"binary_data_size": image.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()  # fmt: skip
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(header))}  # fmt: skip
    body = header + image.tobytes()
    rows = []
    for device, port in (("cpu", 18500), ("cuda", 18501)):
        threads = "0" if device == "cpu" else "1"  # the CPU at its best for a large model
        extra = ["--device", device, "--threads", threads]
        server = serve_process(repo, http_port=port, extra=extra)
        try:
            for c in (1, 8, 32):
                result = asyncio.run(
                    run_load(port, f"/v2/models/{MODEL}/infer", body, headers,
                             concurrency=c, seconds=seconds)
                ).summary()  # fmt: skip
                rows.append({"device": device, **result})
        finally:
            server.stop(30)
    return rows


def plot(local: list[dict[str, Any]], server: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(local))
    a.bar(x - 0.2, [r["cpu_onnxruntime_ms"] for r in local], 0.4, label="onnxruntime CPU")
    a.bar(x + 0.2, [r["cuda_torch_ms"] for r in local], 0.4, label="torch CUDA")
    a.set_xticks(x, [f"batch {r['batch']}" for r in local])
    a.set_yscale("log")
    a.set_title("LocalBackend latency (ms, log)")
    a.legend()
    levels = sorted({r["concurrency"] for r in server})
    for i, device in enumerate(("cpu", "cuda")):
        rates = [next(r["req_per_s"] for r in server if r["device"] == device
                      and r["concurrency"] == c) for c in levels]  # fmt: skip
        b.bar(
            np.arange(len(levels)) + (i - 0.5) * 0.4, rates, 0.4, label=f"serve --device {device}"
        )
    b.set_xticks(np.arange(len(levels)), [f"c={c}" for c in levels])
    b.set_title("server throughput, 1 image per request (req/s)")
    b.legend()
    fig.suptitle(f"{MODEL}: GPU path vs CPU, same machine")
    fig.tight_layout()
    fig.savefig(results_dir() / "gpu_serving.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repo", default="model-repo", type=Path)
    parser.add_argument("--seconds", default=5.0, type=float)
    parser.add_argument("--rounds", default=10, type=int)
    args = parse_bench_args(parser)
    if not cuda_available():
        print("no CUDA device visible to torch: nothing to measure here (run on a GPU machine)")
        return
    import torch

    repo = ModelRepository(args.repo)
    build_zoo(repo, [MODEL])
    local = local_level(repo, args.rounds)
    server = server_level(args.repo, args.seconds)
    for r in local:
        print(f"batch {r['batch']:>2}: onnxruntime CPU {r['cpu_onnxruntime_ms']:8.2f} ms   "
              f"torch CUDA {r['cuda_torch_ms']:7.2f} ms   {r['speedup']:6.1f}×")  # fmt: skip
    for r in server:
        print(f"serve --device {r['device']:<4} c={r['concurrency']:<2} "
              f"{r['req_per_s']:8.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
              f"p99 {r['p99_ms']:7.2f} ms  {r['statuses']}")  # fmt: skip
    rate = {(r["device"], r["concurrency"]): r["req_per_s"] for r in server}
    path = write_result(
        "gpu_serving",
        {
            "benchmark": "gpu_serving",
            "peer": "edgecloud on onnxruntime CPU, same machine, all cores",
            "model": MODEL,
            "ratio": rate[("cuda", 8)] / rate[("cpu", 8)],
            "ratio_definition": "server req/s with --device cuda / --device cpu at concurrency 8",
            "local": local,
            "server": server,
            "gpu": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "machine": machine(),
        },
    )
    plot(local, server)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
