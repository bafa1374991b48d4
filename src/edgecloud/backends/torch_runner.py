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
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import InferenceError, ModelLoadError

__all__ = ["PINNED_ENV", "TORCHSCRIPT_FILE", "TorchRunner", "cuda_available"]

TORCHSCRIPT_FILE = "model.pt"
PINNED_ENV = "EDGECLOUD_TORCH_PINNED"
"""``0`` turns the pinned, stream-per-thread path of :class:`TorchRunner` off (the
plain path); unset or anything else leaves it on (CUDA only)."""


def cuda_available() -> bool:
    """True when torch is installed and sees a CUDA device (cheap when there is no GPU)."""
    if not os.path.exists("/dev/nvidiactl") or importlib.util.find_spec("torch") is None:
        return False
    torch = require("torch", extra="train", feature="the torch (GPU) serving path")
    return bool(torch.cuda.is_available())


class TorchRunner:
    """Call-compatible with onnxruntime's ``run(names, feed, options)``, on torch.

    ``pinned`` (default: on, unless the :data:`PINNED_ENV` variable is ``0``;
    CUDA only): each calling thread copies its inputs into a pinned host buffer
    of its own (grown as needed, reused) and runs copy-in, forward and copy-out
    on a CUDA stream of its own, so the server's runner slots overlap one
    batch's transfers with another's compute. The plain path copies from
    pageable memory on the default stream, where concurrent calls serialise.
    Measured on an H200 (bench/gpu_serving.py, bench/results/gpu_serving.json):
    two threads at batch 32 on resnet18-like 11,207 vs 8,425 items/s, at batch
    64 on minilm 33,649 vs 25,478; ``serve --workers 8`` at c=256 11,767 vs
    8,175 req/s on minilm, 5,539 vs 5,432 on resnet18-like (one thread alone:
    7,978 vs 9,191 on resnet18-like, the extra host copy). Outputs identical.
    """

    def __init__(
        self,
        path: Path,
        input_names: Sequence[str],
        output_names: Sequence[str],
        device: str = "cuda",
        pinned: bool | None = None,
    ) -> None:
        self._torch = require("torch", extra="train", feature="the torch (GPU) serving path")
        try:
            self.module = self._torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # torch raises RuntimeError subclasses of its own
            raise ModelLoadError(f"torch cannot load {path}: {' '.join(str(exc).split())}") from exc
        self.device = device
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        if pinned is None:
            pinned = os.environ.get(PINNED_ENV, "") != "0"
        self.pinned = pinned and device.startswith("cuda")
        self._local = threading.local()

    def __call__(
        self, names: Sequence[str], feed: Mapping[str, np.ndarray[Any, Any]], options: Any = None
    ) -> list[np.ndarray[Any, Any]]:
        if self.pinned:
            return self._call_pinned(names, feed)
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

    def _call_pinned(
        self, names: Sequence[str], feed: Mapping[str, np.ndarray[Any, Any]]
    ) -> list[np.ndarray[Any, Any]]:
        torch = self._torch
        local = self._local
        try:
            if not hasattr(local, "stream"):
                local.stream = torch.cuda.Stream(device=self.device)
                local.buffers = {}
            with torch.inference_mode(), torch.cuda.stream(local.stream):
                args = []
                for n in self.input_names:
                    array = feed[n]
                    buffer = local.buffers.get(n)
                    if buffer is None or buffer.numel() < array.nbytes:
                        buffer = torch.empty(array.nbytes, dtype=torch.uint8, pin_memory=True)
                        local.buffers[n] = buffer
                    dtype = torch.from_numpy(np.empty(0, array.dtype)).dtype
                    host = buffer[: array.nbytes].view(dtype).view(array.shape)
                    np.copyto(host.numpy(), array, casting="no")
                    args.append(host.to(self.device, non_blocking=True))
                result = self.module(*args)
                outputs = result if isinstance(result, (tuple, list)) else (result,)
                by_name = dict(zip(self.output_names, outputs, strict=True))
                # .cpu() into pageable memory waits for this stream: the pinned
                # buffers are free for the thread's next call once it returns
                return [by_name[n].cpu().numpy() for n in names]
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise InferenceError(f"torch failed on {self.device}: {exc}") from exc


def _writable(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    # Tensors decoded from a request body are read-only views; torch wants to own them.
    return array if array.flags.writeable else array.copy()
