"""Triton-layout model repositories written in the test: config.pbtxt + ONNX built in code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def linear_onnx(path: Path, scale: float, *, rows: int | str = "batch") -> Path:
    """y = x @ (scale * W) + b, z = softmax(y); x FP32 [rows, 4] (``"batch"``: dynamic)."""
    weights = (np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0) * scale
    bias = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
            helper.make_node("Softmax", ["y"], ["z"], axis=-1),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [rows, 3]),
        ],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def run_onnx(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime on the file itself: the reference every answer must equal."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"x": x}), strict=True))


LABELS = ["cat", "dog", "bird"]

CLASSIFIER = """
# A batched classifier, as a Triton user writes it.
name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "y" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" },
  { name: "z" data_type: TYPE_FP32 dims: [ -1 ] }
]
dynamic_batching {
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 2000
}
instance_group [ { count: 2 kind: KIND_CPU } ]
"""

FIXED = """
name: "fixed"
backend: "onnxruntime"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
"""

PINNED = """
name: "pinned"
platform: "onnxruntime_onnx"
max_batch_size: 4
version_policy: { specific: { versions: [ 1, 3 ] } }
default_model_filename: "linear.onnx"
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


def write_triton_repo(root: Path) -> Path:
    """``classifier`` (batched, dynamic batching, labels; versions 1, 2: latest 1 serves 2),
    ``fixed`` (max_batch_size 0, full dims), ``pinned`` (version_policy specific 1, 3 of
    1-3, default_model_filename) and ``auto`` (no config.pbtxt: auto-completed)."""
    model = root / "classifier"
    linear_onnx(model / "1" / "model.onnx", 1.0)
    linear_onnx(model / "2" / "model.onnx", 2.0)
    (model / "config.pbtxt").write_text(CLASSIFIER)
    (model / "labels.txt").write_text("\n".join(LABELS) + "\n")
    linear_onnx(root / "fixed" / "1" / "model.onnx", 1.5, rows=2)
    (root / "fixed" / "config.pbtxt").write_text(FIXED)
    for version in (1, 2, 3):
        linear_onnx(root / "pinned" / str(version) / "linear.onnx", float(version))
    (root / "pinned" / "config.pbtxt").write_text(PINNED)
    linear_onnx(root / "auto" / "1" / "model.onnx", 0.5)
    return root
