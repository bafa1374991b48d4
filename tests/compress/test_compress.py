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
    LocalBackend,
    ModelConfig,
    ModelRepository,
    TensorSpec,
)
from edgecloud.compress import RANDOM, compress

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
    options = {"calibration": calibration_file(tmp_path)} if method == "int8-static" else {}
    # static int8 also quantizes the softmax output: 8 bits of probability resolution
    floor = 0.95 if method == "int8-static" else 0.98
    result = compress(repo, "mlp", method, options=options, data=RANDOM, tolerance=1 - floor)
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
    spiky = {"calibration": tmp_path / "spiky.npz"}
    result = compress(repo, "mlp", "int8-static", options=spiky, data=RANDOM)
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
    compress(repo, "mlp", "int8-dynamic", data=RANDOM)
    second = compress(repo, "mlp", "fp16", data=RANDOM)
    assert second.parent_version == 1 and second.version.version == 3


def test_bad_inputs_leave_the_repository_unchanged(repo: ModelRepository, tmp_path: Path) -> None:
    before = snapshot(repo)
    with pytest.raises(ConfigError, match="unknown compression method 'int3'"):
        compress(repo, "mlp", "int3")
    with pytest.raises(ConfigError, match="carries no samples: pass --calibration FILE.npz"):
        compress(repo, "mlp", "int8-static", data=RANDOM)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((4, 64), np.float32))
    with pytest.raises(ConfigError, match=r"wrong.npz: .*'pixels'.*x \(FP32 \[rows, 64\]\)"):
        compress(repo, "mlp", "int8-static", options={"calibration": wrong}, data=RANDOM)
    with pytest.raises(ConfigError, match="does not exist"):
        compress(repo, "mlp", "int8-static", options={"calibration": tmp_path / "absent.npz"},
                 data=RANDOM)  # fmt: skip
    with pytest.raises(ConfigError, match="found no MatMul"):
        compress(repo, "two-input", "int4-weight", data=RANDOM)  # nothing to quantize there
    with pytest.raises(CompressionError, match="more than the tolerance|drift"):
        compress(repo, "mlp", "int4-weight", tolerance=0.0, data=RANDOM)
    with pytest.raises(ConfigError, match="carries no samples: pass --data FILE.npz"):
        compress(repo, "mlp", "int8-dynamic")
    for bad in (np.nan, np.inf):  # a NaN or inf row makes accuracy and cosine meaningless
        rows = np.zeros((4, 64), np.float32)
        rows[2, 5] = bad
        np.savez(tmp_path / "bad.npz", x=rows)
        with pytest.raises(ConfigError, match=r"bad.npz: input 'x' holds 1 NaN .*row 2"):
            compress(repo, "mlp", "int8-dynamic", data=tmp_path / "bad.npz")
        with pytest.raises(ConfigError, match=r"calibration: samples file .*bad.npz: input 'x'"):
            compress(repo, "mlp", "int8-static", options={"calibration": tmp_path / "bad.npz"},
                     data=RANDOM)  # fmt: skip
    assert snapshot(repo) == before


def test_cli_writes_the_version_and_its_report(repo: ModelRepository) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "compress", "mlp", "-m", "int8-dynamic",
         "--repo", str(repo.root), "--tolerance", "0.05", "--data", "random"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "160"},  # PYTHONPATH too: this checkout's code
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "int8-dynamic" in result.stdout and "1 → 2" in result.stdout
    version = repo.root / "mlp" / "2"
    assert (version / "report.md").read_text().startswith("| model | method |")
    assert (version / "report.png").stat().st_size > 1000
    # published with the version, hashed like the model: the version never changes afterwards
    published = repo.get("mlp", 2, served_only=False)
    assert {"report.md", "report.png"} <= set(published.files)
    published.verify()
    bad = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "compress", "mlp", "-m", "zip", "--repo",
         str(repo.root)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1 and "unknown compression method 'zip'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_every_method_declares_what_it_imports() -> None:
    """The build runs in a worker process; a missing extra must be found here first."""
    from edgecloud.compress.methods import METHODS

    assert {"int8-dynamic", "int8-static", "fp16", "int4-weight", "prune", "distill"} <= set(
        METHODS
    )
    for name, method in METHODS.items():
        assert ("onnx", "compress") in method.needs, name


