"""Compression methods for ONNX models: onnxruntime.quantization and the float16 converter.

A registry of small functions ``(source, target, options) -> parameters``; each
writes ``target`` from ``source`` and returns the parameters it used (recorded
in the new version's metadata). No graph is rewritten by hand here.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import CompressionError, ConfigError, InvalidRequestError

__all__ = [
    "METHODS",
    "REFUSES_CONTROL_FLOW",
    "TORCH_METHOD_NAMES",
    "CompressOptions",
    "control_flow_nodes",
    "method",
    "refuse_unsupported",
    "resolve_any",
]

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
    outlier_ratio: float = 3.0
    """int8-static: a layer whose input's max exceeds this × its 99.9th percentile
    is quantized dynamically instead."""
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
TORCH_METHOD_NAMES = ("prune", "distill")
"""Methods of :mod:`.torch_methods` (the ``train`` extra); they take the parent version."""
REFUSES_CONTROL_FLOW: dict[str, str] = {
    "prune": "it rebuilds MLP classifiers (Gemm/Relu … Softmax) in torch",
    "distill": "it trains an MLP student on an MLP teacher rebuilt in torch",
}
"""Method -> why it cannot convert graphs with control flow (If/Loop/Scan subgraphs)."""
_QUANTIZE = (("onnx", "compress"), ("onnxruntime.quantization", "compress"))
NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "int8-dynamic": _QUANTIZE,
    "int8-static": _QUANTIZE,
    "fp16": (("onnx", "compress"), ("onnxconverter_common.float16", "compress")),
    "int4-weight": (*_QUANTIZE, ("onnx_ir", "compress")),
    "prune": (("onnx", "compress"), ("torch", "train"), ("torch_pruning", "train")),
    "distill": (("onnx", "compress"), ("torch", "train")),
}
"""Method -> ``(module, extra)`` it imports. Checked in this process before the
build starts in its worker (:func:`check_needs`), so a missing extra is one line
naming it rather than a failure inside the worker."""


def check_needs(name: str) -> None:
    """Raise MissingDependencyError naming the extra if ``name`` cannot run here."""
    for module, extra in NEEDS.get(name, ()):
        require(module, extra=extra, feature=f"compression with {name}")


def method(name: str, *, refuses_control_flow: str | None = None) -> Callable[[Method], Method]:
    """Register a method; ``refuses_control_flow`` says why it cannot take If/Loop/Scan graphs."""

    def register(fn: Method) -> Method:
        METHODS[name] = fn
        if refuses_control_flow:
            REFUSES_CONTROL_FLOW[name] = refuses_control_flow
        return fn

    return register


def control_flow_nodes(model_path: Path) -> list[str]:
    """``op_type 'name'`` of every top-level node that holds a subgraph (If, Loop, Scan, …)."""
    onnx = require("onnx", extra="compress", feature="compression")
    graph_kinds = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    model = onnx.load(str(model_path), load_external_data=False)
    return [
        f"{node.op_type} {node.name!r}" if node.name else node.op_type
        for node in model.graph.node
        if any(attr.type in graph_kinds for attr in node.attribute)
    ]


def refuse_unsupported(model_path: Path, name: str) -> None:
    """Refuse, before any work, a graph with control flow for a method that cannot convert it.

    Raises CompressionError naming the nodes and the reason.
    """
    why = REFUSES_CONTROL_FLOW.get(name)
    if why is None:
        return
    found = control_flow_nodes(model_path)
    if found:
        others = [m for m in METHODS if m not in REFUSES_CONTROL_FLOW]
        raise CompressionError(
            f"{name} cannot compress this model: the graph has control flow "
            f"({', '.join(found[:4])}{' …' if len(found) > 4 else ''}) and {why}; "
            f"try {' or '.join(others)}; the repository is unchanged"
        )


def _quantization() -> Any:
    quantization = require("onnxruntime.quantization", extra="compress", feature="quantization")

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    return quantization


def _preprocess(source: Path, workdir: Path, options: CompressOptions) -> Path:
    """Shape inference and graph optimisation, as onnxruntime's quantizer recommends."""
    q = _quantization()
    target = workdir / "preprocessed.onnx"
    # onnxruntime's symbolic shape inference fails on If subgraphs (a bare AssertionError
    # on Silero VAD), and transformer graphs: ONNX shape inference is enough for both.
    skip = options.transformer or bool(control_flow_nodes(source))
    q.quant_pre_process(str(source), str(target), skip_symbolic_shape=skip)
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
    """INT8 weights and activations in QDQ format, scales calibrated on sample inputs.

    Activations are asymmetric uint8 (onnxruntime's fast u8×s8 kernels; signed
    activations fall back to a path several times slower), weights per-channel
    int8. A layer whose input has outliers — a calibrated maximum more than
    ``outlier_ratio`` times the 99.9th percentile, as after BERT's GELU — would
    spend its 256 levels on a few values, so it is quantized dynamically
    (scales from each request's own range) instead of with fixed scales.
    """
    if not options.calibration:
        raise InvalidRequestError(
            "int8-static needs calibration inputs: pass --calibration FILE.npz or a zoo data set"
        )
    q = _quantization()
    with tempfile.TemporaryDirectory() as tmp:
        pre = _name_nodes(_preprocess(source, Path(tmp), options))
        outliers = _outlier_layers(pre, options.calibration, options.outlier_ratio)
        static = Path(tmp) / "static.onnx" if outliers else target
        q.quantize_static(
            str(pre),
            str(static),
            _Reader(options.calibration),
            quant_format=q.QuantFormat.QDQ,
            per_channel=options.per_channel,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
            op_types_to_quantize=["MatMul", "Gemm", "Conv", "Gather"],
            nodes_to_exclude=list(outliers),
        )
        if outliers:
            q.quantize_dynamic(
                str(static),
                str(target),
                weight_type=q.QuantType.QInt8,
                per_channel=options.per_channel,
                nodes_to_quantize=list(outliers),
            )
    return {
        "format": "QDQ",
        "per_channel": options.per_channel,
        "activations": "uint8, asymmetric",
        "calibration_batches": len(options.calibration),
        "calibration_method": "MinMax",
        "outlier_ratio": options.outlier_ratio,
        "dynamic_layers": {name: round(ratio, 2) for name, ratio in outliers.items()},
    }


