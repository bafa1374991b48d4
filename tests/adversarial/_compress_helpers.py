"""Models built in code and a repository fingerprint for the compress and split safety tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecloud import ModelRepository
from edgecloud.repository import config_from_onnx


def save(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def add_model(repo: ModelRepository, name: str, path: Path, batch: int = 64) -> None:
    repo.add_version(name, path, config=config_from_onnx(path, name, max_batch_size=batch))


def _x(width: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])


def cancelling_onnx(path: Path, width: int = 32) -> Path:
    """y = sqrt(1e-8 - (x@w - sum(x*w))^2): finite in fp32 (the two agree to ~1e-7),
    NaN wherever compression moves the MatMul by more than 1e-4 — as any int8,
    int4 or fp16 rounding of its weights or activations does.

    x: FP32 [batch, 32] -> y: FP32 [batch, 1].
    """
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((width, 1)) / 4).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Mul", ["x", "w_row"], ["xw"]),
        helper.make_node("ReduceSum", ["xw", "axes"], ["h_ref"], keepdims=1),
        helper.make_node("Sub", ["h", "h_ref"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("Sub", ["eps", "d2"], ["room"]),
        helper.make_node("Sqrt", ["room"], ["y"]),
    ]
    init = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(w.reshape(1, width), "w_row"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
        numpy_helper.from_array(np.array(1e-8, np.float32), "eps"),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    return save(helper.make_graph(nodes, "cancelling", [_x(width)], [out], init), path)


def rounding_onnx(path: Path) -> Path:
    """y = sqrt((10001 - 10000) - sigmoid(x) / 2): finite in fp32; in fp16 both constants
    round to 10000 (spacing 8 there), so y = sqrt(-sigmoid(x) / 2) = NaN.

    x: FP32 [batch, 4] -> y: FP32 [batch, 4].
    """
    nodes = [
        helper.make_node("Sub", ["c_a", "c_b"], ["one"]),
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Mul", ["s", "half"], ["s2"]),
        helper.make_node("Sub", ["one", "s2"], ["room"]),
        helper.make_node("Sqrt", ["room"], ["y"]),
    ]
    init = [
        numpy_helper.from_array(np.array(10001.0, np.float32), "c_a"),
        numpy_helper.from_array(np.array(10000.0, np.float32), "c_b"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    return save(helper.make_graph(nodes, "rounding", [_x(4)], [out], init), path)


def overflow_onnx(path: Path) -> Path:
    """y = (x @ 1e5) @ 1e5: ~1e10 in fp32. The float16 converter clips constants to 1e4
    (and onnxruntime's CPU computes fp16 MatMul in fp32), so y comes out 100x too small,
    with cosine 1.0.

    x: FP32 [batch, 4] -> y: FP32 [batch, 4].
    """
    big = np.full((4, 4), 1e5, np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["y"]),
    ]
    init = [numpy_helper.from_array(big, "w1"), numpy_helper.from_array(big, "w2")]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    return save(helper.make_graph(nodes, "overflow", [_x(4)], [out], init), path)


def log_onnx(path: Path) -> Path:
    """y = log(x) @ w: NaN on any negative input — a reference that is itself broken."""
    rng = np.random.default_rng(8)
    w = rng.standard_normal((8, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Log", ["x"], ["l"]),
        helper.make_node("MatMul", ["l", "w"], ["y"]),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    init = [numpy_helper.from_array(w, "w")]
    return save(helper.make_graph(nodes, "log", [_x(8)], [out], init), path)


def branch_onnx(path: Path, width: int = 32) -> Path:
    """An If whose branches capture outer-scope tensors (x and its weights) by name.

    t = relu(x @ w0); if sum(x) > 0: y = t @ w1 else: y = t @ w2 + x @ w3.
    x: FP32 [batch, 32] -> y: FP32 [batch, 8].
    """
    rng = np.random.default_rng(9)
    weights = {
        "w0": rng.standard_normal((width, width)) / 6,
        "w1": rng.standard_normal((width, 8)) / 6,
        "w2": rng.standard_normal((width, 8)) / 6,
        "w3": rng.standard_normal((width, 8)) / 6,
    }
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    then = helper.make_graph(
        [helper.make_node("MatMul", ["t", "w1"], ["y_then"])],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [
            helper.make_node("MatMul", ["t", "w2"], ["a"]),
            helper.make_node("MatMul", ["x", "w3"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["y_else"]),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"], name="matmul0"),
        helper.make_node("Relu", ["h"], ["t"], name="relu0"),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["s", "zero"], ["c"], name="positive"),
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="branch"),
    ]
    init = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    init.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    return save(helper.make_graph(nodes, "branch", [_x(width)], [y], init), path)


def cli_env() -> dict[str, str]:
    """The test's environment (its PYTHONPATH: this checkout's code), wide columns."""
    return {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}


def loop_onnx(path: Path) -> Path:
    """A Loop whose body adds an outer-scope tensor ``t`` (captured by name) each turn.

    t = tanh(x @ w); v = x; repeat 3 times: v = v + t; y = v @ w2.
    x: FP32 [batch, 8] -> y: FP32 [batch, 4].
    """
    rng = np.random.default_rng(11)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "t"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
        helper.make_node("Tanh", ["h"], ["t"], name="tanh"),
        helper.make_node("Loop", ["trips", "true", "x"], ["v"], body=body, name="loop"),
        helper.make_node("MatMul", ["v", "w2"], ["y"], name="out"),
    ]
    init = [
        numpy_helper.from_array((rng.standard_normal((8, 8)) / 3).astype(np.float32), "w"),
        numpy_helper.from_array((rng.standard_normal((8, 4)) / 3).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(3, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "true"),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    return save(helper.make_graph(nodes, "loop", [_x(8)], [out], init), path)


def two_input_onnx(path: Path) -> Path:
    """y = relu(x @ w) + z: the raw input z is consumed only after every cut.

    x, z: FP32 [batch, 8] -> y: FP32 [batch, 8].
    """
    rng = np.random.default_rng(12)
    w = (rng.standard_normal((8, 8)) / 3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "z"], ["y"], name="add_z"),
    ]
    inputs = [_x(8), helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 8])]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    init = [numpy_helper.from_array(w, "w")]
    return save(helper.make_graph(nodes, "two", inputs, [out], init), path)


def reused_output_onnx(path: Path) -> Path:
    """Outputs r and y, where y = tanh(r) + r also consumes the output r.

    x: FP32 [batch, 8] -> r, y: FP32 [batch, 8].
    """
    rng = np.random.default_rng(13)
    w = (rng.standard_normal((8, 8)) / 3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Tanh", ["r"], ["t"], name="tanh"),
        helper.make_node("Add", ["t", "r"], ["y"], name="add"),
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 8]) for n in "ry"]
    init = [numpy_helper.from_array(w, "w")]
    return save(helper.make_graph(nodes, "reused", [_x(8)], outs, init), path)


def sensitive_onnx(path: Path, seed: int = 5) -> Path:
    """y = sin(1e4 * (x @ w)): exact when split in fp32; int8 activations (steps of
    1/255 of the range) scramble the phase, so the tail fails the numerical check.

    x: FP32 [batch, 8] -> y: FP32 [batch, 8].
    """
    w = (np.random.default_rng(seed).standard_normal((8, 8)) / 3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
        helper.make_node("Mul", ["h", "k"], ["s"], name="scale"),
        helper.make_node("Sin", ["s"], ["y"], name="sin"),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    init = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(1e4), "k")]
    return save(helper.make_graph(nodes, "sensitive", [_x(8)], [out], init), path)
