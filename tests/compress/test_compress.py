"""Each compression method on a small MLP built in code, parity-checked against fp32."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecloud import (
    CompressionError,
    ConfigError,
    InferRequest,
    InvalidRequestError,
    LocalBackend,
    ModelConfig,
    ModelRepository,
    TensorSpec,
)
from edgecloud.compress import compress

from ..models import two_input_config, two_input_onnx

RNG = np.random.default_rng(0)


def mlp_onnx(path: Path) -> Path:
    """x[?, 64] -> MatMul 64x64 -> Relu -> MatMul 64x10 -> Softmax."""
    w1 = (RNG.standard_normal((64, 64)) / 8).astype(np.float32)
    w2 = (RNG.standard_normal((64, 10)) / 8).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("MatMul", ["hr", "w2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    repository = ModelRepository(tmp_path / "repo")
    config = ModelConfig(
        name="mlp", max_batch_size=64,
        inputs=[TensorSpec(name="x", datatype="FP32", shape=(64,))],
        outputs=[TensorSpec(name="probabilities", datatype="FP32", shape=(10,))],
    )  # fmt: skip
    repository.add_version("mlp", mlp_onnx(tmp_path / "mlp.onnx"), config=config)
    repository.add_version(
        "two-input", two_input_onnx(tmp_path / "two.onnx"), config=two_input_config()
    )
    return repository


def snapshot(repo: ModelRepository) -> list[str]:
    return sorted(str(p.relative_to(repo.root)) for p in repo.root.rglob("*"))


def calibration_file(tmp_path: Path) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, x=RNG.standard_normal((128, 64)).astype(np.float32))
    return path


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-static", "fp16", "int4-weight"])
def test_every_method_keeps_parity_with_fp32(
    repo: ModelRepository, tmp_path: Path, method: str
) -> None:
    calibration = calibration_file(tmp_path) if method == "int8-static" else None
    # static int8 also quantizes the softmax output: 8 bits of probability resolution
    floor = 0.95 if method == "int8-static" else 0.98
    result = compress(repo, "mlp", method, calibration=calibration, tolerance=1 - floor)
    assert result.version.version == 2 and result.parent_version == 1
    meta = result.version.metadata
    assert meta["method"] == method and meta["parent_version"] == 1 and meta["parameters"]
    x = RNG.standard_normal((16, 64)).astype(np.float32)
    with LocalBackend(repo) as local:
        parent = local.infer(InferRequest("mlp", {"x": x}, version=None)).outputs  # latest = 2
        assert local.load("mlp").entry.version == 2
    reference = _fp32(repo, x)
    cosine = np.sum(parent["probabilities"] * reference, axis=1) / (
        np.linalg.norm(parent["probabilities"], axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosine.min() > floor
    assert result.evaluation.cosine_min > floor and result.evaluation.size_ratio < 1.0


def test_static_int8_quantizes_layers_with_outlier_inputs_dynamically(
    repo: ModelRepository, tmp_path: Path
) -> None:
    # Calibration inputs with rare huge values (as after BERT's GELU): with fixed
    # scales the first layer would spend its 256 levels on them.
    x = RNG.standard_normal((256, 64)).astype(np.float32)
    x[RNG.random(x.shape) < 0.0005] = 60.0
    np.savez(tmp_path / "spiky.npz", x=x)
    result = compress(repo, "mlp", "int8-static", calibration=tmp_path / "spiky.npz")
    dynamic = result.parameters["dynamic_layers"]
    assert len(dynamic) == 1 and next(iter(dynamic.values())) > 3.0  # the first MatMul only
    ops = {n.op_type for n in onnx.load(str(result.version.model_path)).graph.node}
    assert {"DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear"} <= ops
    calm = RNG.standard_normal((16, 64)).astype(np.float32)
    with LocalBackend(repo) as local:
        got = local.infer(InferRequest("mlp", {"x": calm})).outputs["probabilities"]
    assert np.abs(got - _fp32(repo, calm)).max() < 0.05


def _fp32(repo: ModelRepository, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(repo.get("mlp", 1, served_only=False).model_path))
    return session.run(None, {"x": x})[0]


def test_compressing_again_starts_from_the_uncompressed_version(repo: ModelRepository) -> None:
    compress(repo, "mlp", "int8-dynamic")
    second = compress(repo, "mlp", "fp16")
    assert second.parent_version == 1 and second.version.version == 3


def test_bad_inputs_leave_the_repository_unchanged(repo: ModelRepository, tmp_path: Path) -> None:
    before = snapshot(repo)
    with pytest.raises(ConfigError, match="unknown compression method 'int3'"):
        compress(repo, "mlp", "int3")
    with pytest.raises(InvalidRequestError, match="int8-static needs calibration inputs"):
        compress(repo, "mlp", "int8-static")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((4, 64), np.float32))
    with pytest.raises(InvalidRequestError, match=r"holds \['pixels'\]; model 'mlp' needs \['x'\]"):
        compress(repo, "mlp", "int8-static", calibration=wrong)
    with pytest.raises(ConfigError, match="does not exist"):
        compress(repo, "mlp", "int8-static", calibration=tmp_path / "absent.npz")
    with pytest.raises(ConfigError, match="found no MatMul"):
        compress(repo, "two-input", "int4-weight")  # nothing to quantize in that graph
    with pytest.raises(CompressionError, match="more than the tolerance|drift"):
        compress(repo, "mlp", "int4-weight", tolerance=0.0)
    assert snapshot(repo) == before


def test_cli_writes_the_version_and_its_report(repo: ModelRepository) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "compress", "mlp", "-m", "int8-dynamic",
         "--repo", str(repo.root), "--tolerance", "0.05"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "160"},  # PYTHONPATH too: this checkout's code
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "int8-dynamic" in result.stdout and "1 → 2" in result.stdout
    version = repo.root / "mlp" / "2"
    assert (version / "report.md").read_text().startswith("| model | method |")
    assert (version / "report.png").stat().st_size > 1000
    bad = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "compress", "mlp", "-m", "zip", "--repo",
         str(repo.root)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1 and "unknown compression method 'zip'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_every_method_declares_what_it_imports() -> None:
    """The build runs in a worker process; a missing extra must be found here first."""
    from edgecloud.compress.methods import METHODS, NEEDS, TORCH_METHOD_NAMES

    assert set(NEEDS) == {*METHODS, *TORCH_METHOD_NAMES}