def _name_nodes(path: Path) -> Path:
    """Give every unnamed node a unique name: the quantizers select nodes by name."""
    onnx = require("onnx", extra="compress", feature="quantization")
    model = onnx.load(str(path))
    if _named(model):
        onnx.save(model, str(path))
    return path


def _named(model: Any) -> bool:
    """Name every unnamed node uniquely, in place; True when any was unnamed.

    The quantizers select nodes by name, and the float16 converter names its
    casts after them (two unnamed consumers of one input gave two casts named
    ``x_cast_to_``, an invalid model).
    """
    taken = {n.name for n in model.graph.node if n.name}
    if len(taken) == len(model.graph.node):
        return False
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)
    return True


def _outlier_layers(model_path: Path, batches: list[Arrays], threshold: float) -> dict[str, float]:
    """Weighted layers whose input's max |x| exceeds ``threshold`` × its 99.9th percentile."""
    onnx = require("onnx", extra="compress", feature="quantization")
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    weights = {i.name for i in model.graph.initializer}
    layers = {
        node.name: node.input[0]
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm", "Conv")
        and len(node.input) > 1
        and node.input[1] in weights
        and node.input[0] not in weights
    }
    outputs = {o.name for o in model.graph.output}
    for tensor in set(layers.values()) - outputs:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        seen: dict[str, list[np.ndarray[Any, Any]]] = {t: [] for t in layers.values()}
        for batch in batches:
            for name, value in zip(names, session.run(None, batch), strict=True):
                if name in seen:
                    seen[name].append(np.abs(value).ravel())
    except Exception as exc:  # onnxruntime's exception types are not exported
        from ..errors import describe

        raise InvalidRequestError(
            f"calibration inputs do not run through the model: {describe(exc)}"
        ) from exc
    found = {}
    for layer, tensor in layers.items():
        values = np.concatenate(seen[tensor])
        ratio = float(values.max() / (np.percentile(values, 99.9) + 1e-12))
        if ratio > threshold:
            found[layer] = ratio
    return found


@method(
    "fp16",
    refuses_control_flow=(
        "onnxconverter-common's float16 converter does not convert subgraphs "
        "(with Cast kept in float32 it inserts casts forever: the ten-minute hang on Silero VAD)"
    ),
)
def fp16(source: Path, target: Path, options: CompressOptions) -> dict[str, Any]:
    """Weights and compute in float16; inputs and outputs stay float32."""
    onnx = require("onnx", extra="compress", feature="fp16 conversion")
    float16 = require("onnxconverter_common.float16", extra="compress", feature="fp16 conversion")
    model = onnx.load(str(source))
    _named(model)
    # Cast nodes stay in float32: the converter retypes their outputs but not their
    # `to` attribute, which onnxruntime then rejects (seen on MiniLM's mask cast).
    blocked = [*float16.DEFAULT_OP_BLOCK_LIST, "Cast"]
    with warnings.catch_warnings(record=True) as clipped:  # one per constant out of fp16 range
        warnings.simplefilter("always", UserWarning)
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=blocked
        )
    onnx.save(converted, str(target))
    return {"keep_io_types": True, "kept_float32": ["Cast"], "constants_clipped": len(clipped)}


@method("int4-weight")
def int4_weight(source: Path, target: Path, options: CompressOptions) -> dict[str, Any]:
    """4-bit weight-only quantization of MatMul weights (MatMulNBits), block-wise."""
    onnx = require("onnx", extra="compress", feature="4-bit quantization")
    require("onnx_ir", extra="compress", feature="4-bit quantization")
    nbits = require(
        "onnxruntime.quantization.matmul_nbits_quantizer",
        extra="compress",
        feature="4-bit quantization",
    )

    model = onnx.load(str(source))
    quantizer = nbits.MatMulNBitsQuantizer(model, block_size=options.block_size, is_symmetric=True)
    quantizer.process()
    quantized = quantizer.model.model
    if not any(n.op_type == "MatMulNBits" for n in quantized.graph.node):
        raise ConfigError(
            "int4-weight found no MatMul with constant weights to quantize in this graph"
        )
    onnx.save(quantized, str(target))
    return {"bits": 4, "block_size": options.block_size, "symmetric": True}


def resolve_any(name: str) -> Callable[..., dict[str, Any]]:
    """Any method by name: ONNX ones take model paths, torch ones the parent version."""
    if name in TORCH_METHOD_NAMES:
        from .torch_methods import TORCH_METHODS

        return TORCH_METHODS[name]
    return resolve(name)


def resolve(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        known = [*METHODS, *TORCH_METHOD_NAMES]
        raise ConfigError(
            f"unknown compression method {name!r}; use one of {', '.join(known)}"
        ) from None
