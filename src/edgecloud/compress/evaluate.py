"""Evaluating a compressed model against its parent: size, latency, fidelity.

Every fidelity figure (min cosine, top-1 agreement, accuracies and their
drop, max absolute error, non-finite output values) is computed over all the
model's floating-point outputs, and :func:`check_fidelity` is the one place
they are judged: a figure that is NaN or infinite fails — comparisons with
NaN are false, so ``nan > tolerance`` would otherwise pass — and so does any
NaN/Inf in the compressed outputs, whatever the tolerance. A parent whose own
outputs are not finite on the evaluation data cannot be a reference and is
refused by :func:`evaluate` with that reason.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..backends.local import LocalBackend
from ..errors import CompressionError, ConfigError, EdgecloudError
from ..repository import ModelConfig, ModelRepository
from ..samples import built_size_error, checked_labels, class_indices, score_classes, target_values
from ..tensors import InferRequest, numpy_dtype

__all__ = [
    "EvalData",
    "Evaluation",
    "check_fidelity",
    "evaluate",
    "labelled",
    "random_inputs",
]

Arrays = dict[str, np.ndarray[Any, Any]]
T = TypeVar("T")


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
    """Per batch size ("1", "32"): compressed time / parent time, median of interleaved rounds.
    An unbatched model (max_batch_size 0) is timed on its whole request, under both keys."""
    accuracy: float | None
    parent_accuracy: float | None
    accuracy_drop_points: float | None
    cosine_min: float
    """Smallest cosine similarity between the two models' output rows (all float outputs)."""
    top1_agreement: float | None
    data: str
    max_abs_error: float = 0.0
    """Largest |compressed - parent| over every float output value."""
    scale_error: float = 0.0
    """Largest |‖compressed row‖ / ‖parent row‖ - 1|: what cosine cannot see (fp16's
    converter clips constants to ±1e4, so a model can come out 100× off yet cosine 1)."""
    nonfinite_outputs: int = 0
    """NaN or infinite values in the compressed model's outputs (the parent's are all finite)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def figures(self) -> dict[str, float | None]:
        """Every number of the evaluation by name (None: not measured)."""
        return {
            "size ratio": self.size_ratio,
            **{f"latency ratio b={k}": v for k, v in self.latency_ratio.items()},
            "accuracy": self.accuracy,
            "parent accuracy": self.parent_accuracy,
            "accuracy drop (points)": self.accuracy_drop_points,
            "min cosine": self.cosine_min,
            "top-1 agreement": self.top1_agreement,
            "max abs error": self.max_abs_error,
            "scale error": self.scale_error,
        }


DEFAULT_TOLERANCE_POINTS = 1.0
"""Accuracy points a compressed version may lose unless told otherwise (the CLI's
default; Intel Neural Compressor's default accuracy criterion is a 1 % relative loss)."""
DEFAULT_TOLERANCE_COSINE = 0.02
"""``1 - min cosine`` allowed without labels unless told otherwise (cosine ≥ 0.98)."""


def check_fidelity(
    evaluation: Evaluation, tolerance: float | str | None, model: str, method: str
) -> None:
    """Refuse a compressed model whose figures are not finite or exceed ``tolerance``.

    ``tolerance``: accuracy points where labels exist, else ``1 - min cosine``;
    ``"default"``: :data:`DEFAULT_TOLERANCE_POINTS` / :data:`DEFAULT_TOLERANCE_COSINE`
    (the refusal then says how to accept more); None checks finiteness only.
    Raises CompressionError naming the figure.
    """
    unchanged = "; the repository is unchanged"
    if evaluation.nonfinite_outputs:
        raise CompressionError(
            f"{method} on {model!r} gives {evaluation.nonfinite_outputs} NaN/Inf output values "
            f"where the parent's are finite (on {evaluation.data}){unchanged}"
        )
    figures = evaluation.figures().items()
    broken = [f"{k} {v}" for k, v in figures if v is not None and not math.isfinite(v)]
    if broken:
        raise CompressionError(
            f"{method} on {model!r}: fidelity is not finite ({', '.join(broken)}){unchanged}"
        )
    if tolerance is None:
        return
    hint = ""
    if tolerance == "default":
        labelled = evaluation.accuracy_drop_points is not None
        tolerance = DEFAULT_TOLERANCE_POINTS if labelled else DEFAULT_TOLERANCE_COSINE
        hint = " (the default; pass --tolerance to accept more)"
    if not isinstance(tolerance, float | int) or not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"tolerance must be a number >= 0 and finite, got {tolerance}")
    if evaluation.accuracy_drop_points is not None:
        if not evaluation.accuracy_drop_points <= tolerance:
            raise CompressionError(
                f"{method} on {model!r} loses {evaluation.accuracy_drop_points:.2f} accuracy "
                f"points ({evaluation.parent_accuracy:.2%} → {evaluation.accuracy:.2%}), more "
                f"than the tolerance of {tolerance:g}{hint}{unchanged}"
            )
        return
    if tolerance >= 1:  # the unit switched: points with labels, 1 - cosine without
        raise ConfigError(
            f"tolerance {tolerance:g}: {evaluation.data} has no labels, so the tolerance is "
            "1 - min cosine between outputs (e.g. 0.02 for cosine >= 0.98), and 1 or more "
            "would accept any output; pass labelled data to bound accuracy points"
        )
    if not 1 - evaluation.cosine_min <= tolerance:
        raise CompressionError(
            f"{method} on {model!r}: outputs drift to cosine {evaluation.cosine_min:.4f} "
            f"(tolerance {tolerance:g} → at least {1 - tolerance:.4f}){hint}{unchanged}"
        )
    # 1 - cos ≈ r²/2 for a perpendicular error of relative size r: the same r along the
    # output (a change of scale) is what the tolerance admits
    if not evaluation.scale_error <= math.sqrt(2 * tolerance):
        raise CompressionError(
            f"{method} on {model!r}: output magnitudes change by up to "
            f"{evaluation.scale_error:.2%} (tolerance {tolerance:g} → at most "
            f"{math.sqrt(2 * tolerance):.2%}){hint}{unchanged}"
        )


