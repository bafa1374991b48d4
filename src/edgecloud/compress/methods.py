"""Compression methods: one registry, one typed options model per method.

A method is a function ``(parent, target, options, progress) -> parameters``
registered with :func:`method` together with its pydantic options model, the
modules it imports and (if so) why it cannot convert graphs with control
flow. It writes ``target`` from the ``parent`` version and returns the
parameters it used (recorded in the new version's metadata). The ONNX methods
here use onnxruntime.quantization and the float16 converter (no graph is
rewritten by hand); ``prune`` and ``distill`` live in :mod:`.torch_methods`.

Options are validated by :func:`options_for`: an option the method does not
take, or a value out of range, is a ConfigError naming the option.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._optional import require
from ..errors import CompressionError, ConfigError, InvalidRequestError
from ..repository import ModelVersion
from ..samples import Samples, data_for, finite

__all__ = [
    "METHODS",
    "Fp16Options",
    "Int4WeightOptions",
    "Int8DynamicOptions",
    "Int8StaticOptions",
    "Method",
    "MethodOptions",
    "check_needs",
    "control_flow_nodes",
    "method",
    "options_for",
    "refuse_unsupported",
    "resolve",
]

Arrays = dict[str, np.ndarray[Any, Any]]
Progress = Callable[[float, str], None]
Build = Callable[[ModelVersion, Path, Any, Progress], dict[str, Any]]

CALIBRATION_BATCH = 32
"""Rows per calibration batch fed to onnxruntime's calibrator."""


class MethodOptions(BaseModel):
    """Options of a method; every method's model derives from this one (unknown names refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Int8DynamicOptions(MethodOptions):
    per_channel: bool = True
    """One weight scale per output channel (else one per tensor)."""


class Int8StaticOptions(MethodOptions):
    per_channel: bool = True
    """One weight scale per output channel (else one per tensor)."""
    calibration: Path | None = None
    """``.npz`` of inputs whose activation ranges set the scales (format:
    :mod:`edgecloud.samples`); default: the version's ``samples.npz``."""
    outlier_ratio: float = Field(default=3.0, gt=1.0, allow_inf_nan=False)
    """A layer whose input's max exceeds this × its 99.9th percentile is quantized
    dynamically instead (the 3.0 was measured on MiniLM's post-GELU MatMuls)."""


class Fp16Options(MethodOptions):
    """fp16 takes no options: weights and compute in float16, inputs and outputs float32."""


class Int4WeightOptions(MethodOptions):
    block_size: int = 32
    """Weights per quantization block of MatMulNBits (a power of two, at least 16:
    onnxruntime's kernel requirement)."""

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 16 or value & (value - 1):
            raise ValueError(f"must be a power of two, at least 16, got {value}")
        return value


@dataclass(frozen=True)
class Method:
    """A registered compression method."""

    name: str
    build: Build
    options: type[MethodOptions]
    needs: tuple[tuple[str, str], ...]
    """``(module, extra)`` it imports, checked in this process before the build
    starts in its worker (:func:`check_needs`), so a missing extra is one line
    naming it rather than a failure inside the worker."""
    refuses_control_flow: str | None = None
    """Why it cannot convert graphs with control flow (If/Loop/Scan); None: it can."""
    trains: bool = False
    """It trains on ``options.data`` (``--data``) and is evaluated on ``--val``."""


METHODS: dict[str, Method] = {}
"""Method name -> its registration: the one list of methods (filled by :func:`method`)."""


_QUANTIZE = (("onnx", "compress"), ("onnxruntime.quantization", "compress"))


def method(
    name: str,
    *,
    options: type[MethodOptions],
    needs: tuple[tuple[str, str], ...] = (),
    refuses_control_flow: str | None = None,
    trains: bool = False,
) -> Callable[[Build], Build]:
    """Register ``fn`` as method ``name`` with its options model (see :class:`Method`)."""

    def register(fn: Build) -> Build:
        METHODS[name] = Method(name, fn, options, needs, refuses_control_flow, trains)
        return fn

    return register


def resolve(name: str) -> Method:
    """The method called ``name``; ConfigError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown compression method {name!r}; use one of {', '.join(METHODS)}"
        ) from None


def options_for(
    name: str,
    values: MethodOptions | Mapping[str, Any] | None = None,
    *,
    spell: Callable[[str], str] = repr,
) -> MethodOptions:
    """``values`` validated into method ``name``'s options model.

    ``spell`` writes an option's name in messages (the CLI passes its flag
    spelling). Raises ConfigError naming the options the method does not take
    (and those it does), or the first invalid option and why.
    """
    model = resolve(name).options
    if isinstance(values, MethodOptions):
        if not isinstance(values, model):
            raise ConfigError(f"{name} takes {model.__name__}, not {type(values).__name__}")
        return values
    given = dict(values or {})
    unknown = sorted(set(given) - set(model.model_fields))
    if unknown:
        takes = ", ".join(spell(f) for f in model.model_fields) or "no options"
        raise ConfigError(
            f"{name} does not take {', '.join(spell(u) for u in unknown)} (it takes {takes})"
        )
    try:
        return model(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        got = f" (got {error['input']!r})" if "input" in error else ""
        raise ConfigError(f"{name}: option {spell(field)}: {error['msg']}{got}") from None


def check_needs(name: str) -> None:
    """Raise MissingDependencyError naming the extra if ``name`` cannot run here."""
    for module, extra in resolve(name).needs:
        require(module, extra=extra, feature=f"compression with {name}")


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
    why = resolve(name).refuses_control_flow
    if why is None:
        return
    found = control_flow_nodes(model_path)
    if found:
        others = [m for m, s in METHODS.items() if not (s.refuses_control_flow or s.trains)]
        raise CompressionError(
            f"{name} cannot compress this model: the graph has control flow "
            f"({', '.join(found[:4])}{' …' if len(found) > 4 else ''}) and {why}; "
            f"try {' or '.join(others)}; the repository is unchanged"
        )


def _quantization() -> Any:
    quantization = require("onnxruntime.quantization", extra="compress", feature="quantization")

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    return quantization


def _preprocess(parent: ModelVersion, workdir: Path) -> Path:
    """Shape inference and graph optimisation, as onnxruntime's quantizer recommends."""
    q = _quantization()
    source = parent.model_path
    target = workdir / "preprocessed.onnx"
    # onnxruntime's symbolic shape inference fails on If subgraphs (a bare AssertionError
    # on Silero VAD), and on transformer graphs (a version that carries a tokenizer):
    # ONNX shape inference is enough for both.
    transformer = (parent.path / "tokenizer.json").is_file()
    skip = transformer or bool(control_flow_nodes(source))
    q.quant_pre_process(str(source), str(target), skip_symbolic_shape=skip)
    return target


