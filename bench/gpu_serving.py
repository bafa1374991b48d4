"""GPU serving: ``edgecloud serve --device cuda`` with dynamic batching vs raw torch.

Runs only where torch sees a CUDA device; elsewhere it says so and exits 0
(``--dry-run`` runs the same code path on the CPU with tiny durations, to check
the script before a GPU machine is spent on it).

Two models: ``resnet18-like`` (the zoo's, built here: ONNX + TorchScript; one
FP32 3x224x224 image per request, 602 kB of binary tensor) and ``minilm``
(all-MiniLM-L6-v2's architecture -- BERT, 6 layers, hidden 384, 12 heads,
intermediate 1536, vocabulary 30522 -- with **random weights**: a GPU machine
with no network has no weights, so these figures are speed only; one
sequence of ``--tokens`` token ids per request, INT64 binary). Both are
exported to ``model.onnx`` and ``model.pt`` into a fresh model repository with
the zoo's model config (max_batch_size 32 and 64).

1. **Raw torch**: the same TorchScript file through the server's own
   :class:`~edgecloud.backends.torch_runner.TorchRunner` (numpy in, numpy out:
   host-to-device copy, forward, device-to-host copy, as the server must do), at
   batch 1, 8 and the model's ``max_batch_size``; also the forward alone on
   tensors already on the device, synchronised (the GPU's own ceiling).
2. **The server**: ``edgecloud serve --device cuda`` under ``wrk`` (closed
   loop, binary tensors, one item per request) at each ``--concurrency`` for
   each batcher setting in ``--variants``: ``wN`` server processes, ``dUS``
   ``max_queue_delay_us``, ``pA+B`` ``preferred_batch_sizes``, ``rK`` runner
   slots per model (``runners_per_model``), ``t1``/``t0`` TorchRunner's pinned,
   stream-per-thread staging on/off (``EDGECLOUD_TORCH_PINNED``; off when not
   given). The mean rows per runtime call come from the server's
   ``edgecloud_batch_size`` histogram. The server's single-item answer is
   checked against raw torch's before each load.

Figures per model: ``batched_vs_unbatched`` = the best server req/s at
concurrency >= 64 / the best req/s at concurrency 1 (target >= 20) and
``share_of_raw_torch`` = the best server req/s / raw torch items/s at the
model's ``max_batch_size``, numpy in and out (target >= 0.5).

    python bench/gpu_serving.py [--seconds 2] [--concurrency 1,8,32,64,128,256]
        [--variants w1,w4,w8,...] [--models resnet18-like,minilm] [--out DIR]
    python bench/gpu_serving.py --dry-run     # CPU, tiny: checks the script
    python bench/gpu_serving.py --from-json bench/results/gpu_serving.json  # redraw

Writes gpu_serving.json and gpu_serving.png (bench/results/ for a default run,
else bench/results/local/ unless --write; ``--out`` overrides both).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_bench_args, results_dir

MODELS = ("resnet18-like", "minilm")
TARGET_BATCHED = 20.0
TARGET_SHARE = 0.5
HIGH_CONCURRENCY = 64
"""Concurrency from which a level counts as 'high' for ``batched_vs_unbatched``."""
WRK_LUA = """wrk.method = "POST"
wrk.body = io.open("{body}", "rb"):read("*a")
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = "{header_length}"
"""
MINILM_NOTE = (
    "minilm here is all-MiniLM-L6-v2's architecture (BERT: 6 layers, hidden 384, 12 heads, "
    "intermediate 1536, vocabulary 30522, mean pooling + L2 norm) with RANDOM weights, built "
    "on the GPU machine (no network there, and the 87 MB weights cannot travel): speed only"
)


@dataclass(frozen=True)
class Variant:
    """One batcher setting of the server (see the module docstring's ``--variants``)."""

    name: str
    workers: int = 1
    delay_us: int | None = None
    preferred: tuple[int, ...] = ()
    runners: int = 2
    pinned: bool = False

    @classmethod
    def parse(cls, text: str) -> Variant:
        fields: dict[str, Any] = {}
        for part in text.split(":"):
            key, value = part[:1], part[1:]
            if key == "w":
                fields["workers"] = int(value)
            elif key == "d":
                fields["delay_us"] = int(value)
            elif key == "p":
                fields["preferred"] = tuple(int(v) for v in value.split("+"))
            elif key == "r":
                fields["runners"] = int(value)
            elif key == "t":
                fields["pinned"] = value == "1"
            else:
                raise SystemExit(f"--variants: {part!r} is not wN, dUS, pA+B, rK or t0/t1")
        return cls(name=text, **fields)


# ---------------------------------------------------------------- models


def build_models(root: Path, names: list[str], tokens: int, device: str) -> Any:
    """A fresh repository under ``root`` holding the named models (ONNX + model.pt)."""
    from edgecloud import ModelRepository

    repo = ModelRepository(root)
    if "resnet18-like" in names:
        from edgecloud.zoo import build_zoo

        started = time.perf_counter()
        build_zoo(repo, ["resnet18-like"])
        print(f"built resnet18-like in {time.perf_counter() - started:.1f} s", flush=True)
    if "minilm" in names:
        started = time.perf_counter()
        build_random_minilm(repo, tokens, device)
        print(f"built minilm (random weights) in {time.perf_counter() - started:.1f} s", flush=True)
    return repo


def build_random_minilm(repo: Any, tokens: int, device: str) -> None:
    """all-MiniLM-L6-v2's architecture, seeded random weights, as the zoo exports it.

    The TorchScript copy is traced on ``device``: transformers' mask code leaves a
    device-bound constant in the trace (a CPU trace fails on CUDA inputs).
    """
    import torch
    import transformers

    from edgecloud.repository import ModelConfig
    from edgecloud.tensors import TensorSpec
    from edgecloud.zoo.export import export_torchscript
    from edgecloud.zoo.minilm import VOCAB, _pooled_encoder, export_encoder

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        type_vocab_size=2,
        attn_implementation="eager",
    )
    encoder = _pooled_encoder(transformers.BertModel(config).eval())
    # traced and exported with padding in the mask, so the masked path is what is recorded
    ids, mask = _tokens(2, tokens, seed=1)
    mask[1, tokens // 2 :] = 0
    example = (torch.from_numpy(ids), torch.from_numpy(mask))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_encoder(encoder, example, Path(tmp) / "model.onnx")
        on_device = tuple(t.to(device) for t in example)
        script = export_torchscript(encoder.to(device), on_device, Path(tmp) / "model.pt")
        repo.add_version(
            "minilm",
            onnx_path,
            config=ModelConfig(
                name="minilm",
                max_batch_size=64,
                inputs=[
                    TensorSpec(
                        name="input_ids",
                        datatype="INT64",
                        shape=(-1,),
                        min_value=0,
                        max_value=VOCAB - 1,
                    ),
                    TensorSpec(
                        name="attention_mask",
                        datatype="INT64",
                        shape=(-1,),
                        min_value=0,
                        max_value=1,
                    ),
                ],
                outputs=[TensorSpec(name="embedding", datatype="FP32", shape=(384,))],
                description="all-MiniLM-L6-v2 ARCHITECTURE with RANDOM weights (speed only)",
            ),
            extra_files={"model.pt": script},
            metadata={"weights": "random, torch.manual_seed(0): speed only"},
        )


def _tokens(rows: int, tokens: int, seed: int = 0) -> tuple[np.ndarray[Any, Any], ...]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, size=(rows, tokens), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return ids, np.ones((rows, tokens), dtype=np.int64)


def request_inputs(model: str, rows: int, tokens: int) -> dict[str, np.ndarray[Any, Any]]:
    if model == "resnet18-like":
        from edgecloud.zoo.resnet import sample_images

        return {"image": sample_images(rows, seed=rows)}
    ids, mask = _tokens(rows, tokens, seed=rows)
    return {"input_ids": ids, "attention_mask": mask}


def use_batching(repo_root: Path, model: str, variant: Variant) -> None:
    """Write ``variant``'s ``dynamic_batching`` into the model's config.yaml."""
    import yaml

    path = repo_root / model / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data["dynamic_batching"] = (
        None
        if variant.delay_us is None and not variant.preferred
        else {
            "max_queue_delay_us": variant.delay_us or 0,
            "preferred_batch_sizes": list(variant.preferred),
        }
    )
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# ---------------------------------------------------------------- raw torch


def raw_torch(repo: Any, model: str, device: str, seconds: float, tokens: int) -> dict[str, Any]:
    """Items/s of the TorchScript file: numpy in/out through TorchRunner (plain and
    pinned staging, one thread and two), and the forward alone on device tensors."""
    import torch

    from edgecloud.backends.torch_runner import TorchRunner

    entry = repo.get(model)
    config = entry.config
    inputs = [s.name for s in config.inputs]
    outputs = [s.name for s in config.outputs]
    path = entry.path / "model.pt"
    runners = {"plain": TorchRunner(path, inputs, outputs, device=device, pinned=False)}
    pinned = TorchRunner(path, inputs, outputs, device=device, pinned=True)
    notes: dict[str, Any] = {}
    if pinned.pinned:
        check = request_inputs(model, 8, tokens)
        try:
            notes["pinned_max_abs_difference"] = float(
                np.max(np.abs(pinned(outputs, check)[0] - runners["plain"](outputs, check)[0]))
            )
            runners["pinned"] = pinned
        except Exception as exc:  # measured without it, and said
            notes["pinned_failed"] = str(exc)[-1000:]
            print(f"pinned staging failed: {exc}", flush=True)
    limit = config.max_batch_size
    rows_out = []
    for batch in sorted({1, 8, limit}):
        feed = request_inputs(model, batch, tokens)
        row: dict[str, Any] = {"batch": batch}
        for mode, runner in runners.items():
            row[f"{mode}_items_per_s"] = _rate(
                lambda f=feed, r=runner: r(outputs, f), batch, seconds
            )
        on_device = [torch.as_tensor(feed[n], device=device) for n in inputs]
        module = runners["plain"].module

        def forward(args: list[Any] = on_device, module: Any = module) -> None:
            with torch.inference_mode():
                module(*args)
            if device == "cuda":
                torch.cuda.synchronize()

        row["on_device_items_per_s"] = _rate(forward, batch, seconds)
        rows_out.append(row)
        print(
            f"raw torch {model} batch {batch:>2}: "
            + ", ".join(f"{k[:-12]} {v:,.0f}" for k, v in row.items() if k != "batch")
            + " items/s",
            flush=True,
        )
    feed = request_inputs(model, limit, tokens)
    threads = {
        mode: _threaded_rate(lambda r=runner: r(outputs, feed), limit, seconds, threads=2)
        for mode, runner in runners.items()
    }
    print(f"raw torch {model} batch {limit}, 2 threads: {threads} items/s", flush=True)
    at_limit = next(r for r in rows_out if r["batch"] == limit)
    best_mode = max(runners, key=lambda m: at_limit[f"{m}_items_per_s"])
    return {
        "rows": rows_out,
        "two_threads_items_per_s": threads,
        "max_batch_size": limit,
        "items_per_s": at_limit[f"{best_mode}_items_per_s"],
        "items_per_s_definition": f"TorchRunner numpy in/out at batch {limit} "
        f"(max_batch_size), one thread, the faster staging ({best_mode})",
        "on_device_items_per_s": at_limit["on_device_items_per_s"],
        **notes,
    }


def _threaded_rate(fn: Callable[[], object], batch: int, seconds: float, threads: int) -> float:
    """Items/s of ``threads`` threads calling ``fn`` at once (as the server's runner slots)."""
    import threading

    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            fn()
            counts[i] += 1

    started = time.perf_counter()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts) * batch / (time.perf_counter() - started)