def random_inputs(config: ModelConfig, batch: int = 32, seed: int = 0) -> Arrays:
    """Deterministic inputs of the declared shapes (variable dimensions: 16): ``batch``
    rows for a batched model, one request of the full shapes (rank 0 included) otherwise;
    floats standard normal, integers and booleans 0 or 1."""
    shapes = {}
    for spec in config.inputs:
        shape = [16 if d == -1 else d for d in spec.full_shape(config.batched)]
        if config.batched:
            shape[0] = batch
        shapes[spec.name] = shape
    error = built_size_error(config, shapes, "random inputs")
    if error is not None:
        raise error
    rng = np.random.default_rng(seed)
    out: Arrays = {}
    for spec in config.inputs:
        shape = shapes[spec.name]
        dtype = numpy_dtype(spec.datatype)
        # np.asarray: a rank-0 input (shape []) stays an array, not a numpy scalar
        if dtype.kind == "f":
            out[spec.name] = np.asarray(rng.standard_normal(shape), dtype=dtype)
        else:
            out[spec.name] = np.asarray(rng.integers(0, 2, shape), dtype=dtype)
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
    child_name = "the compressed model"
    parent_entry = _run_or_refuse(lambda: local.load(model, parent).entry, "the parent", data)
    child_entry = _run_or_refuse(lambda: local.load(model, child).entry, child_name, data)
    full = data.inputs
    out_parent = _run_or_refuse(
        lambda: _float_outputs(local, model, parent, full), "the parent", data
    )
    _require_finite_reference(out_parent, model, parent, data)
    out_child = _run_or_refuse(lambda: _float_outputs(local, model, child, full), child_name, data)
    latency: dict[str, dict[str, float]] = {"parent": {}, "child": {}}
    batched = parent_entry.config.batched
    for batch in (1, 32) if batched else (1,):
        # an unbatched model's axis 0 is not rows (it may have no axis at all): its
        # request is the unit, timed whole
        rows = _rows(full, batch) if batched else full
        per_call = max(3, int(0.05 / max(_probe(local, model, parent, rows), 1e-6)))
        samples: dict[str, list[float]] = {"parent": [], "child": []}
        for r in range(rounds):  # interleaved, order alternating
            order = [("parent", parent), ("child", child)][:: 1 if r % 2 == 0 else -1]
            for name, version in order:
                samples[name] += _time(local, model, version, rows, per_call)
        for name in samples:
            latency[name][str(batch)] = statistics.median(samples[name]) * 1e3
    for times in latency.values():
        times.setdefault("32", times["1"])  # unbatched: one request, reported under both
    local.close()
    return _summarise(parent_entry.model_path, child_entry.model_path, latency, out_parent,
                      out_child, data)  # fmt: skip


def _run_or_refuse(call: Callable[[], T], who: str, data: EvalData) -> T:
    try:
        return call()
    except EdgecloudError as exc:
        raise CompressionError(f"{who} does not run on {data.name}: {exc.message}") from exc


def _float_outputs(local: LocalBackend, model: str, version: int, inputs: Arrays) -> Arrays:
    """Every floating-point output, in the order the model declares them."""
    outputs = local.infer(InferRequest(model, inputs, version=str(version))).outputs
    return {k: v for k, v in outputs.items() if np.asarray(v).dtype.kind == "f"}


def _require_finite_reference(outputs: Arrays, model: str, version: int, data: EvalData) -> None:
    bad = {k: int(np.size(v) - np.count_nonzero(np.isfinite(v))) for k, v in outputs.items()}
    bad = {k: n for k, n in bad.items() if n}
    if not outputs:
        raise CompressionError(f"model {model!r} has no floating-point output to compare")
    if bad:
        where = ", ".join(f"{n} in {k!r}" for k, n in bad.items())
        raise CompressionError(
            f"the parent {model!r} version {version} itself gives NaN/Inf outputs ({where}) on "
            f"{data.name}: it cannot be the reference for fidelity; the repository is unchanged"
        )


