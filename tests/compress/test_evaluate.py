"""Evaluation of unbatched models: their axis 0 is not rows (a rank-0 input has none)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgecloud import ModelRepository
from edgecloud.compress import compress
from edgecloud.compress.evaluate import random_inputs
from edgecloud.importing import import_onnx


def _doubler(path: Path, shape: list[int]) -> Path:
    """y = 2 x for a float input of a fixed ``shape`` ([] : a scalar)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "doubler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("shape", [[], [3, 4]], ids=["scalar", "fixed-3x4"])
def test_an_unbatched_model_is_compressed_on_random_inputs(
    tmp_path: Path, shape: list[int]
) -> None:
    repo = ModelRepository(tmp_path / "repo")
    import_onnx(repo, _doubler(tmp_path / "m.onnx", shape), "m")
    inputs = random_inputs(repo.config("m"))
    assert isinstance(inputs["x"], np.ndarray) and list(inputs["x"].shape) == shape
    result = compress(repo, "m", "int8-dynamic", data="random")
    e = result.evaluation
    assert e.cosine_min > 0.999 and e.nonfinite_outputs == 0
    assert set(e.latency_ms) == {"1", "32"} and e.latency_ms["1"] == e.latency_ms["32"]


def test_an_unbatched_scalar_model_is_compressed_on_its_samples(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    np.savez(tmp_path / "s.npz", x=np.float32(1.5))
    import_onnx(repo, _doubler(tmp_path / "m.onnx", []), "m", samples=tmp_path / "s.npz")
    result = compress(repo, "m", "int8-dynamic")
    assert result.evaluation.cosine_min > 0.999
