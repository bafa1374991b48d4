"""Confidence of a classifier's probabilities, per row (higher = more sure)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ConfigError, InvalidRequestError

__all__ = ["CONFIDENCE", "confidence"]

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
