"""vad: the Silero VAD ONNX model shipped inside the PyPI package ``silero-vad``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import MissingDependencyError, ModelLoadError
from ..repository import ModelConfig
from ..tensors import TensorSpec
from .recipe import Built, Progress, Recipe

__all__ = ["VAD"]


def _shipped_model() -> Path:
    # find_spec locates the package without importing it (importing pulls in torch).
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise MissingDependencyError("silero_vad", "train", "the vad zoo model")
    path = Path(spec.origin).parent / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise ModelLoadError(f"the silero-vad package ships no model at {path}")
    return path


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
    return Built(_shipped_model(), config)


VAD = Recipe(
    name="vad",
    revision=2,  # 2: sr declared as one of {8000, 16000}
    summary="Silero voice activity detector (the ONNX model shipped in silero-vad)",
    build=_build,
)
