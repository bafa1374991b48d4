"""Event recall and precision against ground-truth spans."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .segment import Event

__all__ = ["EventScore", "score_events"]


@dataclass(frozen=True)
class EventScore:
    recall: float
    """Share of true events whose span is covered (≥ ``coverage``) by forwarded events."""
    precision: float
    """Share of forwarded events that overlap a true event."""
    detected: int
    truths: int
    events: int


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def score_events(
    events: Sequence[Event], truth: Sequence[tuple[float, float]], *, coverage: float = 0.9
) -> EventScore:
    spans = [(e.start_s, e.end_s) for e in events]
    detected = 0
    for t in truth:
        covered = sum(_overlap(t, s) for s in spans)
        if covered >= coverage * (t[1] - t[0]):
            detected += 1
    true_positive = sum(1 for s in spans if any(_overlap(s, t) > 0 for t in truth))
    return EventScore(
        detected / len(truth) if truth else 1.0,
        true_positive / len(spans) if spans else 1.0,
        detected, len(truth), len(spans),
    )  # fmt: skip
