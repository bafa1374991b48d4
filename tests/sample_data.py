"""Sample data for models built in the tests: what `split` and `advise --measure` run on.

A model added without samples has nothing to split or measure on (the command
says to pass ``--data``); the tests' own models carry seeded random samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecloud import ModelRepository, ModelVersion
from edgecloud.repository import ModelConfig, config_from_onnx
from edgecloud.tensors import numpy_dtype

VARIABLE = 4
"""The size given to a variable (-1) dimension."""


def random_samples(path: Path, config: ModelConfig, *, rows: int = 4, seed: int = 0) -> Path:
    """A samples file of ``rows`` seeded rows for every input of ``config``
    (standard normal floats, integers 0/1), written to ``path``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in config.inputs:
        shape = [VARIABLE if d == -1 else d for d in spec.shape]
        if config.batched:
            shape.insert(0, rows)
        dtype = numpy_dtype(spec.datatype)
        values = rng.standard_normal(shape) if dtype.kind == "f" else rng.integers(0, 2, shape)
        arrays[spec.name] = values.astype(dtype)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def add_with_samples(
    repo: ModelRepository, name: str, onnx: Path, *, max_batch_size: int = 0
) -> ModelVersion:
    """Add ``onnx`` as ``name`` with its inferred config and seeded random samples."""
    config = config_from_onnx(onnx, name, max_batch_size=max_batch_size)
    samples = random_samples(onnx.with_suffix(".samples.npz"), config)
    return repo.add_version(name, onnx, config=config, samples=samples)
