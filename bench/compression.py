"""Every compression method on digits-large, digits-small and minilm: size, latency, fidelity.

Pruning removes 75 % of digits-large's hidden neurons (25 % of digits-small's twelve);
distillation trains an 8-neuron student.

Each method runs through ``edgecloud.compress.compress`` on a scratch copy of
the zoo (the repository itself is left alone): the compressed model is timed
against its fp32 parent with LocalBackend, one thread, interleaved rounds, at
batch 1 and 32, and its fidelity measured (digits: test-split accuracy, after
pruning / distillation trained on the train split; minilm: cosine similarity
of the embeddings of its sample sentences).

    python bench/compression.py [--repo model-repo]

Writes bench/results/compression.json (top-level ``size_ratio`` and
``latency_ratio``: int8-dynamic on minilm, compressed / parent, batch 1) and
bench/results/compression.png.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import track

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_bench_args, results_dir, write_result

from edgecloud import ModelRepository
from edgecloud.compress import compress, report
from edgecloud.errors import EdgecloudError
from edgecloud.zoo import build_zoo, datasets

MODELS = ["digits-large", "digits-small", "minilm"]
METHODS = ["int8-dynamic", "int8-static", "fp16", "int4-weight", "prune", "distill"]
FACTORIES = Path(__file__).resolve().parent / "_digits_modules.py"
OPTIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("digits-large", "prune"): {"module": f"{FACTORIES}:mlp_from_onnx", "amount": 0.75},
    ("digits-small", "prune"): {"module": f"{FACTORIES}:mlp_from_onnx", "amount": 0.25},
    ("digits-large", "distill"): {"module": f"{FACTORIES}:student_8", "lr": 1e-2},
    ("digits-small", "distill"): {"module": f"{FACTORIES}:student_8", "lr": 1e-2},
}
"""Per (model, method); the digits models train on the train split (``data``), are
calibrated on it (int8-static) and evaluated on the test split — never on the rows they
learned from. minilm (no labels) is calibrated and compared on its own samples.npz."""
TARGETS = {"size_ratio": 0.26, "latency_ratio_batch1": 0.6, "accuracy_drop_points": 1.0,
           "minilm_cosine": 0.98}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repo", default="model-repo", type=Path)
    args = parse_bench_args(parser)
    repo = ModelRepository(args.repo)
    build_zoo(repo, MODELS)
    console = Console()
    results, failures = [], []
    with tempfile.TemporaryDirectory(prefix="edgecloud-bench-compress-") as tmp:
        scratch = ModelRepository(Path(tmp) / "repo")
        for model in MODELS:
            shutil.copytree(repo.root / model, scratch.root / model)
        train, test = Path(tmp) / "train.npz", Path(tmp) / "test.npz"
        for split, path in (("train", train), ("test", test)):
            rows = datasets.digits(split)  # type: ignore[arg-type]
            np.savez(path, pixels=rows.x, labels=rows.y)
        for model, method in track(
            [(m, k) for m in MODELS for k in METHODS], description="compress"
        ):
            try:
                options = dict(OPTIONS.get((model, method), {}))
                data = None
                if model.startswith("digits"):
                    data = test
                    if method in ("prune", "distill"):
                        options.update(data=train, epochs=30)
                    elif method == "int8-static":
                        options.update(calibration=train)
                results.append(compress(scratch, model, method, options=options, data=data))
            except EdgecloudError as exc:
                failures.append({"model": model, "method": method, "error": exc.message[:300]})
    console.print(report.table(results))
    for f in failures:
        console.print(f"[yellow]{f['model']} {f['method']}[/]: {f['error']}", highlight=False)
    headline = next(r for r in results if (r.model, r.method) == ("minilm", "int8-dynamic"))
    cases = [_case(r) for r in results]
    path = write_result(
        "compression",
        {
            "benchmark": "compression",
            "peer": "the fp32 parent model, same LocalBackend settings",
            "size_ratio": headline.evaluation.size_ratio,
            "latency_ratio": headline.evaluation.latency_ratio["1"],
            "headline": "int8-dynamic on minilm, compressed / parent, batch 1",
            "targets": TARGETS,
            "cases": cases,
            "not_applicable_or_failed": failures,
            "machine": machine(),
        },
    )
    report.plot(results, results_dir() / "compression.png")
    console.print(f"wrote {path} and {results_dir() / 'compression.png'}")


def _case(result: Any) -> dict[str, Any]:
    e = result.evaluation
    return {
        "model": result.model,
        "method": result.method,
        "parameters": result.parameters,
        "size_ratio": e.size_ratio,
        "latency_ratio_batch1": e.latency_ratio["1"],
        "latency_ratio_batch32": e.latency_ratio["32"],
        "accuracy": e.accuracy,
        "parent_accuracy": e.parent_accuracy,
        "accuracy_drop_points": e.accuracy_drop_points,
        "cosine_min": e.cosine_min,
        "top1_agreement": e.top1_agreement,
        "evaluated_on": e.data,
    }


if __name__ == "__main__":
    main()
