"""Data sets the zoo trains and evaluates on, all bundled with installed packages.

Splits are deterministic (fixed seed), so every tool — training, calibration,
compression, benchmarks — sees the same held-out examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .._optional import require
from ..errors import ConfigError

__all__ = ["DIGITS_SEED", "Split", "digits", "load"]

DIGITS_SEED = 0
SplitName = Literal["train", "val", "test"]


@dataclass(frozen=True, slots=True)
class Split:
    """Features and integer labels of one split."""

    x: np.ndarray[Any, np.dtype[np.float32]]
    y: np.ndarray[Any, np.dtype[np.int64]]

    def __len__(self) -> int:
        return int(self.y.shape[0])


def digits(split: SplitName) -> Split:
    """scikit-learn's bundled 8x8 digits: 1,797 images, pixels scaled to [0, 1].

    60 % train, 20 % validation, 20 % test, stratified, seed ``DIGITS_SEED``.
    """
    datasets = require("sklearn.datasets", extra="train", feature="the digits data set")
    selection = require("sklearn.model_selection", extra="train", feature="the digits data set")
    bunch = datasets.load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = selection.train_test_split(
        x, y, test_size=0.4, random_state=DIGITS_SEED, stratify=y
    )
    x_val, x_test, y_val, y_test = selection.train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=DIGITS_SEED, stratify=y_rest
    )
    parts = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    if split not in parts:
        raise ConfigError(f"digits has splits train, val and test, not {split!r}")
    features, labels = parts[split]
    return Split(np.ascontiguousarray(features), np.ascontiguousarray(labels))


def load(name: str, split: SplitName = "val") -> Split:
    """A named data set split; ``digits`` is the one bundled today."""
    if name != "digits":
        raise ConfigError(f"unknown data set {name!r}; known: digits")
    return digits(split)
