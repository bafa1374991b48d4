"""What a zoo recipe is: a named, versioned, deterministic way to build one model."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..repository import ModelConfig

__all__ = ["Built", "Progress", "Recipe", "write_samples"]

#: Reports progress: (completed fraction 0..1, short description).
Progress = Callable[[float, str], None]


@dataclass(slots=True)
class Built:
    """A freshly built model, not yet in a repository."""

    model_path: Path
    config: ModelConfig
    extra_files: Mapping[str, Path] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    samples: Path | None = None
    """``samples.npz`` for the version (see :mod:`edgecloud.samples`): what
    split, compress, calibrate and ``advise --measure`` run the model on."""


@dataclass(frozen=True, slots=True)
class Recipe:
    """A zoo model: ``build(workdir, progress)`` writes it under ``workdir``."""

    name: str
    revision: int
    """Bumped whenever the recipe's output changes; the build cache keys on it."""
    summary: str
    build: Callable[[Path, Progress], Built]

    @property
    def fingerprint(self) -> str:
        return f"{self.name}@{self.revision}"


def write_samples(path: Path, arrays: Mapping[str, np.ndarray[Any, Any]]) -> Path:
    """Write ``arrays`` as a compressed ``.npz`` that is the same bytes on every build.

    ``numpy.savez`` stamps each member with the current time; here every member
    has the fixed ZIP epoch (1980-01-01), so a rebuild of a recipe gives the same
    sha256 for its samples as for its model. Read back with ``numpy.load``.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return path
