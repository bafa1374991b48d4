"""A small branched model in its own repository, split and served by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud import ModelRepository
from edgecloud.repository import config_from_onnx

from .test_partition import branched_onnx


@pytest.fixture
def branched_repo(tmp_path: Path) -> ModelRepository:
    """``branched`` v1 (x: FP32 [batch, 8] → y: FP32 [batch, 4]), batching up to 16."""
    repo = ModelRepository(tmp_path / "repo")
    path = branched_onnx(tmp_path / "branched.onnx")
    repo.add_version("branched", path, config=config_from_onnx(path, "branched", max_batch_size=16))
    return repo
