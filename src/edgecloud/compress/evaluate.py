"""Evaluating a compressed model against its parent: size, latency, fidelity."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.local import LocalBackend
from ..repository import ModelConfig, ModelRepository
from ..tensors import InferRequest, numpy_dtype

__all__ = ["EvalData", "Evaluation", "evaluate", "random_inputs"]

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass
class EvalData:
    """Inputs to compare on, and labels when the task has them."""

    inputs: Arrays
    labels: np.ndarray[Any, Any] | None = None
    name: str = "random inputs"


@dataclass
class Evaluation:
    """Compressed / parent figures (ratios below 1 mean smaller or faster)."""

    size_bytes: int
    parent_size_bytes: int
    size_ratio: float
    latency_ms: dict[str, float]
    parent_latency_ms: dict[str, float]
    latency_ratio: dict[str, float]
    """Per batch size ("1", "32"): compressed time / parent time, median of interleaved rounds."""
    accuracy: float | None
    parent_accuracy: float | None
    accuracy_drop_points: float | None
    cosine_min: float
    """Smallest cosine similarity between the two models' output rows."""
    top1_agreement: float | None
    data: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_inputs(config: ModelConfig, batch: int = 32, seed: int = 0) -> Arrays:
    """Deterministic inputs of the declared shapes (variable dimensions: 16)."""
    rng = np.random.default_rng(seed)
    out: Arrays = {}
    for spec in config.inputs:
        shape = [16 if d == -1 else d for d in spec.full_shape(config.batched)]
        if config.batched:
            shape[0] = batch
        dtype = numpy_dtype(spec.datatype)
        if dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[spec.name] = rng.integers(0, 2, shape).astype(dtype)
    return out


def _time(
    local: LocalBackend, model: str, version: int, inputs: Arrays, rounds: int
) -> list[float]:
    request = InferRequest(model, inputs, version=str(version))
    local.infer(request)
    started = time.perf_counter()
    for _ in range(rounds):
        local.infer(request)
    return [(time.perf_counter() - started) / rounds]


def _rows(inputs: Arrays, n: int) -> Arrays:
    return {k: np.ascontiguousarray(v[:n]) for k, v in inputs.items()}


def evaluate(
    repo: ModelRepository,
    model: str,
    parent: int,
    child: int,
    data: EvalData,
    *,
    threads: int = 1,
    rounds: int = 7,
) -> Evaluation:
    """Compare two versions of ``model`` in ``repo`` (both must be loadable)."""
    local = LocalBackend(repo, intra_op_threads=threads, warmup=True)
    parent_entry, child_entry = local.load(model, parent).entry, local.load(model, child).entry
    output = parent_entry.config.outputs[0].name
    full = data.inputs
    out_parent = local.infer(InferRequest(model, full, version=str(parent))).outputs[output]
    out_child = local.infer(InferRequest(model, full, version=str(child))).outputs[output]
    latency: dict[str, dict[str, float]] = {"parent": {}, "child": {}}
    for batch in (1, 32):
        rows = _rows(full, batch)
        per_call = max(3, int(0.05 / max(_probe(local, model, parent, rows), 1e-6)))
        samples: dict[str, list[float]] = {"parent": [], "child": []}
        for r in range(rounds):  # interleaved, order alternating
            order = [("parent", parent), ("child", child)][:: 1 if r % 2 == 0 else -1]
            for name, version in order:
                samples[name] += _time(local, model, version, rows, per_call)
        for name in samples:
            latency[name][str(batch)] = statistics.median(samples[name]) * 1e3
    local.close()
    return _summarise(parent_entry.model_path, child_entry.model_path, latency, out_parent,
                      out_child, data)  # fmt: skip


def _probe(local: LocalBackend, model: str, version: int, rows: Arrays) -> float:
    started = time.perf_counter()
    local.infer(InferRequest(model, rows, version=str(version)))
    return time.perf_counter() - started


def _summarise(
    parent_path: Path,
    child_path: Path,
    latency: dict[str, dict[str, float]],
    out_parent: np.ndarray[Any, Any],
    out_child: np.ndarray[Any, Any],
    data: EvalData,
) -> Evaluation:
    a = out_parent.reshape(len(out_parent), -1).astype(np.float64)
    b = out_child.reshape(len(out_child), -1).astype(np.float64)
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    # class scores: labelled data, or rows that are probability distributions
    classifier = (
        out_parent.ndim == 2
        and out_parent.shape[1] > 1
        and (
            data.labels is not None
            or bool(np.all(out_parent >= 0) and np.allclose(out_parent.sum(axis=1), 1, atol=1e-3))
        )
    )
    top1 = float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))) if classifier else None
    accuracy = parent_accuracy = drop = None
    if data.labels is not None and classifier:
        accuracy = float(np.mean(b.argmax(axis=1) == data.labels))
        parent_accuracy = float(np.mean(a.argmax(axis=1) == data.labels))
        drop = (parent_accuracy - accuracy) * 100
    size, parent_size = child_path.stat().st_size, parent_path.stat().st_size
    return Evaluation(
        size_bytes=size,
        parent_size_bytes=parent_size,
        size_ratio=size / parent_size,
        latency_ms=latency["child"],
        parent_latency_ms=latency["parent"],
        latency_ratio={k: latency["child"][k] / latency["parent"][k] for k in latency["child"]},
        accuracy=accuracy,
        parent_accuracy=parent_accuracy,
        accuracy_drop_points=drop,
        cosine_min=float(cosine.min()),
        top1_agreement=top1,
        data=data.name,
    )
