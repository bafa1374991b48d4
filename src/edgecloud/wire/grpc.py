"""Open Inference Protocol gRPC messages <-> numpy, shared by the server and the client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidRequestError, clip
from ..tensors import DATATYPES
from .values import element_count, from_raw, from_typed, requested_outputs

__all__ = ["CONTENTS_FIELD", "get_parameter", "output_names", "read_tensors", "set_parameter"]

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
_FIELDS = frozenset(CONTENTS_FIELD.values())


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
    """Tensors of a request or response, from ``raw_*_contents`` or typed contents.

    The rules are :mod:`.values`' (one validation path for every front end):
    typed contents must hold exactly the declared number of values, each
    fitting the datatype (an INT8 tensor's ``int_contents`` of 300 is an
    error, not a wrapped byte); raw contents are checked against the shape
    before anything is allocated. A message mixing raw and typed contents, or
    naming a tensor twice, is refused.
    """
    if raw and len(raw) != len(tensors):
        raise InvalidRequestError(f"{len(raw)} raw contents for {len(tensors)} tensors")
    out = {}
    for i, tensor in enumerate(tensors):
        name, datatype = tensor.name, tensor.datatype
        if name in out:
            raise InvalidRequestError(f"tensor {clip(name)} appears twice")
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidRequestError(f"tensor {clip(name)}: shape {shape} has negative sizes")
        element_count(name, shape)
        if datatype not in DATATYPES:
            raise InvalidRequestError(
                f"tensor {clip(name)}: unknown datatype {clip(datatype)}; "
                f"use one of {', '.join(DATATYPES)}"
            )
        if raw:
            if tensor.HasField("contents"):
                raise InvalidRequestError(
                    f"tensor {clip(name)} has typed contents and raw contents; send one"
                )
            out[name] = from_raw(name, datatype, raw[i], shape)
        else:
            out[name] = _typed(tensor, shape)
    return out


def _typed(tensor: Any, shape: list[int]) -> np.ndarray[Any, Any]:
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidRequestError(f"tensor {clip(name)}: {datatype} must be sent as raw contents")
    for other in _FIELDS - {field}:
        if len(getattr(tensor.contents, other)):
            raise InvalidRequestError(
                f"tensor {clip(name)}: {datatype} values go in contents.{field}, not {other}"
            )
    return from_typed(name, datatype, getattr(tensor.contents, field), shape)


def parameters(message_parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {k: get_parameter(v) for k, v in message_parameters.items()}


def output_names(outputs: Any) -> list[str] | None:
    """The names of a ModelInferRequest's requested outputs; None (all) when it lists none.

    Same rules as REST (:func:`.values.requested_outputs`): a name twice, or an
    output parameter other than ``binary_data``, is refused.
    """
    return requested_outputs([o.name for o in outputs], [dict(o.parameters) for o in outputs])
