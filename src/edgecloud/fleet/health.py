"""The health check a new version passes before it serves: its own samples through its own session.

Mender commits an update only after the new image booted and its check
passed; here the "boot" is a warmed-up onnxruntime session
(``LocalBackend.open``) and the check runs the version's ``samples.npz``:

- every output finite (a NaN or inf fails at once);
- with labels and class scores (first output ``[rows, C]``): accuracy at least
  ``min_accuracy`` and no more than ``max_accuracy_drop`` below the previous
  version's accuracy *on the same samples* (a model with permuted labels
  drops to chance and fails);
- without labels, with a previous version: the cosine similarity of each
  row's first output to the previous version's at least ``min_cosine`` (a
  lossy delta, a re-export);
- the answers *as served*, against the previous version's on the same
  samples: a classifier's answer is the class *name* (``config.labels`` of
  its own version), so when both versions name their classes, the share of
  sample rows on which they serve the same name must be at least
  ``min_agreement``. Accuracy counts class indices against the version's own
  integer labels, which a permuted ``labels`` list leaves unchanged; the
  names a client receives change on every row (a rotation of 10 names
  agrees on none). Renamed classes count as disagreement on their rows only
  (one of ten renamed costs about a tenth). Labels added or removed (one
  version names its classes, the other does not) or a different number of
  class names cannot agree at all: the check fails with a line that says so
  and names ``min_agreement`` (0 accepts such a version). When the previous
  version cannot run the candidate's samples (another interface), the
  detail says the names were not compared.

A version without samples passes on its load and warm-up alone (the detail
says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import EdgecloudError
from ..repository import SAMPLES_FILE

if TYPE_CHECKING:
    from ..backends.local import LoadedModel

__all__ = ["HealthPolicy", "HealthResult", "check_health"]


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Thresholds of :func:`check_health`."""

    min_accuracy: float = 0.0
    """Lowest accuracy (fraction of rows, 0..1) on the version's labelled samples."""
    max_accuracy_drop: float = 0.02
    """Largest accuracy loss (fraction) against the previous version on the same samples."""
    min_cosine: float = 0.99
    """Lowest per-row cosine to the previous version's first output (unlabelled samples)."""
    min_agreement: float = 0.9
    """Lowest share of sample rows (0..1) on which the candidate serves the same class name
    as the previous version (both with ``labels``). A retrained digits model agrees with its
    predecessor on > 0.95 of its samples (bench/fleet_update.py's versions); a swap of two of
    ten classes drops agreement by about 0.2."""


@dataclass(frozen=True, slots=True)
class HealthResult:
    ok: bool
    detail: str
    accuracy: float | None = None
    previous_accuracy: float | None = None
    cosine: float | None = None
    agreement: float | None = None


def check_health(
    candidate: LoadedModel,
    *,
    previous: LoadedModel | None = None,
    policy: HealthPolicy | None = None,
) -> HealthResult:
    """Run ``candidate``'s samples (``samples.npz`` of its version) and judge them by ``policy``."""
    from ..samples import checked_labels, load_samples, score_classes

    policy = policy or HealthPolicy()
    path = Path(candidate.entry.path) / SAMPLES_FILE
    if not path.is_file():
        return HealthResult(True, "no samples in this version: loaded and warmed up")
    config = candidate.entry.config
    try:
        samples = load_samples(path, config)
        outputs = candidate.run(samples.inputs, None, samples.rows)
    except EdgecloudError as exc:
        return HealthResult(False, f"samples do not run: {exc.message}")
    for name, value in outputs.items():
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            return HealthResult(False, f"output {name!r} has NaN or inf on the samples")
    first = np.asarray(outputs[config.outputs[0].name])
    theirs = _run_previous(previous, samples.inputs, samples.rows, config.outputs[0].name)
    classes = score_classes(first.shape) is not None
    if samples.labels is not None and classes:
        try:
            labels = checked_labels(samples.labels, config, str(path), first.shape)
        except EdgecloudError as exc:
            return HealthResult(False, exc.message)
        judged = _judge_accuracy(first, theirs, labels, policy)
    elif theirs is not None and theirs.shape == first.shape:
        cosine = _min_cosine(first, theirs)
        ok = cosine >= policy.min_cosine
        judged = HealthResult(ok, f"min cosine to the previous version {cosine:.6f}", cosine=cosine)
    elif theirs is not None:
        judged = HealthResult(
            True, f"outputs finite (no labels; the previous version's output has shape "
            f"{list(theirs.shape)}, this one {list(first.shape)}: not compared)",
        )  # fmt: skip
    else:
        judged = HealthResult(True, "outputs finite (no labels, no previous version to compare)")
    if not classes:
        return judged
    return _judge_names(judged, first, theirs, config.labels, previous, policy)


