"""Open Inference Protocol gRPC messages <-> numpy, shared by the server and the client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidRequestError
from .rest import tensor_from_bytes, tensor_from_json

__all__ = ["CONTENTS_FIELD", "get_parameter", "read_tensors", "set_parameter"]

#: Typed ``InferTensorContents`` field for each datatype (FP16 travels raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def get_parameter(value: Any) -> Any:
    """The Python value of an ``InferParameter``."""
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def set_parameter(target: Any, value: Any) -> None:
    """Fill an ``InferParameter`` from a Python bool, int, float or string."""
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def read_tensors(tensors: Any, raw: Any) -> dict[str, np.ndarray[Any, Any]]:
    """Tensors of a request or response, from ``raw_*_contents`` or typed contents."""
    if raw and len(raw) != len(tensors):
        raise InvalidRequestError(f"{len(raw)} raw contents for {len(tensors)} tensors")
    out = {}
    for i, tensor in enumerate(tensors):
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidRequestError(f"tensor {tensor.name!r}: shape {shape} has negative sizes")
        if raw:
            out[tensor.name] = tensor_from_bytes(raw[i], tensor.datatype, shape, tensor.name)
            continue
        field = CONTENTS_FIELD.get(tensor.datatype)
        if field is None:
            raise InvalidRequestError(
                f"tensor {tensor.name!r}: {tensor.datatype} must be sent as raw contents"
            )
        values = list(getattr(tensor.contents, field))
        out[tensor.name] = tensor_from_json(values, tensor.datatype, shape, tensor.name)
    return out


def parameters(message_parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {k: get_parameter(v) for k, v in message_parameters.items()}
