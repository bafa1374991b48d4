"""What ``advise --measure`` times a model on: --data, else the version's samples,
else random rows only where random rows cost what real ones do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecloud import ConfigError, ModelRepository
from edgecloud.advisor import scenario
from edgecloud.advisor.measure import measure, measurement_inputs
from edgecloud.repository import ModelConfig
from edgecloud.tensors import TensorSpec

from ..models import affine_config, affine_onnx


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    """``plain`` (affine, no samples), ``sampled`` (affine, 5 rows), ``domain`` (affine
    whose input declares a value domain, no samples)."""
    repository = ModelRepository(tmp_path / "repo")
    onnx = affine_onnx(tmp_path / "affine.onnx")
    np.savez(tmp_path / "five.npz", x=np.arange(20, dtype=np.float32).reshape(5, 4))
    repository.add_version("plain", onnx, config=affine_config("plain"))
    repository.add_version("sampled", onnx, config=affine_config("sampled"),
                           samples=tmp_path / "five.npz")  # fmt: skip
    bounded = affine_config("domain")
    bounded = bounded.model_copy(update={"inputs": [
        bounded.inputs[0].model_copy(update={"min_value": 0, "max_value": 1})]})  # fmt: skip
    repository.add_version("domain", onnx, config=bounded)
    return repository


def test_samples_are_sent_one_row_per_request_in_turn(repo: ModelRepository) -> None:
    feed = measurement_inputs(repo, "sampled", limit=3)
    assert [r.inputs["x"][0, 0] for r in feed.requests] == [0.0, 4.0, 8.0]  # rows 0, 1, 2
    assert all(r.inputs["x"].shape == (1, 4) for r in feed.requests)
    assert feed.source.endswith("samples.npz (3 of 5 rows)")
    following = feed.cycle()
    assert [following().inputs["x"][0, 0] for _ in range(4)] == [0.0, 4.0, 8.0, 0.0]


def test_data_given_wins_over_the_samples(repo: ModelRepository, tmp_path: Path) -> None:
    np.savez(tmp_path / "mine.npz", x=np.full((2, 4), 7, np.float32))
    feed = measurement_inputs(repo, "sampled", tmp_path / "mine.npz")
    assert feed.source == f"{tmp_path / 'mine.npz'} (2 of 2 rows)"
    assert all(float(r.inputs["x"][0, 0]) == 7.0 for r in feed.requests)


def test_random_rows_only_for_fixed_shapes_without_a_domain(repo: ModelRepository) -> None:
    feed = measurement_inputs(repo, "plain")
    assert feed.source.startswith("random inputs") and len(feed.requests) == 1
    with pytest.raises(ConfigError, match=r"^advise --measure needs data: .* pass --data FILE"):
        measurement_inputs(repo, "domain")
    with pytest.raises(ConfigError, match="pass --small-data FILE.npz"):
        measurement_inputs(repo, "domain", flag="--small-data")


def test_integer_inputs_need_real_rows(tmp_path: Path) -> None:
    """Token ids index an embedding: random ones are out of its vocabulary (or cost
    nothing like real ones), so an integer input without samples needs --data."""
    from ..models import identity_onnx

    repository = ModelRepository(tmp_path / "repo")
    path = identity_onnx(tmp_path / "ids.onnx", "INT64")
    config = ModelConfig(
        name="ids", max_batch_size=0,
        inputs=[TensorSpec(name="x", datatype="INT64", shape=(6,))],
        outputs=[TensorSpec(name="y", datatype="INT64", shape=(6,))],
    )  # fmt: skip
    repository.add_version("ids", path, config=config)
    with pytest.raises(ConfigError, match=r"pass --data FILE\.npz with inputs named x \(INT64"):
        measurement_inputs(repository, "ids")


def test_an_unbatched_models_file_is_one_request(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path / "repo")
    config = ModelConfig(
        name="whole", max_batch_size=0,
        inputs=[TensorSpec(name="x", datatype="FP32", shape=(-1, 4))],
        outputs=[TensorSpec(name="z", datatype="FP32", shape=(-1, 3))],
    )  # fmt: skip
    np.savez(tmp_path / "s.npz", x=np.ones((6, 4), np.float32))
    onnx = affine_onnx(tmp_path / "a.onnx")
    repository.add_version("whole", onnx, config=config, samples=tmp_path / "s.npz")
    feed = measurement_inputs(repository, "whole")
    assert len(feed.requests) == 1 and feed.requests[0].inputs["x"].shape == (6, 4)
    assert feed.source.endswith("(one request)")


def test_measure_reports_what_each_model_ran_on(repo: ModelRepository) -> None:
    w = scenario("camera-fleet")
    w = w.model_copy(update={"model": w.model.model_copy(update={"name": "sampled"})})
    _, rows = measure(w, repo=repo.root, rounds=3)
    (row,) = rows
    assert row.quantity == "device compute: sampled" and "samples.npz (3 of 5 rows)" in row.inputs
    with pytest.raises(ConfigError, match="need the model repository"):
        measure(w, remote_url="http://127.0.0.1:9", data="x.npz")
