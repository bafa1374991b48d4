"""The GPU serving path: a model's TorchScript copy run by torch on a CUDA device.

onnxruntime's CUDA provider needs onnxruntime-gpu, which many GPU machines do
not have; torch with CUDA they usually do. A model version that carries
``model.pt`` (the zoo's torch-built models do) can therefore be served on the
GPU through torch, with the same inputs, outputs and validation as the ONNX
session. Everything here is optional: without torch or CUDA nothing changes.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import InferenceError, ModelLoadError

__all__ = ["TORCHSCRIPT_FILE", "TorchRunner", "cuda_available"]

TORCHSCRIPT_FILE = "model.pt"


def cuda_available() -> bool:
    """True when torch is installed and sees a CUDA device (cheap when there is no GPU)."""
    if not os.path.exists("/dev/nvidiactl") or importlib.util.find_spec("torch") is None:
        return False
    torch = require("torch", extra="train", feature="the torch (GPU) serving path")
    return bool(torch.cuda.is_available())


class TorchRunner:
    """Call-compatible with onnxruntime's ``run(names, feed, options)``, on torch."""

    def __init__(
        self,
        path: Path,
        input_names: Sequence[str],
        output_names: Sequence[str],
        device: str = "cuda",
    ) -> None:
        self._torch = require("torch", extra="train", feature="the torch (GPU) serving path")
        try:
            self.module = self._torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # torch raises RuntimeError subclasses of its own
            raise ModelLoadError(f"torch cannot load {path}: {' '.join(str(exc).split())}") from exc
        self.device = device
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def __call__(
        self, names: Sequence[str], feed: Mapping[str, np.ndarray[Any, Any]], options: Any = None
    ) -> list[np.ndarray[Any, Any]]:
        torch = self._torch
        try:
            with torch.inference_mode():
                args = [
                    torch.as_tensor(_writable(feed[n]), device=self.device)
                    for n in self.input_names
                ]
                result = self.module(*args)
                outputs = result if isinstance(result, (tuple, list)) else (result,)
                by_name = dict(zip(self.output_names, outputs, strict=True))
                return [by_name[n].cpu().numpy() for n in names]
        except (RuntimeError, KeyError, ValueError) as exc:
            raise InferenceError(f"torch failed on {self.device}: {exc}") from exc


def _writable(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    # Tensors decoded from a request body are read-only views; torch wants to own them.
    return array if array.flags.writeable else array.copy()
