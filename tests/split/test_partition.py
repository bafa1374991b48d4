"""Partitioning: every cut of a branched model and of resnet18-like reproduces the full model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecloud import ConfigError, ModelRepository
from edgecloud.split import cut_points, extract, find_cut, verify_split

RNG = np.random.default_rng(0)


def branched_onnx(path: Path) -> Path:
    """a = relu(x W1); b = x W2; y = (a + b) W3 — a residual-style branch."""
    w1, w2, w3 = (RNG.standard_normal(s).astype(np.float32) for s in ((8, 8), (8, 8), (8, 4)))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
            helper.make_node("Relu", ["h1"], ["a"], name="relu"),
            helper.make_node("MatMul", ["x", "w2"], ["b"], name="mm2"),
            helper.make_node("Add", ["a", "b"], ["s"], name="add"),
            helper.make_node("MatMul", ["s", "w3"], ["y"], name="mm3"),
        ],
        "branched",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_branch_cuts_carry_every_live_tensor(tmp_path: Path) -> None:
    path = branched_onnx(tmp_path / "m.onnx")
    cuts = {c.index: c for c in cut_points(path)}
    assert set(cuts[0].tensors) == {"x", "h1"}  # after mm1: x is still needed by mm2
    assert set(cuts[1].tensors) == {"x", "a"}
    assert set(cuts[2].tensors) == {"a", "b"}
    assert cuts[3].tensors == ("s",) and cuts[3].nbytes == 8 * 4
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    for cut in cuts.values():
        head, tail = extract(path, cut, tmp_path / cut.name)
        assert verify_split(path, head, tail, {"x": x}) < 1e-4


def test_resnet18_like_splits_exactly(zoo_repo: ModelRepository, tmp_path: Path) -> None:
    path = zoo_repo.get("resnet18-like").model_path
    cuts = cut_points(path)
    singles = [c for c in cuts if len(c.tensors) == 1]
    assert len(singles) >= 8  # after every residual block, one activation crosses
    image = RNG.standard_normal((1, 3, 224, 224)).astype(np.float32)
    for cut in (singles[0], singles[len(singles) // 2], singles[-1]):
        head, tail = extract(path, cut, tmp_path / cut.name)
        assert verify_split(path, head, tail, {"image": image}, rtol=1e-3, atol=1e-3) < 1e-2
    assert singles[0].nbytes is not None and singles[0].nbytes > singles[-1].nbytes


def test_bad_cut_names_list_the_valid_ones(tmp_path: Path) -> None:
    path = branched_onnx(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match=r"no cut point 'cut99'.*valid cuts: cut0, cut1"):
        find_cut(path, "cut99")
    assert find_cut(path, "cut3").tensors == ("s",)


def test_uses_include_what_nested_subgraphs_capture() -> None:
    """A Loop body holding an If that reads the top-level ``t``: the Loop node uses ``t``."""
    from edgecloud.split.partition import uses

    value = helper.make_tensor_value_info
    branch = helper.make_graph(
        [helper.make_node("Add", ["v_in", "t"], ["out"])], "then", [],
        [value("out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Identity", ["v_in"], ["same"])], "else", [],
        [value("same", TensorProto.FLOAT, None)],
    )  # fmt: skip
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("If", ["cond_in"], ["v_out"], then_branch=branch, else_branch=other),
        ],
        "body",
        [value("i", TensorProto.INT64, []), value("cond_in", TensorProto.BOOL, []),
         value("v_in", TensorProto.FLOAT, None)],
        [value("cond_out", TensorProto.BOOL, []), value("v_out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    loop = helper.make_node("Loop", ["trips", "go", "x"], ["v"], body=body)
    assert uses(loop) == ["trips", "go", "x", "t"]  # v_in, cond_in, i: the body's own


# -- which "feature" ops really mix (issue 14 kind 3) -----------------------------------------

_RNG = np.random.default_rng(5)
PERMUTATION = 2.0 * np.eye(4)[[1, 3, 0, 2]]
DENSE = _RNG.standard_normal((4, 4))


def one_op(op: str, inputs: list[str], shape: list[Any], weights: dict[str, Any], opset: int = 17,
           elem: int = TensorProto.FLOAT, **attrs: Any) -> Any:  # fmt: skip
    """x (``shape``) → ``op`` → f → Neg → out: the one cut sends f, computed from raw x."""
    out = {"ArgMax": TensorProto.INT64}.get(op, TensorProto.INT32 if "Integer" in op else elem)
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["f"], **attrs), helper.make_node("Neg", ["f"], ["out"])],
        "one_op",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("out", out, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def f32(a: Any) -> Any:
    return np.asarray(a, np.float32)


def i64(a: Any) -> Any:
    return np.asarray(a, np.int64)


#: name: (op, inputs, x shape, weights, opset, attributes, f is raw)
MEMBERS: dict[str, tuple[Any, ...]] = {
    # reductions: mixing only when the reduced sizes multiply to more than 1
    "reduce-mean-mono-downmix": (
        "ReduceMean",
        ["x"],
        [1, 1, 64],
        {},
        13,
        {"axes": [1], "keepdims": 0},
        True,
    ),
    "reduce-mean-over-time": ("ReduceMean", ["x"], [1, 1, 64], {}, 13, {"axes": [2]}, False),
    "reduce-max-axes-input-size-1": (
        "ReduceMax",
        ["x", "ax"],
        ["n", 1, 8],
        {"ax": i64([1])},
        18,
        {},
        True,
    ),
    "reduce-max-axes-input-size-8": (
        "ReduceMax",
        ["x", "ax"],
        ["n", 1, 8],
        {"ax": i64([2])},
        18,
        {},
        False,
    ),
    "reduce-sum-noop-empty-axes": (
        "ReduceSum",
        ["x"],
        ["n", 8],
        {},
        13,
        {"noop_with_empty_axes": 1},
        True,
    ),
    "reduce-sum-all-axes": ("ReduceSum", ["x"], ["n", 8], {}, 13, {}, False),
    "reduce-sum-unknown-size": (
        "ReduceSum",
        ["x", "ax"],
        ["n", "t"],
        {"ax": i64([1])},
        13,
        {},
        True,
    ),
    "reduce-l2-batch-of-unknown-size": ("ReduceL2", ["x"], ["n", 1], {}, 13, {"axes": [0]}, True),
    # pools: the window, after padding, must always cover more than one position
    "max-pool-1x1": ("MaxPool", ["x"], [1, 3, 8, 8], {}, 17, {"kernel_shape": [1, 1]}, True),
    "max-pool-2x2": (
        "MaxPool",
        ["x"],
        [1, 3, 8, 8],
        {},
        17,
        {"kernel_shape": [2, 2], "strides": [2, 2]},
        False,
    ),
    "average-pool-1": ("AveragePool", ["x"], [1, 3, 8], {}, 17, {"kernel_shape": [1]}, True),
    "average-pool-2-pad-1": (
        "AveragePool",
        ["x"],
        [1, 3, 8],
        {},
        17,
        {"kernel_shape": [2], "pads": [1, 1]},
        True,
    ),
    "lp-pool-3-pad-1": (
        "LpPool",
        ["x"],
        [1, 3, 8],
        {},
        17,
        {"kernel_shape": [3], "pads": [1, 1]},
        False,
    ),
    "max-pool-2-ceil-mode": (
        "MaxPool",
        ["x"],
        [1, 3, 7],
        {},
        17,
        {"kernel_shape": [2], "strides": [2], "ceil_mode": 1},
        True,
    ),
    "global-pool-1x1": ("GlobalAveragePool", ["x"], [1, 3, 1, 1], {}, 17, {}, True),
    "global-pool-4x4": ("GlobalAveragePool", ["x"], [1, 3, 4, 4], {}, 17, {}, False),
    # Conv: each output channel needs two non-zero taps inside the data
    "conv-1x1-identity": (
        "Conv",
        ["x", "w"],
        [1, 3, 4, 4],
        {"w": f32(np.eye(3)[:, :, None, None])},
        17,
        {},
        True,
    ),
    "conv-1x1-permutation": (
        "Conv",
        ["x", "w"],
        [1, 3, 4, 4],
        {"w": f32(3 * np.eye(3)[[2, 0, 1], :, None, None])},
        17,
        {},
        True,
    ),
    "conv-1x1-dense": (
        "Conv",
        ["x", "w"],
        [1, 3, 4, 4],
        {"w": f32(_RNG.standard_normal((2, 3, 1, 1)))},
        17,
        {},
        False,
    ),
    "conv-3x3-pad-1": (
        "Conv",
        ["x", "w"],
        [1, 1, 6, 6],
        {"w": f32(_RNG.standard_normal((2, 1, 3, 3)))},
        17,
        {"pads": [1, 1, 1, 1]},
        False,
    ),
    "conv-2-padded-border": (
        "Conv",
        ["x", "w"],
        [1, 1, 6],
        {"w": f32(_RNG.standard_normal((1, 1, 2)))},
        17,
        {"pads": [0, 1]},
        True,
    ),
    "conv-weight-at-run-time": ("Conv", ["x", "x"], [1, 1, 1, 1], {}, 17, {}, True),
    "conv-integer-identity-less-zero-point": (
        "ConvInteger",
        ["x", "w", "", "z"],
        [1, 2, 4],
        {"w": np.asarray(np.eye(2)[:, :, None] + 5, np.uint8), "z": np.asarray(5, np.uint8)},
        17,
        {},
        True,
        TensorProto.UINT8,
    ),
    "conv-transpose-stride-2": (
        "ConvTranspose",
        ["x", "w"],
        [1, 1, 4],
        {"w": f32(_RNG.standard_normal((1, 1, 2)))},
        17,
        {"strides": [2]},
        True,
    ),
    "conv-transpose-two-channels": (
        "ConvTranspose",
        ["x", "w"],
        [1, 2, 4],
        {"w": f32(_RNG.standard_normal((2, 1, 2)))},
        17,
        {"strides": [2]},
        False,
    ),
    "conv-3-sparse-padded-border": (
        "Conv",
        ["x", "w"],
        [1, 1, 6],
        {"w": f32([[[1, 0, 1]]])},
        17,
        {"pads": [1, 1]},
        True,
    ),
    "conv-3-sparse-unpadded": (
        "Conv",
        ["x", "w"],
        [1, 1, 6],
        {"w": f32([[[1, 0, 1]]])},
        17,
        {},
        False,
    ),
    "conv-3x3-pad-1-unknown-size": (
        "Conv",
        ["x", "w"],
        [1, 1, "h", "w"],
        {"w": f32(_RNG.standard_normal((2, 1, 3, 3)))},
        17,
        {"pads": [1, 1, 1, 1]},
        True,
    ),
    "max-pool-3-pad-1-on-length-1": (
        "MaxPool",
        ["x"],
        [1, 1, 1],
        {},
        17,
        {"kernel_shape": [3], "pads": [1, 1]},
        True,
    ),
    "average-pool-same-upper": (
        "AveragePool",
        ["x"],
        [1, 1, 8],
        {},
        17,
        {"kernel_shape": [3], "auto_pad": "SAME_UPPER"},
        False,
    ),
    # MatMul / Gemm: a constant operand with two non-zero weights per output element
    "matmul-scaled-permutation": (
        "MatMul",
        ["x", "w"],
        ["n", 4],
        {"w": f32(PERMUTATION)},
        17,
        {},
        True,
    ),
    "matmul-dense": ("MatMul", ["x", "w"], ["n", 4], {"w": f32(DENSE)}, 17, {}, False),
    "matmul-inner-1": (
        "MatMul",
        ["x", "w"],
        ["n", 1],
        {"w": f32(_RNG.standard_normal((1, 4)))},
        17,
        {},
        True,
    ),
    "matmul-left-permutation": (
        "MatMul",
        ["w", "x"],
        [4, "n"],
        {"w": f32(PERMUTATION)},
        17,
        {},
        True,
    ),
    "matmul-left-dense": ("MatMul", ["w", "x"], [4, "n"], {"w": f32(DENSE)}, 17, {}, False),
    "matmul-two-run-time-tensors": ("MatMul", ["x", "x"], [4, 4], {}, 17, {}, True),
    "gemm-identity-transb": (
        "Gemm",
        ["x", "w"],
        ["n", 4],
        {"w": f32(np.eye(4))},
        17,
        {"transB": 1},
        True,
    ),
    "gemm-dense-transb": (
        "Gemm",
        ["x", "w"],
        ["n", 4],
        {"w": f32(DENSE)},
        17,
        {"transB": 1},
        False,
    ),
    "matmul-integer-permutation-less-zero-point": (
        "MatMulInteger",
        ["x", "w", "", "z"],
        ["n", 4],
        {"w": np.asarray(PERMUTATION / 2 + 7, np.uint8), "z": np.asarray(7, np.uint8)},
        17,
        {},
        True,
        TensorProto.UINT8,
    ),
    "matmul-integer-dense": (
        "MatMulInteger",
        ["x", "w"],
        ["n", 4],
        {"w": np.asarray(_RNG.integers(1, 9, (4, 4)), np.uint8)},
        17,
        {},
        False,
        TensorProto.UINT8,
    ),
    "matmul-vector-weight": ("MatMul", ["x", "w"], ["n", 4], {"w": f32(DENSE[0])}, 17, {}, False),
    "matmul-one-hot-vector": (
        "MatMul",
        ["x", "w"],
        ["n", 4],
        {"w": f32([0, 0, 1, 0])},
        17,
        {},
        True,
    ),
    # always features: indices and dimensions
    "argmax-over-size-1": ("ArgMax", ["x"], [1, 1, 8], {}, 17, {"axis": 1}, False),
}


@pytest.mark.parametrize("member", list(MEMBERS), ids=list(MEMBERS))
def test_a_feature_op_is_a_feature_only_when_it_mixes(member: str) -> None:
    """Before: every listed op was a feature, so a channel downmix of mono audio (which is
    the audio), a 1x1 pool, an identity or permutation weight sent raw data under a
    ``features`` rule. Each member runs (onnxruntime accepts it) and is ruled as marked."""
    import onnxruntime as ort

    op, inputs, shape, weights, opset, attrs, raw, *elem = MEMBERS[member]
    model = one_op(op, inputs, shape, weights, opset, *elem, **attrs)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (cut,) = cut_points(model)
    assert cut.tensors == ("f",)
    assert cut.raw_inputs_of_tail == (("f",) if raw else ()), member


def test_the_reported_downmix_sends_the_audio_as_raw() -> None:
    """ReduceMean over the channel of [1, 1, 64] audio, then a dense MatMul: the downmix
    is raw (it equals the audio), the MatMul's output is a feature."""
    import onnxruntime as ort

    w = numpy_helper.from_array(_RNG.standard_normal((64, 8)).astype(np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["audio"], ["mono"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["mono", "W"], ["h"]),
            helper.make_node("Relu", ["h"], ["score"]),
        ],
        "downmix",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 1, 64])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 8])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = _RNG.standard_normal((1, 1, 64)).astype(np.float32)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("mono", TensorProto.FLOAT, None))
    (mono,) = ort.InferenceSession(probe.SerializeToString()).run(["mono"], {"audio": x})
    np.testing.assert_array_equal(mono, x[:, 0, :])  # the "feature" is the audio itself
    raw = {c.tensors: c.raw_inputs_of_tail for c in cut_points(model)}
    assert raw == {("mono",): ("mono",), ("h",): ()}


