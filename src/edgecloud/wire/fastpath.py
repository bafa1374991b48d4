"""Shortcuts through the REST codec for the common well-formed body, each equal to the general path.

The general path (:mod:`.rest` over :mod:`.values`) decides every body and
says what is wrong with a bad one. These functions answer only where they
can show that the general path would accept the input and produce the very
same result; for anything else they return None and the caller runs the
general path, so every error — its class and its text — is still the
general path's. ``tests/wire/test_fastpath.py`` checks it with hypothesis:
random well-formed and malformed bodies through both paths give equal
results or equal exceptions.

What they take (everything else returns None):

- :func:`tensor`: one REST tensor entry with a non-empty ``name``, a
  ``datatype`` of :data:`NUMERIC`, a ``shape`` of at most ``MAX_RANK``
  dimensions all ``>= 1``, and either a flat JSON ``data`` list of exactly
  the shape's element count and no ``parameters`` (not ``null``), or no
  ``data`` and ``parameters`` of exactly ``{"binary_data_size": n}`` with
  ``n`` the shape's byte size (not BOOL: its bytes need checking).
- :func:`values`: JSON values of exactly the Python types the general path
  takes without looking further (:data:`_NUMBER` for floats, ``int`` for
  integers, ``bool`` for BOOL), cast by the same numpy conversion. numpy
  casts silently where the general path refuses — ``1.5`` into INT64,
  ``300`` into UINT8, ``True`` into FP32, ``1e39`` into FP32 as ``inf`` — so
  the types are checked first, integer ranges are left to numpy's own
  ``OverflowError`` (returning None), and an FP32 value beyond the float32
  range returns None (the general path refuses it, or rounds it down to the
  largest float32 when it lies within half a unit of it: both are its call).
- :func:`response`: a response whose parameters are empty and whose outputs
  are C-contiguous native arrays of :data:`_ENCODED` dtypes, all JSON or all
  binary. orjson writes a non-finite float of a numpy array as ``null``
  where the general path writes the ``NaN`` / ``Infinity`` literals, so a
  JSON header with ``null`` anywhere in it is left to the general path.

Costs (bench/wire_codec.py, digits-small: FP32 [1, 64] JSON in, FP32 [1, 10]
out) are in the README's design section.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..tensors import DATATYPES
from .values import MAX_RANK

try:
    import orjson
except ImportError:  # pragma: no cover - without the server extra: no encode shortcut
    orjson = None  # type: ignore[assignment]

__all__ = ["NUMERIC", "response", "tensor", "values"]

Array = np.ndarray[Any, Any]

#: Datatypes :func:`tensor` decodes: all but BYTES (strings) and FP16 (numpy's
#: float64 -> float16 cast may round twice through float32; the general path
#: rounds once).
NUMERIC: dict[str, np.dtype[Any]] = {
    name: dtype for name, dtype in DATATYPES.items() if name not in ("BYTES", "FP16")
}
_FLOATS = frozenset({"FP32", "FP64"})
_NUMBER = frozenset({float, int})
_INT = frozenset({int})
_BOOL = frozenset({bool})
_FP32_MAX = float(np.finfo(np.float32).max)
_LITTLE = sys.byteorder == "little"
#: Output dtypes :func:`response` writes (native byte order), with their datatype.
_ENCODED: dict[np.dtype[Any], str] = {
    dtype: name for name, dtype in DATATYPES.items() if name not in ("BYTES", "BOOL", "FP16")
}


def tensor(entry: Any, binary: memoryview, pos: int) -> tuple[str, Array, int] | None:
    """``(name, array, binary bytes used)`` of one tensor entry, or None (module docstring).

    ``binary`` is the body's binary part and ``pos`` the offset of this
    tensor's bytes in it. The caller still checks the name against those
    already decoded (the general path's duplicate check comes after the
    entry's header, which this shortcut has shown to be valid).
    """
    if type(entry) is not dict:
        return None
    name = entry.get("name")
    datatype = entry.get("datatype")
    shape = entry.get("shape")
    if type(name) is not str or not name or type(datatype) is not str or type(shape) is not list:
        return None
    dtype = NUMERIC.get(datatype)
    if dtype is None or len(shape) > MAX_RANK:
        return None
    count = 1
    for dim in shape:
        if type(dim) is not int or dim < 1:
            return None
        count *= dim
    params = entry.get("parameters", _MISSING)
    if params is _MISSING:
        data = entry.get("data")
        if type(data) is not list or len(data) != count:
            return None
        flat = values(data, datatype, dtype)
        return None if flat is None else (name, flat.reshape(shape), 0)
    if type(params) is not dict or len(params) != 1 or "data" in entry or datatype == "BOOL":
        return None
    size = params.get("binary_data_size")
    if type(size) is not int or size != count * dtype.itemsize or pos + size > len(binary):
        return None
    raw = np.frombuffer(binary[pos : pos + size], dtype=dtype.newbyteorder("<"))
    return name, raw.reshape(shape), size


_MISSING: Any = object()


def values(data: list[Any], datatype: str, dtype: np.dtype[Any]) -> Array | None:
    """Flat JSON ``data`` of ``datatype`` as a 1-D array, or None (module docstring)."""
    kinds = set(map(type, data))
    if datatype in _FLOATS:
        if not kinds <= _NUMBER:
            return None
        try:
            array = np.array(data, dtype=np.float64)
        except OverflowError:  # an integer beyond float64 (the stdlib parser keeps those)
            return None
        if datatype == "FP64":
            return array
        if not np.abs(array).max() <= _FP32_MAX:  # NaN compares False: None too
            return None
        return array.astype(np.float32)
    if datatype == "BOOL":
        return np.array(data, dtype=np.bool_) if kinds <= _BOOL else None
    if not kinds <= _INT:
        return None
    try:
        return np.array(data, dtype=dtype)
    except OverflowError:  # outside the datatype's range: the general path words it
        return None


def response(
    model: str,
    version: str,
    request_id: str,
    parameters: Mapping[str, Any],
    outputs: Mapping[str, Array],
    binary: bool,
) -> tuple[bytes, int | None] | None:
    """Body and header length (None when all-JSON) of a response, or None (module docstring).

    ``binary``: every output goes as a binary tensor, else every one as JSON.
    """
    if parameters or orjson is None or not _LITTLE:
        return None
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in outputs.items():
        if type(array) is not np.ndarray or not array.flags.c_contiguous:
            return None
        datatype = _ENCODED.get(array.dtype)
        if datatype is None:
            return None
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1)
        entries.append(entry)
    header = orjson.dumps(
        {
            "model_name": model,
            "model_version": version,
            "id": request_id,
            "parameters": parameters,
            "outputs": entries,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not binary and b"null" in header:
        return None
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
