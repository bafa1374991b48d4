"""A small branched model in its own repository, split and served by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud import ModelRepository

from ..sample_data import add_with_samples
from .test_partition import branched_onnx


@pytest.fixture
def branched_repo(tmp_path: Path) -> ModelRepository:
    """``branched`` v1 (x: FP32 [batch, 8] → y: FP32 [batch, 4]), batching up to 16,
    with 4 rows of seeded samples (what ``split`` runs it on)."""
    repo = ModelRepository(tmp_path / "repo")
    add_with_samples(repo, "branched", branched_onnx(tmp_path / "branched.onnx"), max_batch_size=16)
    return repo
