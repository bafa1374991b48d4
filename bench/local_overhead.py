"""What does edgecloud's LocalBackend cost over calling onnxruntime yourself?

Same model file, same session options (threads), same inputs; the two are timed
in interleaved rounds. The edgecloud side includes building the InferRequest,
validating it, and the traced InferResponse — everything a user's call pays.

    python bench/local_overhead.py [--repo model-repo] [--rounds 30]

Prints a table and writes bench/results/local_overhead.json, whose top-level
``ratio`` is the worst edgecloud / onnxruntime time at batch 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.progress import track
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine, parse_bench_args, summary, write_result

from edgecloud import InferRequest, LocalBackend, ModelRepository
from edgecloud.zoo import build_zoo, datasets
from edgecloud.zoo.minilm import tokenize, tokenizer_of

SENTENCES = [
    "edge inference keeps raw data on the device",
    "the remote tier answers what the device cannot",
    "latency depends on the link as much as the model",
    "a cascade escalates only the hard cases",
]


def inputs_for(repo: ModelRepository, model: str, batch: int) -> dict[str, np.ndarray[Any, Any]]:
    if model == "minilm":
        texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
        return tokenize(texts, tokenizer_of(repo.get("minilm")))
    return {"pixels": datasets.digits("test").x[:batch].copy()}


def measure(
    repo: ModelRepository, model: str, batch: int, threads: int, rounds: int
) -> dict[str, Any]:
    local = LocalBackend(repo, intra_op_threads=threads)
    loaded = local.load(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(loaded.entry.model_path), sess_options=options, providers=local.providers
    )
    feed = inputs_for(repo, model, batch)
    np.testing.assert_array_equal(  # same answer before timing anything
        session.run(None, feed)[0],
        local.infer(InferRequest(model, feed)).outputs[loaded.output_names[0]],
    )
    per_round = 2000 if model.startswith("digits") else 20
    if batch > 1:
        per_round = max(5, per_round // 8)
    samples = interleaved(
        {
            "onnxruntime": lambda: session.run(None, feed),
            "edgecloud": lambda: local.infer(InferRequest(model, feed)),
        },
        rounds=rounds,
        per_round=per_round,
    )
    local.close()
    bare, ours = summary(samples["onnxruntime"]), summary(samples["edgecloud"])
    ratios = [e / b for e, b in zip(samples["edgecloud"], samples["onnxruntime"], strict=True)]
    return {
        "model": model,
        "batch": batch,
        "threads": threads,
        "rounds": rounds,
        "calls_per_round": per_round,
        "onnxruntime": bare,
        "edgecloud": ours,
        "ratio": float(np.median(ratios)),
        "overhead_us": ours["median_us"] - bare["median_us"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repo", default="model-repo", type=Path)
    parser.add_argument("--rounds", default=30, type=int)
    parser.add_argument("--threads", default=1, type=int)
    args = parse_bench_args(parser)
    repo = ModelRepository(args.repo)
    build_zoo(repo, ["digits-small", "minilm"])
    cases = [(m, b) for m in ("digits-small", "minilm") for b in (1, 32)]
    results = [
        measure(repo, model, batch, args.threads, args.rounds)
        for model, batch in track(cases, description="timing")
    ]
    table = Table(
        "model",
        "batch",
        "onnxruntime µs",
        "edgecloud µs",
        "overhead µs",
        "ratio",
        title=f"LocalBackend vs bare onnxruntime (threads={args.threads}, "
        f"median of {args.rounds} interleaved rounds)",
    )
    for r in results:
        table.add_row(
            r["model"],
            str(r["batch"]),
            f"{r['onnxruntime']['median_us']:.1f}",
            f"{r['edgecloud']['median_us']:.1f}",
            f"{r['overhead_us']:+.1f}",
            f"{r['ratio']:.3f}×",
        )
    Console().print(table)
    worst = max(r["ratio"] for r in results if r["batch"] == 1)
    path = write_result(
        "local_overhead",
        {
            "benchmark": "local_overhead",
            "peer": "onnxruntime.InferenceSession.run",
            "ratio": worst,
            "ratio_definition": "worst edgecloud/onnxruntime median time ratio at batch 1",
            "target": 1.05,
            "cases": results,
            "machine": machine(),
        },
    )
    print(f"worst batch-1 ratio {worst:.3f}× (target ≤ 1.05×); wrote {path}")


if __name__ == "__main__":
    main()