def _judge_names(
    judged: HealthResult,
    first: np.ndarray[Any, Any],
    theirs: np.ndarray[Any, Any] | None,
    names: Sequence[str] | None,
    previous: LoadedModel | None,
    policy: HealthPolicy,
) -> HealthResult:
    """``judged`` and the served class names' agreement with the previous version's.

    ``first``/``theirs``: ``[rows, C]`` class scores of the candidate and of
    the previous version on the same samples. Both versions' answers as a
    client receives them: ``labels[argmax]`` of each version's own ``labels``
    (``[rows]`` strings); the share of rows where they are equal must be at
    least ``policy.min_agreement``. ``judged`` unchanged when it already
    failed, without a previous version, or when neither version names its
    classes (the answers are class scores, judged by accuracy or cosine).
    Labels added or removed, or a different number of names, agree on no row
    (agreement 0, fails unless ``min_agreement`` is 0); a candidate whose
    ``labels`` do not name each of its C classes fails.
    """
    if not judged.ok or previous is None:
        return judged
    old_names = previous.entry.config.labels or None
    names = names or None
    if names is None and old_names is None:
        return judged
    if theirs is None:
        return _with(
            judged, judged.ok, "the previous version does not run these samples: class names "
            "not compared", None,
        )  # fmt: skip
    classes = first.shape[1]
    old_classes = theirs.shape[1] if theirs.ndim == 2 else None
    if names is not None and len(names) != classes:
        return _with(
            judged, False, f"labels name {len(names)} classes, the first output scores {classes}",
            None,
        )  # fmt: skip
    same = names is not None and old_names is not None and len(old_names) == len(names)
    if not same or old_classes != classes:
        if old_classes != classes:
            what = (
                f"number of classes changed ({old_classes} -> {classes})"
                if old_classes is not None
                else f"the previous version's first output is not class scores "
                f"(shape {list(theirs.shape)})"
            )
        elif names is None:
            what = f"labels removed (the previous version named its {len(old_names or ())} classes)"
        elif old_names is None:
            what = f"labels added ({len(names)} class names; the previous version had none)"
        else:
            what = f"number of class names changed ({len(old_names)} -> {len(names)})"
        ok = policy.min_agreement <= 0.0
        return _with(
            judged, ok, f"{what}: the served answers cannot agree with the previous version's"
            + ("" if ok else " (min_agreement 0 accepts it)"), 0.0,
        )  # fmt: skip
    mine = np.asarray(names, dtype=object)[first.argmax(axis=1)]
    before = np.asarray(old_names, dtype=object)[theirs.argmax(axis=1)]
    agreement = float((mine == before).mean()) if mine.size else 1.0
    ok = agreement >= policy.min_agreement
    return _with(
        judged, ok, f"served class names agree with the previous version on {agreement:.4f} "
        "of the samples" + ("" if ok else f" (< min_agreement {policy.min_agreement})"), agreement,
    )  # fmt: skip


def _with(judged: HealthResult, ok: bool, detail: str, agreement: float | None) -> HealthResult:
    """``judged`` with ``ok``, ``detail`` appended (after ``; ``) and ``agreement``."""
    return HealthResult(
        ok, f"{judged.detail}; {detail}", judged.accuracy, judged.previous_accuracy,
        judged.cosine, agreement,
    )  # fmt: skip


def _judge_accuracy(
    first: np.ndarray[Any, Any],
    theirs: np.ndarray[Any, Any] | None,
    labels: np.ndarray[Any, Any],
    policy: HealthPolicy,
) -> HealthResult:
    accuracy = float((first.argmax(axis=1) == labels).mean())
    before = None
    if theirs is not None and theirs.shape == first.shape:
        before = float((theirs.argmax(axis=1) == labels).mean())
    detail = f"accuracy {accuracy:.4f}" + (
        f" (previous {before:.4f})" if before is not None else ""
    )
    ok = accuracy >= policy.min_accuracy and (
        before is None or accuracy >= before - policy.max_accuracy_drop
    )
    return HealthResult(ok, detail, accuracy=accuracy, previous_accuracy=before)


def _run_previous(
    previous: LoadedModel | None, inputs: dict[str, Any], rows: int, output: str
) -> np.ndarray[Any, Any] | None:
    """The previous version's ``output`` on the same inputs (its own first output when it has
    none of that name: an output renamed), or None when it cannot run them."""
    if previous is None:
        return None
    try:
        result = previous.run(inputs, None, rows)
    except EdgecloudError:  # other inputs: nothing to compare with
        return None
    value = result.get(output)
    if value is None:
        value = result.get(previous.entry.config.outputs[0].name)
    return None if value is None else np.asarray(value)


def _min_cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    x = a.reshape(a.shape[0], -1).astype(np.float64) if a.ndim else a.reshape(1, -1)
    y = b.reshape(b.shape[0], -1).astype(np.float64) if b.ndim else b.reshape(1, -1)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    dots = (x * y).sum(axis=1)
    same = (norms == 0) & (np.abs(x - y).sum(axis=1) == 0)
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(same, 1.0, 0.0))
    return float(cos.min()) if cos.size else 1.0
