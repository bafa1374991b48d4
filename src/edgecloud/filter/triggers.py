"""Triggers: per-chunk decisions made on the device, cheap enough to run on every chunk.

* :class:`VadTrigger` — Silero VAD (the zoo's ``vad`` model) through
  :class:`LocalBackend`, stateful, 512 samples (32 ms) of 16 kHz audio per chunk;
* :class:`AnomalyTrigger` — a multivariate sensor anomaly detector: per-channel
  z-scores against statistics fitted on normal data, RMS over the chunk's
  readings, the worst channel, smoothed by an EWMA across chunks (numpy only);
* :class:`FrameDiffTrigger` — mean absolute difference between consecutive video
  frames.

Each has ``score(chunk) -> float`` and a ``threshold``; :func:`calibrate_threshold`
picks the threshold that reaches a target recall on labelled chunks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..backends.local import LocalBackend
from ..errors import ConfigError, DatatypeMismatchError, InvalidRequestError, ShapeMismatchError
from ..repository import ModelRepository
from ..tensors import InferRequest

__all__ = [
    "AnomalyTrigger",
    "FrameDiffTrigger",
    "Trigger",
    "VadTrigger",
    "calibrate_threshold",
]

SAMPLE_RATE = 16_000
VAD_CHUNK = 512
VAD_CONTEXT = 64


class Trigger(Protocol):
    threshold: float
    chunk_s: float
    """Duration of one chunk in seconds."""

    def score(self, chunk: np.ndarray) -> float: ...

    def reset(self) -> None: ...


class VadTrigger:
    """Speech probability per 32 ms chunk from Silero VAD, run by LocalBackend."""

    chunk_s = VAD_CHUNK / SAMPLE_RATE

    def __init__(
        self,
        repository: ModelRepository | str | Path | LocalBackend = "model-repo",
        *,
        model: str = "vad",
        threshold: float = 0.5,
    ) -> None:
        if isinstance(repository, LocalBackend):
            self.local, self._owned = repository, False
        else:
            self.local, self._owned = LocalBackend(repository, intra_op_threads=1), True
        self.model = model
        self.threshold = threshold
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(VAD_CONTEXT, dtype=np.float32)

    def score(self, chunk: np.ndarray) -> float:
        if chunk.dtype != np.float32:
            raise DatatypeMismatchError(
                f"VAD chunks are float32 samples in [-1, 1], got {chunk.dtype} "
                "(divide int16 PCM by 32768)"
            )
        if chunk.shape != (VAD_CHUNK,):
            raise ShapeMismatchError(
                f"VAD chunks are {VAD_CHUNK} mono samples at 16 kHz, got shape {list(chunk.shape)}"
            )
        x = np.concatenate([self._context, chunk])[None, :]
        response = self.local.infer(
            InferRequest(self.model, {"input": x, "state": self._state, "sr": self._sr})
        )
        self._state = response.outputs["stateN"]
        self._context = chunk[-VAD_CONTEXT:]
        return float(response.outputs["output"].reshape(-1)[0])

    def close(self) -> None:
        if self._owned:
            self.local.close()


class AnomalyTrigger:
    """Multivariate anomaly score: EWMA of the worst channel's RMS z-score per chunk.

    ``fit(normal)`` learns each channel's mean and standard deviation from normal
    operation ([N, channels]); a chunk is [readings, channels] (or one reading).
    """

    def __init__(self, *, threshold: float = 4.0, alpha: float = 0.5, chunk_s: float = 1.0) -> None:
        if not 0 < alpha <= 1:
            raise ConfigError(f"alpha must be in (0, 1], got {alpha}")
        self.threshold = threshold
        self.alpha = alpha
        self.chunk_s = chunk_s
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self._ewma = 0.0

    def fit(self, normal: np.ndarray) -> AnomalyTrigger:
        """Learn each channel's mean and std from ``normal`` [N >= 2, channels] numbers.

        InvalidRequestError for another shape, non-numbers (strings, objects) or
        NaN/infinity (statistics of them are NaN: every later score would be NaN,
        never triggered).
        """
        normal = np.asarray(normal)
        if normal.dtype.kind not in "biuf":
            raise InvalidRequestError(f"fit on numbers (normal readings), got dtype {normal.dtype}")
        normal = normal.astype(np.float64)
        if not np.isfinite(normal).all():
            bad = int((~np.isfinite(normal)).sum())
            raise InvalidRequestError(
                f"fit on finite readings: {bad} of {normal.size} are NaN or infinite; "
                "drop those rows"
            )
        if normal.ndim != 2 or len(normal) < 2:
            raise InvalidRequestError(
                f"fit on normal readings shaped [N >= 2, channels], got {list(normal.shape)}"
            )
        self.mean = normal.mean(axis=0)
        self.std = normal.std(axis=0) + 1e-9
        return self

    def reset(self) -> None:
        self._ewma = 0.0

    def score(self, chunk: np.ndarray) -> float:
        if self.mean is None or self.std is None:
            raise ConfigError("AnomalyTrigger.fit(normal_readings) first")
        x = np.atleast_2d(np.asarray(chunk, dtype=np.float64))
        if x.shape[-1] != len(self.mean):
            raise ShapeMismatchError(
                f"chunks have {len(self.mean)} channels (as fitted), got shape {list(x.shape)}"
            )
        z = (x - self.mean) / self.std
        rms = float(np.sqrt(np.mean(z**2, axis=0)).max())  # the worst channel's RMS z
        self._ewma = self.alpha * rms + (1 - self.alpha) * self._ewma
        return self._ewma


class FrameDiffTrigger:
    """Motion: mean absolute difference to the previous frame (frames in [0, 1] or uint8)."""

    def __init__(self, *, threshold: float = 0.02, chunk_s: float = 0.1) -> None:
        self.threshold = threshold
        self.chunk_s = chunk_s
        self._previous: np.ndarray | None = None

    def reset(self) -> None:
        self._previous = None

    def score(self, chunk: np.ndarray) -> float:
        frame = np.asarray(chunk, dtype=np.float32)
        if chunk.dtype == np.uint8:
            frame = frame / 255.0
        previous, self._previous = self._previous, frame
        if previous is None:
            return 0.0
        if previous.shape != frame.shape:
            raise ShapeMismatchError(
                f"frames must keep one shape: {list(previous.shape)} then {list(frame.shape)}"
            )
        return float(np.mean(np.abs(frame - previous)))


def calibrate_threshold(
    scores: np.ndarray | list[float], labels: np.ndarray | list[bool], target_recall: float
) -> float:
    """The highest threshold whose chunk-level recall on ``labels`` reaches the target."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise InvalidRequestError("scores and labels must be 1-D and of the same length")
    if not y.any():
        raise InvalidRequestError("the labels hold no positive chunk to calibrate recall on")
    if not 0 < target_recall <= 1:
        raise InvalidRequestError(f"target recall must be in (0, 1], got {target_recall}")
    positives = np.sort(s[y])[::-1]
    needed = int(np.ceil(target_recall * len(positives)))
    return float(positives[needed - 1])


def make_trigger(kind: str, **options: Any) -> Trigger:
    """A trigger by name: vad, anomaly, frame-diff."""
    kinds: dict[str, Any] = {
        "vad": VadTrigger, "anomaly": AnomalyTrigger, "frame-diff": FrameDiffTrigger,
    }  # fmt: skip
    if kind not in kinds:
        raise ConfigError(f"unknown trigger {kind!r}; use one of {', '.join(kinds)}")
    trigger: Trigger = kinds[kind](**options)
    return trigger