@method("int8-dynamic", options=Int8DynamicOptions, needs=_QUANTIZE)
def int8_dynamic(
    parent: ModelVersion, target: Path, options: Int8DynamicOptions, progress: Progress
) -> dict[str, Any]:
    """INT8 weights, activations quantized at run time: no calibration data needed."""
    q = _quantization()
    with tempfile.TemporaryDirectory() as tmp:
        pre = _preprocess(parent, Path(tmp))
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


def calibration_batches(parent: ModelVersion, calibration: Path | None) -> list[Arrays]:
    """Batches of :data:`CALIBRATION_BATCH` rows from ``calibration`` (``--calibration
    FILE.npz``) or else the version's samples; ConfigError naming ``--calibration``
    when there are neither, or naming the file when it does not fit the model."""
    samples: Samples = finite(
        data_for(parent, calibration, flag="--calibration"), "int8-static calibration"
    )  # NaN makes every activation range NaN
    if not parent.config.batched:
        return [samples.inputs]
    step = CALIBRATION_BATCH
    return [
        {k: v[i : i + step] for k, v in samples.inputs.items()}
        for i in range(0, samples.rows, step)
    ]


@method("int8-static", options=Int8StaticOptions, needs=_QUANTIZE)
def int8_static(
    parent: ModelVersion, target: Path, options: Int8StaticOptions, progress: Progress
) -> dict[str, Any]:
    """INT8 weights and activations in QDQ format, scales calibrated on sample inputs.

    Activations are asymmetric uint8 (onnxruntime's fast u8×s8 kernels; signed
    activations fall back to a path several times slower), weights per-channel
    int8. A layer whose input has outliers — a calibrated maximum more than
    ``outlier_ratio`` times the 99.9th percentile, as after BERT's GELU — would
    spend its 256 levels on a few values, so it is quantized dynamically
    (scales from each request's own range) instead of with fixed scales.
    """
    batches = calibration_batches(parent, options.calibration)
    q = _quantization()
    with tempfile.TemporaryDirectory() as tmp:
        pre = _name_nodes(_preprocess(parent, Path(tmp)))
        outliers = _outlier_layers(pre, batches, options.outlier_ratio)
        static = Path(tmp) / "static.onnx" if outliers else target
        q.quantize_static(
            str(pre),
            str(static),
            _Reader(batches),
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
        "calibration_batches": len(batches),
        "calibration_data": str(options.calibration or "the version's samples"),
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
    options=Fp16Options,
    needs=(("onnx", "compress"), ("onnxconverter_common.float16", "compress")),
    refuses_control_flow=(
        "onnxconverter-common's float16 converter does not convert subgraphs "
        "(with Cast kept in float32 it inserts casts forever: the ten-minute hang on Silero VAD)"
    ),
)
def fp16(
    parent: ModelVersion, target: Path, options: Fp16Options, progress: Progress
) -> dict[str, Any]:
    """Weights and compute in float16; inputs and outputs stay float32."""
    onnx = require("onnx", extra="compress", feature="fp16 conversion")
    float16 = require("onnxconverter_common.float16", extra="compress", feature="fp16 conversion")
    model = onnx.load(str(parent.model_path))
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


@method("int4-weight", options=Int4WeightOptions, needs=(*_QUANTIZE, ("onnx_ir", "compress")))
def int4_weight(
    parent: ModelVersion, target: Path, options: Int4WeightOptions, progress: Progress
) -> dict[str, Any]:
    """4-bit weight-only quantization of MatMul weights (MatMulNBits), block-wise."""
    onnx = require("onnx", extra="compress", feature="4-bit quantization")
    require("onnx_ir", extra="compress", feature="4-bit quantization")
    nbits = require(
        "onnxruntime.quantization.matmul_nbits_quantizer",
        extra="compress",
        feature="4-bit quantization",
    )

    model = onnx.load(str(parent.model_path))
    quantizer = nbits.MatMulNBitsQuantizer(model, block_size=options.block_size, is_symmetric=True)
    quantizer.process()
    quantized = quantizer.model.model
    if not any(n.op_type == "MatMulNBits" for n in quantized.graph.node):
        raise ConfigError(
            "int4-weight found no MatMul with constant weights to quantize in this graph"
        )
    onnx.save(quantized, str(target))
    return {"bits": 4, "block_size": options.block_size, "symmetric": True}