def test_data_comes_from_the_file_else_the_version_samples(
    repo: ModelRepository, tmp_path: Path
) -> None:
    x = RNG.standard_normal((96, 64)).astype(np.float32)
    labels = _fp32(repo, x).argmax(axis=1)
    np.savez(tmp_path / "labelled.npz", x=x, labels=labels)
    labelled = compress(repo, "mlp", "int8-dynamic", data=tmp_path / "labelled.npz")
    e = labelled.evaluation
    assert e.data == str(tmp_path / "labelled.npz") and e.parent_accuracy == 1.0
    assert e.accuracy is not None and e.accuracy_drop_points is not None
    # the version's own samples (no labels): agreement and cosine only, and int8-static
    # calibrates on them too
    np.savez(tmp_path / "samples.npz", x=x)
    parent = repo.get("mlp", 1, served_only=False)
    repo.add_version("mlp", parent.model_path, samples=tmp_path / "samples.npz")  # version 3
    static = compress(repo, "mlp", "int8-static", version=3)
    assert static.evaluation.data == "mlp samples" and static.evaluation.accuracy is None
    assert static.evaluation.top1_agreement is not None and static.evaluation.cosine_min > 0.9
    assert static.parameters["calibration_batches"] == 3  # 96 rows in batches of 32
    assert static.parameters["calibration_data"] == "the version's samples"


def test_options_are_typed_per_method_and_errors_name_the_option(repo: ModelRepository) -> None:
    from edgecloud.compress.methods import Int4WeightOptions, Int8StaticOptions

    before = snapshot(repo)
    cases = [
        ("int8-dynamic", {"amount": 0.5}, "int8-dynamic does not take 'amount' (it takes "
         "'per_channel')"),
        ("fp16", {"per_channel": True}, "fp16 does not take 'per_channel' (it takes no options)"),
        ("int8-dynamic", {"per_channel": "maybe"}, "option 'per_channel': Input should be a "
         "valid boolean"),
        ("int4-weight", {"block_size": 0}, "option 'block_size': Value error, must be a power"),
        ("int8-static", {"outlier_ratio": float("inf")}, "option 'outlier_ratio': Input should "
         "be a finite number"),
        ("int8-static", Int4WeightOptions(), "int8-static takes Int8StaticOptions, not "
         "Int4WeightOptions"),
    ]  # fmt: skip
    for method, options, expected in cases:
        with pytest.raises(ConfigError) as info:
            compress(repo, "mlp", method, options=options, data=RANDOM)
        assert expected in info.value.message, info.value.message
    assert snapshot(repo) == before
    typed = Int8StaticOptions(per_channel=False, calibration=None)
    with pytest.raises(ConfigError, match="pass --calibration"):
        compress(repo, "mlp", "int8-static", options=typed, data=RANDOM)


def test_a_regression_output_is_compared_as_one_column_not_row_signs() -> None:
    """One value per row: a near-zero prediction that flips sign is a tiny error, not
    cosine -1 (the cosine of two single numbers is only whether their signs agree)."""
    from edgecloud.compress.evaluate import _agreement

    parent = {"y": np.array([[0.001], [2.0], [-3.0]], np.float32)}
    child = {"y": np.array([[-0.001], [2.0], [-3.0]], np.float32)}
    cosine, max_error, scale_error, nonfinite = _agreement(parent, child)
    assert float(cosine.min()) > 0.9999
    assert max_error == pytest.approx(0.002, abs=1e-6) and nonfinite == 0
    assert scale_error < 1e-3
    # rows with several values are still compared row by row
    rows = {"z": np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)}
    turned = {"z": np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)}
    assert float(_agreement(rows, turned)[0].min()) == pytest.approx(0.0, abs=1e-6)


def test_a_tolerance_in_points_on_unlabelled_data_is_refused_not_reread() -> None:
    """Without labels the tolerance is 1 - min cosine: `--tolerance 1` (meant as one
    accuracy point) would accept any output, so it is refused, naming the unit."""
    from edgecloud.compress.evaluate import Evaluation, check_fidelity

    evaluation = Evaluation(
        size_bytes=100, parent_size_bytes=100, size_ratio=1.0, latency_ms={"1": 1.0},
        parent_latency_ms={"1": 1.0}, latency_ratio={"1": 1.0}, accuracy=None,
        parent_accuracy=None, accuracy_drop_points=None, cosine_min=0.1, top1_agreement=None,
        data="random inputs",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="random inputs has no labels, so the tolerance is 1 - "):
        check_fidelity(evaluation, 1.0, "m", "fp16")
    with pytest.raises(CompressionError, match="drift to cosine 0.1000"):
        check_fidelity(evaluation, 0.5, "m", "fp16")
