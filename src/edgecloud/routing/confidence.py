"""Confidence of a classifier's probabilities, per row (higher = more sure)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ConfigError, InvalidRequestError

__all__ = ["CONFIDENCE", "confidence", "not_probabilities"]

Probs = np.ndarray[Any, Any]


def _classes(probs: Probs) -> None:
    """InvalidRequestError unless ``probs`` is [rows, classes] with at least 2 classes.

    Any number of rows is fine, 0 included: every measure maps [0, K] to an
    empty [0] score vector (no reduction runs over the empty axis).
    """
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise InvalidRequestError(
            f"a confidence measure needs [rows, classes] probabilities with at least 2 "
            f"classes, got shape {list(probs.shape)}"
        )


def not_probabilities(probs: Probs) -> str:
    """Why ``probs`` [rows, K] is not one probability distribution per row, or ''.

    A distribution per row: a float array, every value finite and in [0, 1]
    (1e-6 slack), each row summing to 1 within ``min(0.05, 1e-3 + K * eps(dtype))``
    (a bound on summing K values rounded to the output's float type: 1e-3 +
    9.8e-4 K for FP16, 1e-3 + 1.2e-7 K for FP32; capped at 0.05 so a wide FP16
    output still refuses scores that are not a distribution). Logits,
    log-probabilities, independent sigmoid scores and integer class ids all
    fail it; every measure here is meaningless on them. One pass over the
    array (min, max, row sums): cheap next to the
    model that produced it.
    """
    if probs.dtype.kind != "f":
        return f"{probs.dtype} values, not float probabilities"
    if probs.size == 0:
        return ""
    finite = np.isfinite(probs).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        return f"values that are not finite (NaN or inf), first in row {first}"
    low, high = float(probs.min()), float(probs.max())
    if low < -1e-6 or high > 1 + 1e-6:
        return f"values from {low:.4g} to {high:.4g}, outside [0, 1]"
    sums = probs.sum(axis=1, dtype=np.float64)
    tolerance = min(0.05, 1e-3 + probs.shape[1] * float(np.finfo(probs.dtype).eps))
    off = np.abs(sums - 1.0) > tolerance
    if off.any():
        first = int(np.flatnonzero(off)[0])
        return f"rows that do not sum to 1 (row {first} sums to {sums[first]:.4g})"
    return ""


def max_probability(probs: Probs) -> Probs:
    """The top class's probability per row: [rows, K] → [rows]."""
    _classes(probs)
    return np.asarray(probs.max(axis=1))


def margin(probs: Probs) -> Probs:
    """Top-1 minus top-2 probability per row: [rows, K] → [rows]."""
    _classes(probs)
    top2 = np.sort(probs, axis=1)[:, -2:]
    return np.asarray(top2[:, 1] - top2[:, 0])


def normalised_entropy(probs: Probs) -> Probs:
    """1 - H(p) / log(K): 1 for a one-hot answer, 0 for a uniform one; [rows, K] → [rows]."""
    _classes(probs)
    p = np.clip(probs, 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(axis=1)
    return np.asarray(1.0 - entropy / np.log(probs.shape[1]))


CONFIDENCE: dict[str, Callable[[Probs], Probs]] = {
    "max_prob": max_probability,
    "margin": margin,
    "entropy": normalised_entropy,
}


def confidence(name: str) -> Callable[[Probs], Probs]:
    try:
        return CONFIDENCE[name]
    except KeyError:
        raise ConfigError(
            f"unknown confidence {name!r}; use one of {', '.join(CONFIDENCE)}"
        ) from None
