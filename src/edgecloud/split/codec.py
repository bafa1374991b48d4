"""Activation compression on the wire between head and tail.

The head's float32 activations are encoded on the device with numpy; the
decoder is part of the tail *model* (a few ONNX nodes prepended to its graph),
so any Open Inference Protocol server hosts the tail unchanged.

- ``fp32``: sent as is.
- ``fp16``: half precision, 2× smaller; the tail starts with ``Cast``.
- ``int8``: per-sample affine quantisation to uint8 with a float scale and
  offset per sample (``x ≈ q × scale + offset``), 4× smaller; the tail starts
  with ``Cast → Mul → Add``. ReLU activations lose almost nothing.

Tensors that are not float32 (token masks, shape tensors, the uint8 data of a
quantized model) and float32 scalars (rank 0: a dynamic-quantization scale, a
loop bound; a few bytes whose every bit matters) always pass through unchanged.
The rule is one function, :func:`encoded`, read by the encoder (from the
array) and the decoder (from the tail's declared input), so both sides agree.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np

from .._optional import require
from ..errors import ConfigError, InvalidRequestError

__all__ = ["CODECS", "Codec", "add_decoder", "check_codec", "encode", "encoded", "wire_bytes"]

Codec = Literal["fp32", "fp16", "int8"]
CODECS: tuple[str, ...] = get_args(Codec)

Arrays = dict[str, np.ndarray[Any, Any]]

SCALE, OFFSET = "__scale", "__offset"
_BYTES_PER_FLOAT = {"fp32": 4, "fp16": 2, "int8": 1}


def check_codec(codec: str) -> Codec:
    if codec not in CODECS:
        raise ConfigError(f"unknown activation codec {codec!r}; use one of {', '.join(CODECS)}")
    return codec  # type: ignore[return-value]


def encoded(elem_float32: bool, rank: int | None) -> bool:
    """Whether a tensor is encoded by the codec: float32 of rank at least 1.

    ``rank`` None (unknown) is treated as encoded; :func:`add_decoder` refuses it.
    """
    return elem_float32 and (rank is None or rank > 0)


def _per_sample(array: np.ndarray[Any, Any]) -> tuple[int, ...]:
    """Shape of a per-sample statistic that broadcasts against ``array``."""
    if array.ndim == 0:
        raise InvalidRequestError("an int8 activation needs a batch dimension")
    return (array.shape[0],) + (1,) * (array.ndim - 1)


def encode(codec: Codec, arrays: Arrays) -> Arrays:
    """The tensors to send for ``arrays`` under ``codec``."""
    if codec == "fp32":
        return dict(arrays)
    out: Arrays = {}
    for name, array in arrays.items():
        if not encoded(array.dtype == np.float32, array.ndim):
            out[name] = array
        elif codec == "fp16":
            with np.errstate(over="ignore"):  # beyond ±65504: inf, which the checks refuse
                out[name] = array.astype(np.float16)
        else:
            flat = array.reshape(array.shape[0], -1)
            low = flat.min(axis=1).reshape(_per_sample(array))
            high = flat.max(axis=1).reshape(_per_sample(array))
            scale = np.where(high > low, (high - low) / 255.0, 1.0).astype(np.float32)
            out[name] = np.clip(np.rint((array - low) / scale), 0, 255).astype(np.uint8)
            out[name + SCALE] = scale
            out[name + OFFSET] = low.astype(np.float32)
    return out


def wire_bytes(codec: Codec, arrays: Arrays) -> int:
    """Bytes ``encode(codec, arrays)`` puts on the wire (computed without encoding)."""
    total = 0
    for array in arrays.values():
        if encoded(array.dtype == np.float32, array.ndim):
            total += array.size * _BYTES_PER_FLOAT[codec]
            if codec == "int8":
                total += 2 * 4 * array.shape[0]
        else:
            total += int(array.nbytes)
    return total


def add_decoder(tail: Any, codec: Codec) -> Any:
    """``tail`` (an ONNX ModelProto) taking ``codec``-encoded float inputs instead of float32.

    Inputs that :func:`encoded` says pass through are left as they are. Raises
    ConfigError for a float32 input of unknown rank (nothing to decode it with).
    """
    if codec == "fp32":
        return tail
    onnx = require("onnx", extra="compress", feature="activation compression")
    helper, proto = onnx.helper, onnx.TensorProto
    graph = tail.graph
    nodes, new_inputs = [], []
    for info in graph.input:
        tensor = info.type.tensor_type
        rank = len(tensor.shape.dim) if tensor.HasField("shape") else None
        if not encoded(tensor.elem_type == proto.FLOAT, rank):
            new_inputs.append(info)
            continue
        if rank is None:
            raise ConfigError(
                f"the tail input {info.name!r} has no known rank, so {codec} activations "
                "cannot be decoded; use --codec fp32 or another cut"
            )
        name, decoded = info.name, info.name + "__decoded"
        dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        wire_type = proto.FLOAT16 if codec == "fp16" else proto.UINT8
        new_inputs.append(helper.make_tensor_value_info(name, wire_type, dims))
        for node in graph.node:
            node.input[:] = [decoded if i == name else i for i in node.input]
        if codec == "fp16":
            nodes.append(helper.make_node("Cast", [name], [decoded], to=proto.FLOAT))
            continue
        stat = [dims[0], *([1] * (len(dims) - 1))]
        new_inputs += [
            helper.make_tensor_value_info(name + SCALE, proto.FLOAT, stat),
            helper.make_tensor_value_info(name + OFFSET, proto.FLOAT, stat),
        ]
        nodes += [
            helper.make_node("Cast", [name], [name + "__float"], to=proto.FLOAT),
            helper.make_node("Mul", [name + "__float", name + SCALE], [name + "__scaled"]),
            helper.make_node("Add", [name + "__scaled", name + OFFSET], [decoded]),
        ]
    originals = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *originals])
    del graph.input[:]
    graph.input.extend(new_inputs)
    return tail
