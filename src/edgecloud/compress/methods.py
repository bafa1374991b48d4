"""Compression methods for ONNX models: onnxruntime.quantization and the float16 converter.

A registry of small functions ``(source, target, options) -> parameters``; each
writes ``target`` from ``source`` and returns the parameters it used (recorded
in the new version's metadata). No graph is rewritten by hand here.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import ConfigError, InvalidRequestError

__all__ = ["METHODS", "CompressOptions", "method"]

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass
class CompressOptions:
    """What a method may use."""

    calibration: list[Arrays] = field(default_factory=list)
    """Input batches for static quantization (from a data file or a zoo data set)."""
    per_channel: bool = True
    transformer: bool = False
    """Skip symbolic shape inference in pre-processing (transformer graphs need this)."""
    block_size: int = 32
    """Block size of 4-bit weight-only quantization."""
    amount: float = 0.5
    """Share of each hidden layer's neurons that pruning removes."""
    epochs: int = 30
    """Fine-tuning (pruning) or training (distillation) epochs."""
    student_hidden: tuple[int, ...] = (8,)
    """Hidden layer sizes of the distilled student."""
    temperature: float = 4.0
    """Distillation temperature for the teacher's soft targets."""
    alpha: float = 0.7
    """Weight of the soft-target loss against the hard-label loss."""
    progress: Callable[[float, str], None] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.amount < 1:
            raise ConfigError(f"amount must be between 0 and 1, got {self.amount}")
        if self.epochs < 1:
            raise ConfigError("epochs must be at least 1")


Method = Callable[[Path, Path, CompressOptions], dict[str, Any]]
METHODS: dict[str, Method] = {}


def method(name: str) -> Callable[[Method], Method]:
    def register(fn: Method) -> Method:
        METHODS[name] = fn
        return fn

    return register


def _quantization() -> Any:
    require("onnx", extra="compress", feature="quantization")
    import onnxruntime.quantization as quantization

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    return quantization


def _preprocess(source: Path, workdir: Path, options: CompressOptions) -> Path:
    """Shape inference and graph optimisation, as onnxruntime's quantizer recommends."""
    q = _quantization()
    target = workdir / "preprocessed.onnx"
    q.quant_pre_process(str(source), str(target), skip_symbolic_shape=options.transformer)
    return target


@method("int8-dynamic")
def int8_dynamic(source: Path, target: Path, options: CompressOptions) -> dict[str, Any]:
    """INT8 weights, activations quantized at run time: no calibration data needed."""
    q = _quantization()
    with tempfile.TemporaryDirectory() as tmp:
        pre = _preprocess(source, Path(tmp), options)
        q.quantize_dynamic(
            str(pre), str(target), weight_type=q.QuantType.QInt8, per_channel=options.per_channel
        )
    return {"weight_type": "QInt8", "per_channel": options.per_channel}


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of input batches."""

    def __init__(self, batches: list[Arrays]) -> None:
        self._batches: Iterator[Arrays] = iter(batches)

    def get_next(self) -> Arrays | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - not called by MinMax calibration
        pass


@method("int8-static")
def int8_static(source: Path, target: Path, options: CompressOptions) -> dict[str, Any]:
    """INT8 weights and activations in QDQ format, scales calibrated on sample inputs."""
    if not options.calibration:
        raise InvalidRequestError(
            "int8-static needs calibration inputs: pass --calibration FILE.npz or a zoo data set"
        )
    q = _quantization()
    with tempfile.TemporaryDirectory() as tmp:
        pre = _preprocess(source, Path(tmp), options)
        q.quantize_static(
            str(pre),
            str(target),
            _Reader(options.calibration),
            quant_format=q.QuantFormat.QDQ,
            per_channel=options.per_channel,
            activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
        )
    return {
        "format": "QDQ",
        "per_channel": options.per_channel,
        "calibration_batches": len(options.calibration),
        "calibration_method": "MinMax",
    }


@method("fp16")
def fp16(source: Path, target: Path, options: CompressOptions) -> dict[str, Any]:
    """Weights and compute in float16; inputs and outputs stay float32."""
    onnx = require("onnx", extra="compress", feature="fp16 conversion")
    float16 = require("onnxconverter_common.float16", extra="compress", feature="fp16 conversion")
    model = onnx.load(str(source))
    # Cast nodes stay in float32: the converter retypes their outputs but not their
    # `to` attribute, which onnxruntime then rejects (seen on MiniLM's mask cast).
    blocked = [*float16.DEFAULT_OP_BLOCK_LIST, "Cast"]
    converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    onnx.save(converted, str(target))
    return {"keep_io_types": True, "kept_float32": ["Cast"]}


@method("int4-weight")
def int4_weight(source: Path, target: Path, options: CompressOptions) -> dict[str, Any]:
    """4-bit weight-only quantization of MatMul weights (MatMulNBits), block-wise."""
    onnx = require("onnx", extra="compress", feature="4-bit quantization")
    require("onnx_ir", extra="compress", feature="4-bit quantization")
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(source))
    quantizer = MatMulNBitsQuantizer(model, block_size=options.block_size, is_symmetric=True)
    quantizer.process()
    quantized = quantizer.model.model
    if not any(n.op_type == "MatMulNBits" for n in quantized.graph.node):
        raise ConfigError(
            "int4-weight found no MatMul with constant weights to quantize in this graph"
        )
    onnx.save(quantized, str(target))
    return {"bits": 4, "block_size": options.block_size, "symmetric": True}


def resolve(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        known = [*METHODS, "prune", "distill"]
        raise ConfigError(
            f"unknown compression method {name!r}; use one of {', '.join(known)}"
        ) from None
