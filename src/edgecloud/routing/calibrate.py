"""Choosing a cascade's threshold on labelled validation data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from .confidence import confidence

__all__ = ["OperatingPoint", "calibrate", "sweep"]


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


def sweep(
    small_probs: np.ndarray[Any, Any],
    large_probs: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    *,
    measure: str = "max_prob",
) -> list[OperatingPoint]:
    """Every distinct operating point, from never to always escalating."""
    scores = confidence(measure)(small_probs)
    small_right = small_probs.argmax(axis=1) == labels
    large_right = large_probs.argmax(axis=1) == labels
    large_accuracy = float(large_right.mean())
    thresholds = np.unique(np.concatenate([[0.0], scores, [np.nextafter(scores.max(), 2.0)]]))
    points = []
    for t in thresholds:
        escalate = scores < t
        accuracy = float(np.where(escalate, large_right, small_right).mean())
        points.append(
            OperatingPoint(
                threshold=float(t),
                escalation_rate=float(escalate.mean()),
                accuracy=accuracy,
                relative_accuracy=accuracy / large_accuracy if large_accuracy else 0.0,
            )
        )
    return points


def calibrate(
    small_probs: np.ndarray[Any, Any],
    large_probs: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    *,
    measure: str = "max_prob",
    target_relative_accuracy: float | None = None,
    max_escalation_rate: float | None = None,
) -> OperatingPoint:
    """The operating point that meets the target with the fewest escalations.

    - ``target_relative_accuracy``: the least escalation whose accuracy reaches
      that share of the large model's;
    - ``max_escalation_rate``: the most accurate point escalating at most that share.
    """
    if (target_relative_accuracy is None) == (max_escalation_rate is None):
        raise ConfigError("give exactly one of target_relative_accuracy or max_escalation_rate")
    if len(labels) == 0 or small_probs.shape != large_probs.shape:
        raise ConfigError("calibration needs labelled rows with matching probability shapes")
    points = sweep(small_probs, large_probs, labels, measure=measure)
    if target_relative_accuracy is not None:
        meeting = [p for p in points if p.relative_accuracy >= target_relative_accuracy]
        if not meeting:
            best = max(points, key=lambda p: p.relative_accuracy)
            raise ConfigError(
                f"no threshold reaches {target_relative_accuracy:.4f} of the large model's "
                f"accuracy; the best is {best.relative_accuracy:.4f} at "
                f"{best.escalation_rate:.1%} escalated"
            )
        return min(meeting, key=lambda p: (p.escalation_rate, -p.accuracy))
    assert max_escalation_rate is not None
    allowed = [p for p in points if p.escalation_rate <= max_escalation_rate]
    return max(allowed, key=lambda p: (p.accuracy, -p.escalation_rate))
