"""torch module factories for ``compress -m prune / distill`` on the zoo's digits models.

``mlp_from_onnx`` rebuilds the MLP a digits ``model.onnx`` was exported from
(Gemm/Relu chain, Softmax last), weights loaded: the factory ``prune`` needs
(it is called with the parent's ONNX path). ``student_8`` is the distillation
student: 64 -> 8 -> 10, fresh weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import numpy_helper

from edgecloud.zoo.digits import build_classifier


def mlp_from_onnx(path: Path) -> Any:
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    if ops[-2:] != ["Gemm", "Softmax"]:
        raise ValueError(f"not a digits MLP (Gemm/Relu … Softmax): {' → '.join(ops[:8])}")
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    shapes = [weights[g.input[1]].shape for g in gemms]
    mlp = build_classifier(
        tuple(int(s[0]) for s in shapes[:-1]), n_in=int(shapes[0][1]), n_out=int(shapes[-1][0])
    )
    linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for gemm, linear in zip(gemms, linears, strict=True):
            linear.weight.copy_(torch.from_numpy(weights[gemm.input[1]].copy()))
            linear.bias.copy_(torch.from_numpy(weights[gemm.input[2]].copy()))
    return mlp.eval()


def student_8() -> Any:
    torch.manual_seed(0)
    return build_classifier((8,), n_in=64, n_out=10)
