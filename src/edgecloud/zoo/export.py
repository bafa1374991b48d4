"""Export torch modules to ONNX the same way everywhere (zoo, pruning, distillation)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._optional import require

__all__ = ["OPSET", "export_onnx", "export_torchscript"]

#: ONNX opset of every exported model: supported by onnxruntime's quantizer and
#: by the float16 converter.
OPSET = 17


def export_onnx(
    module: Any,
    example_inputs: tuple[Any, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> Path:
    """Export ``module`` in eval mode with the TorchScript-based exporter.

    The TorchScript exporter is deterministic, fast (well under a second for the
    zoo's small models) and handles the BERT graph of MiniLM; torch 2.9+ warns
    that it is deprecated, so the warning is silenced here and the choice is
    recorded in the README's design notes.
    """
    torch = require("torch", extra="train", feature="exporting a torch model to ONNX")
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example_inputs,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return path


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
