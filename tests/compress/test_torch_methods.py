"""Structured pruning and distillation on the zoo's digits models (torch, trained in code)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgecloud import CompressionError, ConfigError, ModelRepository
from edgecloud.compress import compress

from .test_compress import snapshot


@pytest.fixture
def digits(zoo_repo: ModelRepository, tmp_path: Path) -> ModelRepository:
    repo = ModelRepository(tmp_path / "repo")
    for name in ("digits-large", "minilm"):
        shutil.copytree(zoo_repo.root / name, repo.root / name)
    return repo


def test_pruning_removes_neurons_and_keeps_accuracy(digits: ModelRepository) -> None:
    result = compress(digits, "digits-large", "prune", settings={"amount": 0.5}, tolerance=2.0)
    params = result.parameters
    assert params["parameters_after"] < 0.5 * params["parameters_before"]
    assert params["hidden_after"] == [128, 128]
    e = result.evaluation
    assert e.size_ratio < 0.5 and e.accuracy_drop_points is not None and e.accuracy_drop_points <= 2


def test_distilled_student_is_smaller_than_digits_small(
    digits: ModelRepository, zoo_repo: ModelRepository
) -> None:
    result = compress(digits, "digits-large", "distill", settings={"student_hidden": (8,)})
    small = zoo_repo.config("digits-small").metrics["parameters"]
    assert result.parameters["student_parameters"] < small
    assert result.evaluation.accuracy is not None and result.evaluation.accuracy > 0.85


def test_unsupported_graphs_and_settings_are_clear_errors(digits: ModelRepository) -> None:
    before = snapshot(digits)
    with pytest.raises(CompressionError, match="MLP classifiers|no training data"):
        compress(digits, "minilm", "prune")
    with pytest.raises(ConfigError, match="amount must be between 0 and 1"):
        compress(digits, "digits-large", "prune", settings={"amount": 1.5})
    assert snapshot(digits) == before
