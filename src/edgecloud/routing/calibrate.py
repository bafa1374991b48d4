"""Choosing a cascade's threshold on labelled validation data.

A cascade escalates a row when the small model's confidence is *below* the
threshold (``score < threshold``, compared in the scores' dtype, exactly as
:class:`~edgecloud.routing.cascade.Cascade` does). :func:`sweep` lists every
distinct operating point of a validation set; :func:`calibrate` picks one for
a target; :func:`calibrate_report` also states how far the rows can be trusted
(Clopper–Pearson intervals) or picks a threshold with a finite-sample
guarantee (:mod:`edgecloud.routing.guarantee`).

Inputs: ``small_probs`` and ``large_probs`` [rows, classes] probabilities
(finite, in [0, 1]; at least 2 classes), ``labels`` [rows] integer class
indices in [0, classes). Anything else is a ConfigError saying what is wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .binomial import clopper_pearson
from .confidence import confidence, not_probabilities

__all__ = [
    "Calibration",
    "OperatingPoint",
    "Outcomes",
    "calibrate",
    "calibrate_report",
    "outcomes",
    "sweep",
]

Array = np.ndarray[Any, Any]
LEVEL = 0.95
"""Confidence level of the reported intervals."""


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """What a threshold does on a labelled set."""

    threshold: float
    escalation_rate: float
    accuracy: float
    relative_accuracy: float
    """Cascade accuracy / large-model-only accuracy."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Every candidate threshold of a validation set, with the counts behind it.

    Arrays are [candidates], thresholds ascending (from escalating nothing to
    escalating the most the [0, 1] range allows). Counts are of rows:
    ``escalated`` (score < threshold), ``right`` (the cascade's answer is
    right), ``harm`` (the cascade keeps the small model's wrong answer where
    the large model's is right), ``gain`` (it keeps the small model's right
    answer where the large model's is wrong). ``right = large_right - harm + gain``.
    """

    rows: int
    large_right: int
    thresholds: Array
    escalated: Array
    right: Array
    harm: Array
    gain: Array

    def point(self, i: int) -> OperatingPoint:
        accuracy = float(self.right[i]) / self.rows
        return OperatingPoint(
            threshold=float(self.thresholds[i]),
            escalation_rate=float(self.escalated[i]) / self.rows,
            accuracy=accuracy,
            relative_accuracy=float(self.right[i]) / self.large_right if self.large_right else 0.0,
        )


def _checked(small_probs: Array, large_probs: Array, labels: Array) -> tuple[Array, Array, Array]:
    small, large, labels = np.asarray(small_probs), np.asarray(large_probs), np.asarray(labels)
    for name, probs in (("small", small), ("large", large)):
        if probs.ndim != 2 or probs.shape[1] < 2 or probs.dtype.kind != "f":
            raise ConfigError(
                f"the {name} model's probabilities must be a float [rows, classes] array with "
                f"at least 2 classes, got {probs.dtype} {list(probs.shape)}"
            )
    if small.shape != large.shape:
        raise ConfigError(
            f"the small and large models' probabilities differ in shape: "
            f"{list(small.shape)} vs {list(large.shape)}; both must answer the same classes"
        )
    rows, classes = small.shape
    if rows == 0:
        raise ConfigError("calibration needs labelled rows; got 0")
    for name, probs in (("small", small), ("large", large)):
        bad = ~np.isfinite(probs).all(axis=1)
        if bad.any():
            raise ConfigError(
                f"the {name} model's probabilities are not finite (NaN or inf) in "
                f"{int(bad.sum())} of {rows} rows, first row {int(np.flatnonzero(bad)[0])}"
            )
        why = not_probabilities(probs)  # the Cascade's own check: both refuse the same
        if why:
            raise ConfigError(
                f"the {name} model's output is not probabilities ({why}); point the "
                "cascade's output at a softmax output"
            )
    if labels.ndim != 1 or len(labels) != rows:
        raise ConfigError(f"need one label per row ({rows}), got shape {list(labels.shape)}")
    from ..samples import class_indices  # the one label check (lazy: samples reads configs)

    return small, large, class_indices(labels, None, "calibration data", classes)


def _decimal_in(lo: Array, hi: Array, dtype: Any) -> Array:
    """Per interval, the shortest decimal ``t`` with ``lo < dtype(t) <= hi`` (0 <= t <= 1).

    Short thresholds read well in the YAML; the test in the scores' dtype keeps
    each one on exactly its operating point. Falls back to ``hi`` itself.
    """
    out = hi.astype(float).copy()
    found = np.zeros(len(hi), bool)
    for digits in range(10):
        scale = 10.0**digits
        t = np.clip(np.floor(hi.astype(float) * scale) / scale, 0.0, 1.0)
        cast = t.astype(dtype)
        ok = ~found & (cast > lo) & (cast <= hi)
        out[ok], found = t[ok], found | ok
    return out


def _thresholds(sorted_scores: Array) -> Array:
    """One threshold per distinct escalation set within [0, 1], ascending (float64)."""
    dtype = sorted_scores.dtype
    distinct = np.unique(sorted_scores)
    below = np.concatenate([[-np.inf], distinct]).astype(dtype)  # escalate scores <= below
    above = np.concatenate([distinct, [np.inf]]).astype(dtype)  # ... and not from above on
    keep = (below < 1.0) & (above >= 0.0)
    below, above = below[keep], above[keep]
    return _decimal_in(below, np.minimum(above, np.asarray(1.0, dtype)), dtype)


def outcomes(
    small_probs: Array, large_probs: Array, labels: Array, *, measure: str = "max_prob"
) -> Outcomes:
    """Counts at every candidate threshold, in O(rows log rows)."""
    small, large, labels = _checked(small_probs, large_probs, labels)
    scores = confidence(measure)(small)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    small_right = (small.argmax(axis=1) == labels)[order]
    large_right = (large.argmax(axis=1) == labels)[order]
    thresholds = _thresholds(sorted_scores)
    escalated = np.searchsorted(sorted_scores, thresholds.astype(scores.dtype), side="left")

    def kept(flags: Array) -> Array:
        """How many of the rows not escalated have ``flags`` set, per threshold."""
        total = np.concatenate([[0], np.cumsum(flags)])
        return np.asarray(total[-1] - total[escalated])

    harm, gain = kept(~small_right & large_right), kept(small_right & ~large_right)
    n_large = int(large_right.sum())
    return Outcomes(
        rows=len(labels),
        large_right=n_large,
        thresholds=thresholds,
        escalated=escalated,
        right=n_large - harm + gain,
        harm=harm,
        gain=gain,
    )


def sweep(
    small_probs: Array, large_probs: Array, labels: Array, *, measure: str = "max_prob"
) -> list[OperatingPoint]:
    """Every distinct operating point, from never to always escalating."""
    found = outcomes(small_probs, large_probs, labels, measure=measure)
    return [found.point(i) for i in range(len(found.thresholds))]


def _pick(found: Outcomes, target: float | None, max_escalation: float | None) -> int:
    """The candidate plain (average) calibration picks; ConfigError when none reaches."""
    if target is not None:
        if found.large_right == 0:
            raise ConfigError(
                f"the large model is right on none of the {found.rows} rows: there is no "
                "accuracy to keep a share of (check the labels and the cascade's output)"
            )
        meeting = np.flatnonzero(found.right >= target * found.large_right - 1e-9)
        if meeting.size == 0:
            best = int(np.argmax(found.right))
            point = found.point(best)
            raise ConfigError(
                f"no threshold reaches {target:.4f} of the large model's accuracy; the best is "
                f"{point.relative_accuracy:.4f} at {point.escalation_rate:.1%} escalated"
            )
        # fewest escalations, then most accurate
        return int(meeting[np.lexsort((-found.right[meeting], found.escalated[meeting]))[0]])
    assert max_escalation is not None
    allowed = np.flatnonzero(found.escalated <= max_escalation * found.rows + 1e-9)
    # most accurate, then fewest escalations (threshold 0 escalates none, so one is allowed)
    return int(allowed[np.lexsort((found.escalated[allowed], -found.right[allowed]))[0]])


def _one_target(target: float | None, max_escalation: float | None) -> None:
    if (target is None) == (max_escalation is None):
        raise ConfigError("give exactly one of target_relative_accuracy or max_escalation_rate")
    if target is not None and not 0.0 < target <= 1.0:
        raise ConfigError(f"the target relative accuracy must be in (0, 1], got {target}")
    if max_escalation is not None and not 0.0 <= max_escalation <= 1.0:
        raise ConfigError(f"the escalation budget must be in [0, 1], got {max_escalation}")


def calibrate(
    small_probs: Array,
    large_probs: Array,
    labels: Array,
    *,
    measure: str = "max_prob",
    target_relative_accuracy: float | None = None,
    max_escalation_rate: float | None = None,
) -> OperatingPoint:
    """The operating point that meets the target with the fewest escalations.

    - ``target_relative_accuracy``: the least escalation whose accuracy reaches
      that share of the large model's;
    - ``max_escalation_rate``: the most accurate point escalating at most that share.

    Calibrated on average: on these rows, not with a guarantee for new ones
    (:func:`calibrate_report` says how much the rows can back it).
    """
    _one_target(target_relative_accuracy, max_escalation_rate)
    found = outcomes(small_probs, large_probs, labels, measure=measure)
    return found.point(_pick(found, target_relative_accuracy, max_escalation_rate))


@dataclass(frozen=True, slots=True)
class Calibration:
    """A chosen threshold and what the validation rows can say about it."""

    point: OperatingPoint
    rows: int
    escalated: int
    escalation_interval: tuple[float, float]
    """Clopper–Pearson ``level`` interval of the escalation rate."""
    relative_accuracy_interval: tuple[float, float]
    """Simultaneous ``level`` interval of the relative accuracy (see :func:`relative_interval`)."""
    large_accuracy: float
    level: float = LEVEL
    guarantee: float | None = None
    """δ when the threshold was chosen with a guarantee (Learn-then-Test), else None."""
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def relative_interval(found: Outcomes, i: int, level: float = LEVEL) -> tuple[float, float]:
    """A ``level`` interval of the relative accuracy at candidate ``i``.

    Relative accuracy is ``1 + (g - h) / l`` with ``h`` the rate of rows the
    cascade loses (harm), ``g`` the rate it gains and ``l`` the large model's
    accuracy. Each of the three gets an exact Clopper–Pearson interval
    (Clopper & Pearson 1934) at ``1 - (1 - level) / 3`` (Bonferroni), and the
    bounds combine the extremes, so all three hold, hence the interval covers,
    with probability >= ``level``. It treats the threshold as fixed: a
    threshold chosen on the same rows makes it optimistic (use a guarantee).

    The bounds are clipped to what the ratio can be: at least 0 (accuracies
    are not negative) and at most ``1 / l_lo``, since the cascade's accuracy
    is at most 1 and the large model's at least ``l_lo`` wherever the three
    intervals hold. With no large-model right answer the interval is
    ``(0, inf)``: the rows say nothing.
    """
    n, each = found.rows, 1.0 - (1.0 - level) / 3
    h_lo, h_hi = clopper_pearson(int(found.harm[i]), n, each)
    g_lo, g_hi = clopper_pearson(int(found.gain[i]), n, each)
    l_lo, l_hi = clopper_pearson(found.large_right, n, each)
    if l_lo <= 0.0:
        return 0.0, float("inf")
    low, high = g_lo - h_hi, g_hi - h_lo
    return (
        max(0.0, 1.0 + low / (l_lo if low < 0 else l_hi)),
        min(1.0 / l_lo, 1.0 + high / (l_hi if high < 0 else l_lo)),
    )


def calibrate_report(
    small_probs: Array,
    large_probs: Array,
    labels: Array,
    *,
    measure: str = "max_prob",
    target_relative_accuracy: float | None = None,
    max_escalation_rate: float | None = None,
    guarantee: float | None = None,
) -> Calibration:
    """Pick a threshold (on average, or with a guarantee δ) and report its intervals.

    With ``guarantee`` the threshold comes from
    :func:`edgecloud.routing.guarantee.certify` (see there for exactly what
    is guaranteed); ConfigError when no threshold can be certified. Without
    it, :func:`calibrate`'s choice, plus a warning when the target lies
    inside the interval the rows allow (the rows cannot tell whether it is met),
    whatever the threshold. Either way, a warning when the rows are too few
    for the relative-accuracy interval to say anything (wider than
    :data:`WIDEST`).
    """
    from .guarantee import certify

    _one_target(target_relative_accuracy, max_escalation_rate)
    found = outcomes(small_probs, large_probs, labels, measure=measure)
    if guarantee is not None:
        i = certify(
            found,
            delta=guarantee,
            target=target_relative_accuracy,
            max_escalation=max_escalation_rate,
        )
    else:
        i = _pick(found, target_relative_accuracy, max_escalation_rate)
    point = found.point(i)
    escalation = clopper_pearson(int(found.escalated[i]), found.rows, LEVEL)
    relative = relative_interval(found, i, LEVEL)
    if found.escalated[i] == 0 and point.threshold == 0.0:
        # scores are >= 0 (probabilities, margins, 1 - normalised entropy): a threshold
        # of 0 escalates no row of any data, so the rate is exactly 0, not estimated
        escalation = (0.0, 0.0)
    warnings = []
    if guarantee is None:  # whatever the threshold, 0 included
        warnings = _warnings(found.rows, relative, escalation,
                             target_relative_accuracy, max_escalation_rate)  # fmt: skip
    warnings += _too_few(found.rows, relative)
    return Calibration(
        point=point,
        rows=found.rows,
        escalated=int(found.escalated[i]),
        escalation_interval=escalation,
        relative_accuracy_interval=relative,
        large_accuracy=found.large_right / found.rows,
        guarantee=guarantee,
        warnings=warnings,
    )


WIDEST = 0.2
"""Widest relative-accuracy interval reported without a warning: wider, and the
rows cannot tell a cascade that keeps 90 % of the large model's accuracy from
one that keeps 110 % (at usual accuracies it takes a few hundred rows)."""


def _too_few(rows: int, relative: tuple[float, float]) -> list[str]:
    """A warning when the rows are too few for the relative-accuracy interval to inform."""
    if relative[1] - relative[0] <= WIDEST:
        return []
    return [
        f"only {rows} rows: the {LEVEL:.0%} interval of the relative accuracy is "
        f"[{relative[0]:.4f}, {relative[1]:.4f}], too wide to say what this threshold "
        f"does on new data; calibrate on more labelled rows (hundreds at least)"
    ]


def _warnings(
    rows: int,
    relative: tuple[float, float],
    escalation: tuple[float, float],
    target: float | None,
    max_escalation: float | None,
) -> list[str]:
    """A threshold calibrated on few rows to a fine target is a promise the data cannot back."""
    level = f"{LEVEL:.0%}"
    if target is not None and relative[0] < target <= relative[1]:
        return [
            f"the target relative accuracy {target:.4g} lies inside the {level} interval "
            f"[{relative[0]:.4f}, {relative[1]:.4f}] of what {rows} rows show: they cannot "
            f"tell whether new data will meet it; calibrate on more rows, or pass --guarantee"
        ]
    if max_escalation is not None and escalation[0] <= max_escalation < escalation[1]:
        return [
            f"the escalation budget {max_escalation:.4g} lies inside the {level} interval "
            f"[{escalation[0]:.4f}, {escalation[1]:.4f}] of the escalation rate on {rows} "
            f"rows: new data may escalate more; calibrate on more rows, or pass --guarantee"
        ]
    return []