def _rate(fn: Callable[[], object], batch: int, seconds: float) -> float:
    for _ in range(5):
        fn()
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        fn()
        calls += 1
    return calls * batch / elapsed


# ---------------------------------------------------------------- server


def binary_body(inputs: dict[str, np.ndarray[Any, Any]]) -> tuple[bytes, int]:
    """An Open Inference Protocol binary request: (body, JSON header length)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": list(a.shape),
                    "datatype": "FP32" if a.dtype == np.float32 else "INT64",
                    "parameters": {"binary_data_size": a.nbytes},
                }
                for n, a in inputs.items()
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + b"".join(a.tobytes() for a in inputs.values()), len(header)


def check_answer(
    url: str, model: str, inputs: dict[str, np.ndarray[Any, Any]], expected: np.ndarray[Any, Any]
) -> float:
    """The server's JSON answer for one item vs raw torch: max |difference|."""
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": list(a.shape),
                    "datatype": "FP32" if a.dtype == np.float32 else "INT64",
                    "data": a.ravel().tolist(),
                }
                for n, a in inputs.items()
            ]
        }
    ).encode()
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    got = np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(expected.shape)
    return float(np.max(np.abs(got - expected)))


def batch_histogram(url: str, model: str) -> tuple[float, float]:
    """(sum, count) of the server's ``edgecloud_batch_size`` for ``model``."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return float("nan"), float("nan")
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("edgecloud_batch_size_") and f'model="{model}"' in line:
            value = float(line.rsplit(" ", 1)[1])
            if line.startswith("edgecloud_batch_size_sum"):
                total += value
            elif line.startswith("edgecloud_batch_size_count"):
                count += value
    return total, count


def wrk_run(wrk: str, url: str, lua: Path, c: int, seconds: float) -> dict[str, Any]:
    threads = min(c, 4)
    out = subprocess.run(
        [
            wrk,
            f"-t{threads}",
            f"-c{c}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(lua),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    text = out.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in ([\d.]+)(ms|s)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:(.*)", text)
    bad = int(non_2xx.group(1)) if non_2xx else 0
    requests = int(total.group(1)) if total else 0
    duration = 1.0
    if total:
        duration = float(total.group(2)) * (1e-3 if total.group(3) == "ms" else 1.0)
    if not rate:
        print(f"wrk said: {text[-500:]} {out.stderr[-500:]}", flush=True)
    return {
        "concurrency": c,
        "req_per_s": (requests - bad) / duration if rate else float("nan"),
        "p50_ms": _wrk_ms(text, "50%"),
        "p99_ms": _wrk_ms(text, "99%"),
        "non_2xx": bad,
        "socket_errors": errors.group(1).strip() if errors else "",
        "wrk_threads": threads,
    }


def _wrk_ms(out: str, pct: str) -> float:
    match = re.search(rf"{re.escape(pct)}\s+([\d.]+)(us|ms|s)\b", out)
    if not match:
        return float("nan")
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]


def serve_variant(
    repo_root: Path,
    variant: Variant,
    device: str,
    args: argparse.Namespace,
    expected: dict[str, tuple[dict[str, np.ndarray[Any, Any]], np.ndarray[Any, Any]]],
    logs: Path,
) -> dict[str, dict[str, Any]]:
    """One server start with ``variant``'s batcher; each model measured at every concurrency."""
    from edgecloud.backends.torch_runner import PINNED_ENV
    from edgecloud.server.launch import serve_process

    for model in expected:
        use_batching(repo_root, model, variant)
    os.environ["EDGECLOUD_SERVER_RUNNERS_PER_MODEL"] = str(variant.runners)
    os.environ[PINNED_ENV] = "1" if variant.pinned else "0"
    tmp = Path(tempfile.mkdtemp(prefix="gpu-serving-"))
    log = tmp / "server.log"
    started = time.perf_counter()
    server = serve_process(
        repo_root,
        extra=["--device", device, "--threads", "1", "--workers", str(variant.workers)],
        log=log,
    )
    start_s = time.perf_counter() - started
    results: dict[str, dict[str, Any]] = {}
    try:
        for model, (one, answer) in expected.items():
            body, header_length = binary_body(request_inputs(model, 1, args.tokens))
            (tmp / "body").write_bytes(body)
            lua = tmp / "post.lua"
            lua.write_text(WRK_LUA.format(body=tmp / "body", header_length=header_length))
            url = f"{server.url}/v2/models/{model}/infer"
            difference = check_answer(server.url, model, one, answer)
            wrk_run(args.wrk, url, lua, max(args.concurrency), args.warmup)  # warm every shape
            rows: list[dict[str, Any]] = []
            for c in args.concurrency:
                before = batch_histogram(server.url, model)
                row = wrk_run(args.wrk, url, lua, c, args.seconds)
                after = batch_histogram(server.url, model)
                calls = after[1] - before[1]
                row["mean_batch_rows"] = (after[0] - before[0]) / calls if calls else float("nan")
                rows.append(row)
                print(
                    f"  {model:<13} {variant.name:<12} c={c:<3} {row['req_per_s']:9.0f} req/s  "
                    f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                    f"batch {row['mean_batch_rows']:5.1f}  non-2xx {row['non_2xx']}",
                    flush=True,
                )
            results[model] = {
                "variant": variant.name,
                "workers": variant.workers,
                "max_queue_delay_us": variant.delay_us or 0,
                "preferred_batch_sizes": list(variant.preferred),
                "runners_per_model": variant.runners,
                "pinned_staging": variant.pinned,
                "ready_s": start_s,
                "max_abs_difference_vs_raw_torch": difference,
                "rows": rows,
            }
    finally:
        server.stop(30)
        with logs.open("a") as out:
            out.write(f"===== {variant.name} (ready in {start_s:.1f} s)\n")
            out.write(log.read_text(errors="replace")[-20000:])
        shutil.rmtree(tmp, ignore_errors=True)
    return results


