"""The zoo's exports: ONNX (the shared exporter, :mod:`edgecloud.export`) and TorchScript."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .._optional import require
from ..export import OPSET, export_onnx

__all__ = ["OPSET", "export_onnx", "export_torchscript"]


def export_torchscript(module: Any, example_inputs: tuple[Any, ...], path: Path) -> Path:
    """Save a traced TorchScript copy beside the ONNX file, for the GPU serving path.

    onnxruntime-gpu is not available everywhere a CUDA device is; torch is, so
    the GPU path runs this artefact (see ``edgecloud.backends.torch_runner``).
    """
    torch = require("torch", extra="train", feature="exporting TorchScript")
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example_inputs)
    traced.save(str(path))
    return path