@pytest.mark.parametrize(("weight", "raw"), [(PERMUTATION, True), (DENSE, False)])
def test_a_dequantized_weight_is_folded_and_checked(weight: Any, raw: bool) -> None:
    """A QDQ model's weight is DequantizeLinear(int8 initializer): not an initializer
    itself, so it is folded first; a permutation stays raw, a dense weight mixes."""
    q = np.clip(np.round(weight * 20), -127, 127).astype(np.int8)
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["wq", "scale"], ["w"]),
            helper.make_node("MatMul", ["x", "w"], ["f"]),
            helper.make_node("Neg", ["f"], ["out"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4])],
        initializer=[numpy_helper.from_array(q, "wq"),
                     numpy_helper.from_array(np.asarray(0.05, np.float32), "scale")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (cut,) = cut_points(model)
    assert cut.raw_inputs_of_tail == (("f",) if raw else ())


def test_an_int8_static_qdq_conv_is_still_a_feature(tmp_path: Path) -> None:
    """onnxruntime's QDQ quantization dequantizes the weight in a node of its own, and some
    int8 weights round to 0: the weight is folded and the padded 3x3 Conv still mixes."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "conv", [x], [y], initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "f.onnx")

    class Samples(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}] * 2

        def get_next(self) -> dict[str, Any] | None:
            return self.left.pop() if self.left else None

    quantize_static(
        tmp_path / "f.onnx", tmp_path / "q.onnx", Samples(), quant_format=QuantFormat.QDQ
    )
    raw = {c.after_node: c.raw_inputs_of_tail for c in cut_points(tmp_path / "q.onnx")}
    assert raw["Conv"] == () and raw["x_DequantizeLinear"] != ()
