"""vad: the Silero VAD ONNX model shipped inside the PyPI package ``silero-vad``.

Its samples are one request of :data:`SAMPLE_CHUNKS` chunks, half speech and
half background noise, cut from the synthetic stream the filter's tests use
(:func:`edgecloud.filter.synth.make_stream`: espeak-ng speech in pink noise).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, ModelLoadError
from ..repository import ModelConfig
from ..tensors import TensorSpec
from .recipe import Built, Progress, Recipe, write_samples

__all__ = ["SAMPLE_CHUNKS", "VAD", "sample_request"]

SAMPLE_CHUNKS = 8
"""Chunks in the samples' request: the first half speech, the second noise."""
CHUNK = 512 + 64
"""Samples per chunk at 16 kHz: 512 new ones after the 64 of context that
:class:`~edgecloud.filter.triggers.VadTrigger` prepends."""


def _shipped_model() -> Path:
    # find_spec locates the package without importing it (importing pulls in torch).
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise MissingDependencyError("silero_vad", "train", "the vad zoo model")
    path = Path(spec.origin).parent / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise ModelLoadError(f"the silero-vad package ships no model at {path}")
    return path


def sample_request(seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    """One request of :data:`SAMPLE_CHUNKS` independent chunks (zero state each):
    ``input`` FP32 [8, 576], ``state`` FP32 [2, 8, 128], ``sr`` INT64 scalar 16000.

    The chunks are evenly spaced inside the stream's utterance (speech at
    20 dB SNR; not at its edges) and in the noise before it: silero-vad gives
    the speech chunks 0.67-0.74 and the noise under 0.04. Raises MissingDependencyError
    when espeak-ng is not installed (``apt-get install espeak-ng``); see
    :func:`noise_request`.
    """
    from ..filter.synth import make_stream
    from ..filter.triggers import SAMPLE_RATE

    stream = make_stream(duration_s=12.0, utterances=1, snr_db=20.0, seed=seed)
    (start_s, end_s), half = stream.spans[0], SAMPLE_CHUNKS // 2
    start, end = int(start_s * SAMPLE_RATE), int(end_s * SAMPLE_RATE)
    speech = np.linspace(start, end - CHUNK, half + 2)[1:-1].astype(int)  # not the edges
    noise = np.linspace(0, start - CHUNK, half).astype(int)
    chunks = np.stack([stream.audio[i : i + CHUNK] for i in (*speech, *noise)])
    return {
        "input": chunks.astype(np.float32),
        "state": np.zeros((2, SAMPLE_CHUNKS, 128), np.float32),
        "sr": np.array(SAMPLE_RATE, np.int64),
    }


def noise_request(seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    """:func:`sample_request`'s layout holding seeded white noise (RMS 0.02) only: the
    samples of a zoo built where espeak-ng is not installed (recorded in the
    version's metadata), so ``zoo build`` needs no system package."""
    noise = np.random.default_rng(seed).standard_normal((SAMPLE_CHUNKS, CHUNK)) * 0.02
    return {
        "input": noise.astype(np.float32),
        "state": np.zeros((2, SAMPLE_CHUNKS, 128), np.float32),
        "sr": np.array(16000, np.int64),
    }


def _samples(workdir: Path, progress: Progress) -> tuple[Path, str]:
    try:
        request, made_of = sample_request(), "espeak-ng speech (chunks 0-3), noise (4-7)"
    except MissingDependencyError:
        request, made_of = noise_request(), "white noise only: espeak-ng was not installed"
        progress(0.7, "samples: noise only (install espeak-ng for speech)")
    return write_samples(workdir / "samples.npz", request), made_of


def _build(workdir: Path, progress: Progress) -> Built:
    progress(0.5, "copying the shipped ONNX model")
    config = ModelConfig(
        name="vad",
        max_batch_size=0,
        inputs=[
            TensorSpec(name="input", datatype="FP32", shape=(-1, -1)),
            TensorSpec(name="state", datatype="FP32", shape=(2, -1, 128)),
            # The graph branches on sr: 8000 and 16000 run, anything else fails inside an
            # If node; declared, the refusal names the values instead.
            TensorSpec(name="sr", datatype="INT64", shape=(), allowed_values=(8000, 16000)),
        ],
        outputs=[
            TensorSpec(name="output", datatype="FP32", shape=(-1, 1)),
            TensorSpec(name="stateN", datatype="FP32", shape=(2, -1, 128)),
        ],
        description="Silero VAD: speech probability per 512-sample chunk at 16 kHz, stateful",
        metadata={
            "source": "PyPI package silero-vad, silero_vad/data/silero_vad.onnx",
            "usage": "feed 512 samples (16 kHz) with the previous stateN; sr = 16000",
        },
    )
    samples, made_of = _samples(workdir, progress)
    return Built(_shipped_model(), config, samples=samples, metadata={"samples": made_of})


VAD = Recipe(
    name="vad",
    revision=3,  # 2: sr declared as one of {8000, 16000}; 3: samples.npz
    summary="Silero voice activity detector (the ONNX model shipped in silero-vad)",
    build=_build,
)
