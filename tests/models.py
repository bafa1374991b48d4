"""Tiny ONNX models built in code, so tests need no zoo and no torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecloud import ModelConfig, ModelRepository, TensorSpec

WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0
BIAS = np.array([0.5, -1.0, 2.0], dtype=np.float32)


def affine_onnx(path: Path) -> Path:
    """y = x @ W + b; z = softmax(y). x: FP32 [batch, 4]."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
            helper.make_node("Softmax", ["y"], ["z"], axis=-1),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=[numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def two_input_onnx(path: Path) -> Path:
    """out = a * cast(b); a: FP32 [batch, 2], b: INT64 [batch, 2]."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["a", "bf"], ["out"]),
        ],
        "two_input",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", 2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def affine_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = x @ WEIGHTS + BIAS
    e = np.exp(y - y.max(axis=1, keepdims=True))
    return y, e / e.sum(axis=1, keepdims=True)


def affine_config(name: str = "affine", max_batch_size: int = 8) -> ModelConfig:
    return ModelConfig(
        name=name,
        max_batch_size=max_batch_size,
        inputs=[TensorSpec(name="x", datatype="FP32", shape=(4,))],
        outputs=[
            TensorSpec(name="y", datatype="FP32", shape=(3,)),
            TensorSpec(name="z", datatype="FP32", shape=(3,)),
        ],
        labels=["a", "b", "c"],
    )


def two_input_config() -> ModelConfig:
    return ModelConfig(
        name="two-input",
        max_batch_size=4,
        inputs=[
            TensorSpec(name="a", datatype="FP32", shape=(2,)),
            TensorSpec(name="b", datatype="INT64", shape=(2,)),
        ],
        outputs=[TensorSpec(name="out", datatype="FP32", shape=(2,))],
    )


def make_repo(root: Path) -> ModelRepository:
    """A repository with ``affine`` (versions 1 and 2) and ``two-input``."""
    repo = ModelRepository(root / "repo")
    onnx_file = affine_onnx(root / "affine.onnx")
    repo.add_version("affine", onnx_file, config=affine_config())
    repo.add_version("affine", onnx_file, metadata={"note": "second"})
    repo.add_version("two-input", two_input_onnx(root / "two.onnx"), config=two_input_config())
    return repo


def event_sink_onnx(path: Path) -> Path:
    """energy = mean(input²) per row; input: FP32 [rows, samples], any number of samples."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "input"], ["sq"]),
            helper.make_node("ReduceMean", ["sq"], ["energy"], axes=[1], keepdims=0),
        ],
        "event_sink",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["rows", "samples"])],
        [helper.make_tensor_value_info("energy", TensorProto.FLOAT, ["rows"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def event_sink_config() -> ModelConfig:
    return ModelConfig(
        name="events",
        max_batch_size=0,
        inputs=[TensorSpec(name="input", datatype="FP32", shape=(-1, -1))],
        outputs=[TensorSpec(name="energy", datatype="FP32", shape=(-1,))],
    )


#: Open Inference Protocol datatype -> ONNX element type, for the identity models.
ONNX_ELEMENT = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def identity_name(datatype: str) -> str:
    """``ident-fp32`` etc.: the identity model of one datatype."""
    return f"ident-{datatype.lower()}"


def identity_onnx(path: Path, datatype: str) -> Path:
    """y = x; x, y: ``datatype`` [n] (BYTES: a string-identity model)."""
    element = ONNX_ELEMENT[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", element, ["n"])],
        [helper.make_tensor_value_info("y", element, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def nonfinite_onnx(path: Path) -> Path:
    """y = x / 0: [1, -1, 0] -> [+Inf, -Inf, NaN]; x, y: FP32 [n]."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["x", "zero"], ["y"])],
        "nonfinite",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        initializer=[numpy_helper.from_array(np.zeros(1, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def vector_config(name: str, datatype: str) -> ModelConfig:
    """Unbatched x -> y of one datatype, any length."""
    return ModelConfig(
        name=name,
        max_batch_size=0,
        inputs=[TensorSpec(name="x", datatype=datatype, shape=(-1,))],
        outputs=[TensorSpec(name="y", datatype=datatype, shape=(-1,))],
    )


def make_wire_repo(root: Path) -> ModelRepository:
    """One identity model per datatype (``ident-fp32``, ..., ``ident-bytes``) and
    ``nonfinite`` (x / 0), for the wire's adversarial tests."""
    repo = ModelRepository(root / "wire-repo")
    for datatype in ONNX_ELEMENT:
        name = identity_name(datatype)
        model = identity_onnx(root / f"{name}.onnx", datatype)
        repo.add_version(name, model, config=vector_config(name, datatype))
    model = nonfinite_onnx(root / "nonfinite.onnx")
    repo.add_version("nonfinite", model, config=vector_config("nonfinite", "FP32"))
    return repo


CHAIN_WIDTH = 256


def chain_weights(depth: int) -> list[np.ndarray]:
    """``depth`` fixed random [256, 256] matrices scaled to keep values bounded."""
    rng = np.random.default_rng(7)
    scale = np.float32(1.0 / np.sqrt(CHAIN_WIDTH))
    return [
        (rng.standard_normal((CHAIN_WIDTH, CHAIN_WIDTH)) * scale).astype(np.float32)
        for _ in range(depth)
    ]


def chain_onnx(path: Path, depth: int = 40) -> Path:
    """y = x @ W1 @ ... @ Wdepth. x: FP32 [batch, 256]: a model slow enough (about
    5 MFLOP a row) to run in the server's pool and batchers, never inline."""
    weights = chain_weights(depth)
    nodes, names = [], ["x"]
    for i in range(depth):
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [names[-1], f"W{i}"], [out]))
        names.append(out)
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", CHAIN_WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", CHAIN_WIDTH])],
        initializer=[numpy_helper.from_array(w, f"W{i}") for i, w in enumerate(weights)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def chain_reference(x: np.ndarray, depth: int = 40) -> np.ndarray:
    for w in chain_weights(depth):
        x = x @ w
    return x


def chain_config(name: str = "chain", max_batch_size: int = 16) -> ModelConfig:
    return ModelConfig(
        name=name,
        max_batch_size=max_batch_size,
        inputs=[TensorSpec(name="x", datatype="FP32", shape=(CHAIN_WIDTH,))],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=(CHAIN_WIDTH,))],
    )
