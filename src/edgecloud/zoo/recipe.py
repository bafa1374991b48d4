"""What a zoo recipe is: a named, versioned, deterministic way to build one model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..repository import ModelConfig

__all__ = ["Built", "Progress", "Recipe"]

#: Reports progress: (completed fraction 0..1, short description).
Progress = Callable[[float, str], None]


@dataclass(slots=True)
class Built:
    """A freshly built model, not yet in a repository."""

    model_path: Path
    config: ModelConfig
    extra_files: Mapping[str, Path] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


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