def _probe(local: LocalBackend, model: str, version: int, rows: Arrays) -> float:
    started = time.perf_counter()
    local.infer(InferRequest(model, rows, version=str(version)))
    return time.perf_counter() - started


def _rows_of(array: np.ndarray[Any, Any], rows: int) -> np.ndarray[Any, Any]:
    """``array`` as ``rows`` float64 rows (a scalar or a batch-less output: one row)."""
    flat = np.asarray(array, dtype=np.float64)
    return flat.reshape(rows if rows and flat.size % rows == 0 else 1, -1)


def _agreement(
    outs_parent: Arrays, outs_child: Arrays
) -> tuple[np.ndarray[Any, Any], float, float, int]:
    """Per-row cosines over every float output, max |difference|, scale error, non-finite count.

    An output with one value per row (a regression) is compared as one vector of
    all its rows: the cosine of two single numbers is only whether their signs agree.

    Raises CompressionError when the outputs differ in name or size.
    """
    if set(outs_child) != set(outs_parent):
        raise CompressionError(
            f"the compressed model's float outputs {sorted(outs_child)} are not the parent's "
            f"{sorted(outs_parent)}"
        )
    cosines, errors, scales, nonfinite = [], [], [], 0
    for name, want in outs_parent.items():
        a = _rows_of(want, len(want) if want.ndim else 1)
        have = np.asarray(outs_child[name], dtype=np.float64)
        if have.size != a.size:
            raise CompressionError(
                f"the compressed model's output {name!r} has shape {list(have.shape)}, "
                f"the parent's {list(want.shape)}; the repository is unchanged"
            )
        b = have.reshape(a.shape)
        nonfinite += int(b.size - np.count_nonzero(np.isfinite(b)))
        if a.shape[1] == 1:  # one value per row (a regression): the cosine of one number
            a, b = a.T, b.T  # is its sign, so compare the column of all rows as one vector
        norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        cosines.append(np.sum(a * b, axis=1) / (norm_a * norm_b + 1e-12))
        errors.append(np.max(np.abs(a - b)) if a.size else 0.0)
        scales.append(np.max(np.abs(norm_b - norm_a) / (norm_a + 1e-12)) if a.size else 0.0)
    # np.max keeps NaN where Python's max would drop it
    return np.concatenate(cosines), float(np.max(errors)), float(np.max(scales)), nonfinite


def _classes(
    out_parent: np.ndarray[Any, Any], out_child: np.ndarray[Any, Any], data: EvalData
) -> tuple[float | None, float | None, float | None]:
    """Top-1 agreement, accuracy and parent accuracy when the first output holds class scores
    (labelled data, or rows that are probability distributions).

    Labels are checked by :func:`~edgecloud.samples.class_indices` against the
    classes the output scores (names were mapped by :func:`labelled`): an index
    outside ``[0, classes)``, a float, NaN or a bool is a ConfigError, never a
    silent 0 % accuracy. Where the first output is not class scores the labels
    are regression targets, checked finite but not scored (no accuracy: the
    tolerance is then on cosine to the parent).
    """
    classifier = (
        score_classes(out_parent.shape) not in (None, -1)
        and out_child.shape == out_parent.shape
        and (
            data.labels is not None
            or bool(np.all(out_parent >= 0) and np.allclose(out_parent.sum(axis=1), 1, atol=1e-3))
        )
    )
    if not classifier:
        if data.labels is not None:
            target_values(data.labels, data.name)
        return None, None, None
    a, b = out_parent.argmax(axis=1), out_child.argmax(axis=1)
    top1 = float(np.mean(a == b))
    if data.labels is None:
        return top1, None, None
    labels = class_indices(data.labels, None, data.name, out_parent.shape[1])
    return top1, float(np.mean(b == labels)), float(np.mean(a == labels))


def labelled(config: ModelConfig, data: EvalData, source: str | None = None) -> EvalData:
    """``data`` with its labels checked and normalised for ``config``'s model before
    anything is compressed (:func:`~edgecloud.samples.checked_labels`: class names
    mapped to indices, out-of-range / float / NaN / bool labels refused);
    ConfigError naming ``source`` (default: the data's name)."""
    if data.labels is None:
        return data
    labels = checked_labels(data.labels, config, source or data.name)
    return EvalData(data.inputs, labels, data.name)


def _summarise(
    parent_path: Path,
    child_path: Path,
    latency: dict[str, dict[str, float]],
    outs_parent: Arrays,
    outs_child: Arrays,
    data: EvalData,
) -> Evaluation:
    cosine, max_error, scale_error, nonfinite = _agreement(outs_parent, outs_child)
    first = next(iter(outs_parent))
    top1, accuracy, parent_accuracy = _classes(outs_parent[first], outs_child[first], data)
    drop = None
    if accuracy is not None and parent_accuracy is not None:
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
        cosine_min=float(cosine.min()) if cosine.size else 1.0,
        top1_agreement=top1,
        data=data.name,
        max_abs_error=max_error,
        scale_error=scale_error,
        nonfinite_outputs=nonfinite,
    )
