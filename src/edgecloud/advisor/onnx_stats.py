"""Parameters, memory and FLOPs of an ONNX model (for ``model.onnx`` in a workload)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .._optional import require
from ..errors import ConfigError
from .spec import Workload

__all__ = ["OnnxStats", "fill_from_onnx", "onnx_stats"]


class OnnxStats:
    def __init__(self, params: int, file_bytes: int, flops: float) -> None:
        self.params = params
        self.file_bytes = file_bytes
        self.flops = flops


def onnx_stats(path: Path) -> OnnxStats:
    """Count parameters (initializers) and the FLOPs of MatMul / Gemm / Conv at batch 1
    (variable dimensions taken as 1; 2 FLOPs per multiply-add)."""
    onnx = require("onnx", extra="compress", feature="reading model statistics from ONNX")
    numpy_helper = onnx.numpy_helper
    try:
        model = onnx.load(str(path))
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable ONNX model: {exc}") from exc
    graph = model.graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    params = sum(int(w.size) for w in weights.values())
    shapes: dict[str, list[int]] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    for name, w in weights.items():
        shapes[name] = list(w.shape)
    flops = 0.0
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) >= 2:
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            if a and b:
                k = b[-2] if node.op_type == "MatMul" or len(b) < 2 else b[0]
                n = b[-1] if len(b) >= 2 else 1
                rows = math.prod(a[:-1]) if len(a) > 1 else 1
                if node.op_type == "Gemm" and any(
                    att.name == "transB" and att.i for att in node.attribute
                ):
                    k, n = b[1], b[0]
                flops += 2.0 * rows * k * n
        elif node.op_type == "Conv" and node.input[1] in shapes and node.output[0] in shapes:
            w = shapes[node.input[1]]
            out = shapes[node.output[0]]
            flops += 2.0 * math.prod(out) * math.prod(w[1:])
    return OnnxStats(params, path.stat().st_size, flops)


def fill_from_onnx(workload: Workload, base: Path) -> Workload:
    """The workload with the model's params, memory and GFLOPs read from its ONNX file
    (figures given explicitly win)."""
    assert workload.model.onnx is not None
    path = Path(workload.model.onnx)
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise ConfigError(f"model.onnx: {path} does not exist")
    stats = onnx_stats(path)
    update: dict[str, Any] = {}
    m = workload.model
    if m.params_m is None:
        update["params_m"] = stats.params / 1e6
    if m.memory_mb is None:
        update["memory_mb"] = stats.file_bytes / 1e6 * 1.2
    if m.gflops is None:
        update["gflops"] = max(stats.flops / 1e9, 1e-9)
    return workload.model_copy(update={"model": m.model_copy(update=update)})