# ---------------------------------------------------------------- figures


def figures(raw: dict[str, Any], server: list[dict[str, Any]]) -> dict[str, Any]:
    """batched_vs_unbatched and share_of_raw_torch of one model (see the docstring)."""
    unbatched = [
        (r["req_per_s"], v["variant"]) for v in server for r in v["rows"] if r["concurrency"] == 1
    ]
    high = [
        (r["req_per_s"], v["variant"], r["concurrency"])
        for v in server
        for r in v["rows"]
        if r["concurrency"] >= HIGH_CONCURRENCY
    ]
    every = [(r["req_per_s"], v["variant"], r["concurrency"]) for v in server for r in v["rows"]]
    out: dict[str, Any] = {"raw_torch_items_per_s": raw["items_per_s"]}
    if unbatched and high:
        base, base_variant = max(unbatched)
        best, variant, c = max(high)
        out |= {
            "c1_req_per_s": base,
            "c1_variant": base_variant,
            "best_high_req_per_s": best,
            "best_high_variant": variant,
            "best_high_c": c,
            "batched_vs_unbatched": best / base,
        }
    if every:
        best, variant, c = max(every)
        out |= {
            "best_req_per_s": best,
            "best_variant": variant,
            "best_c": c,
            "share_of_raw_torch": best / raw["items_per_s"],
            "share_of_on_device_torch": best / raw["on_device_items_per_s"],
        }
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        data = result["models"][model]
        for v in data["server"]:
            cs = [r["concurrency"] for r in v["rows"]]
            ax.plot(cs, [r["req_per_s"] for r in v["rows"]], marker="o", label=v["variant"])
        raw = data["raw_torch"]
        ax.axhline(
            raw["items_per_s"],
            color="k",
            ls="--",
            label=f"raw torch batch {raw['max_batch_size']} (numpy in/out)",
        )
        ax.axhline(raw["on_device_items_per_s"], color="gray", ls=":", label="raw torch on device")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent single-item requests")
        ax.set_ylabel("req/s")
        f = data["figures"]
        ax.set_title(
            f"{model}: x{f.get('batched_vs_unbatched', float('nan')):.1f} vs c=1, "
            f"{f.get('share_of_raw_torch', float('nan')):.2f} of raw torch"
        )
        ax.legend(fontsize=7)
    fig.suptitle(f"edgecloud serve --device {result['device']} ({result['gpu']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(result: dict[str, Any]) -> str:
    lines = [f"device: {result['gpu']}  torch {result['torch']}"]
    for model, data in result["models"].items():
        raw = data["raw_torch"]
        lines.append(
            f"{model}: raw torch {raw['items_per_s']:,.0f} items/s at batch "
            f"{raw['max_batch_size']} numpy in/out ({raw['on_device_items_per_s']:,.0f} "
            "on device)"
        )
        levels = sorted({r["concurrency"] for v in data["server"] for r in v["rows"]})
        lines.append(f"  {'variant':<14}" + "".join(f"{'c=' + str(c):>9}" for c in levels))
        for v in data["server"]:
            rate = {r["concurrency"]: r["req_per_s"] for r in v["rows"]}
            lines.append(
                f"  {v['variant']:<14}"
                + "".join(f"{rate[c]:9.0f}" if c in rate else f"{'-':>9}" for c in levels)
            )
        f = data["figures"]
        lines.append(
            f"  batched_vs_unbatched {f.get('batched_vs_unbatched', float('nan')):.1f}x "
            f"(target >= {TARGET_BATCHED:g}), share_of_raw_torch "
            f"{f.get('share_of_raw_torch', float('nan')):.2f} (target >= {TARGET_SHARE:g}); "
            f"best {f.get('best_req_per_s', float('nan')):,.0f} req/s "
            f"({f.get('best_variant')}, c={f.get('best_c')})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--repo",
        default="model-repo",
        type=Path,
        help="not read: both models are built fresh in a temporary repository "
        "(minilm with random weights, each with its model.pt)",
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seconds", default=2.0, type=float, help="per concurrency level")
    parser.add_argument("--warmup", default=2.0, type=float, help="seconds of load per server")
    parser.add_argument("--raw-seconds", default=0.7, type=float, help="per raw torch case")
    parser.add_argument("--concurrency", default="1,8,32,64,128,256")
    parser.add_argument("--variants", default="w1,w4,w8,w16,w4:t1,w8:t1,w16:t1,w8:t1:d1000")
    parser.add_argument("--tokens", default=32, type=int, help="minilm sequence length")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, tiny durations: check the script where there is no GPU",
    )
    parser.add_argument("--out", default=None, type=Path, help="directory for JSON/PNG/logs")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    parser.add_argument(
        "--from-json",
        default=None,
        type=Path,
        help="re-draw the PNG and table of a finished run's JSON",
    )
    args = parse_bench_args(parser)
    if args.from_json:
        done = json.loads(args.from_json.read_text())
        target = args.out or args.from_json.parent
        target.mkdir(parents=True, exist_ok=True)
        plot(done, target / args.from_json.with_suffix(".png").name)
        print(table(done))
        return
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    models = [m for m in args.models.split(",") if m]
    variants = [Variant.parse(v) for v in args.variants.split(",") if v]
    from edgecloud.backends.torch_runner import cuda_available

    device = "cuda" if cuda_available() else "cpu"
    if device == "cpu" and not args.dry_run:
        print("no CUDA device visible to torch: nothing to measure here (run on a GPU machine)")
        return
    if shutil.which(args.wrk) is None:
        raise SystemExit(
            f"the load generator wrk is needed ({args.wrk} not found): "
            "apt-get install wrk, or pass --wrk PATH"
        )
    if args.dry_run:
        device = "cpu"
        args.seconds, args.warmup, args.raw_seconds = 1.0, 1.0, 0.2
        args.concurrency = [c for c in args.concurrency if c <= 8] or [1]
    import torch

    out = args.out or results_dir()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "gpu_serving_servers.log"
    logs.write_text("")
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (dry run on the CPU)"
    result: dict[str, Any] = {
        "benchmark": "gpu_serving",
        "device": device,
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "machine": machine(),
        "peer": "raw torch batched throughput (the same model.pt, same GPU)",
        "targets": {"batched_vs_unbatched": TARGET_BATCHED, "share_of_raw_torch": TARGET_SHARE},
        "definitions": {
            "batched_vs_unbatched": f"best server req/s at concurrency >= {HIGH_CONCURRENCY} / "
            "best server req/s at concurrency 1 (any variant), single-item requests",
            "share_of_raw_torch": "best server req/s / raw torch items/s through TorchRunner "
            "(numpy in, numpy out) at the model's max_batch_size",
        },
        "load": f"wrk (closed loop, up to 4 threads), {args.seconds:g} s per level after "
        f"{args.warmup:g} s of warm-up per server; binary tensors in and out",
        "minilm_note": MINILM_NOTE,
        "minilm_tokens": args.tokens,
        "models": {},
    }
    name = "gpu_serving_dry_run" if args.dry_run else "gpu_serving"
    with tempfile.TemporaryDirectory(prefix="gpu-serving-repo-") as tmp:
        root = Path(tmp)
        repo = build_models(root, models, args.tokens, device)
        expected = {}
        from edgecloud.backends.torch_runner import TorchRunner

        for model in models:
            raw = raw_torch(repo, model, device, args.raw_seconds, args.tokens)
            one = request_inputs(model, 1, args.tokens)
            entry = repo.get(model)
            outputs = [s.name for s in entry.config.outputs]
            runner = TorchRunner(entry.path / "model.pt", list(one), outputs, device=device)
            expected[model] = (one, runner(outputs, one)[0])
            result["models"][model] = {"raw_torch": raw, "server": []}
            del runner
        for variant in variants:
            try:
                measured = serve_variant(root, variant, device, args, expected, logs)
            except Exception as exc:  # one broken setting must not lose the others
                print(f"  {variant.name} failed: {exc}", flush=True)
                result.setdefault("failed", {})[variant.name] = str(exc)[-2000:]
                measured = {}
            for model, data in result["models"].items():
                if model in measured:
                    data["server"].append(measured[model])
                data["figures"] = figures(data["raw_torch"], data["server"])
            (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    result = {
        "batched_vs_unbatched": {
            m: d["figures"].get("batched_vs_unbatched") for m, d in result["models"].items()
        },
        "share_of_raw_torch": {
            m: d["figures"].get("share_of_raw_torch") for m, d in result["models"].items()
        },
        **result,
    }
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / f"{name}.png")
    print(table(result))
    print(f"wrote {out / (name + '.json')} and .png")


if __name__ == "__main__":
    main()
