"""A shortcut through the REST codec for the common well-formed body, equal to the general path.

The general path (:mod:`.rest` over :mod:`.values`) decides every body and
says what is wrong with a bad one. These functions answer only where they
can show that the general path would accept the input and produce the very
same result; for anything else they return None and the caller runs the
general path, so every error — its class and its text — is still the
general path's. ``tests/test_wire_fastpath.py`` checks it with hypothesis:
random well-formed and malformed bodies and responses through both paths
give equal results (arrays equal bit for bit, dtype, shape and flags; bytes
equal) or equal exceptions.

What they take (everything else returns None):

- :func:`tensor`: one REST tensor entry with a non-empty ``name``, a
  ``datatype`` of :data:`NUMERIC`, a ``shape`` of at most ``MAX_RANK``
  dimensions all ``>= 1``, and either a flat JSON ``data`` list of exactly
  the shape's element count and no ``parameters`` key (not even ``null``),
  or no ``data`` and ``parameters`` of exactly ``{"binary_data_size": n}``
  with ``n`` the shape's byte size (a zero-copy ``np.frombuffer`` view of
  the body, as the general path's; not BOOL, whose bytes need checking).
- :func:`values`: JSON values whose Python types the general path takes
  (int or float for FP32 / FP64, int for the integer types, bool for BOOL),
  cast by the same conversions. numpy casts silently where the general path
  refuses — ``1.5`` into INT64, ``300`` into UINT8, ``True`` into FP32,
  ``1e39`` into FP32 as ``inf`` — so the element types are read first
  (``sum``, then :func:`without_booleans` or a type scan for the booleans
  that ``sum`` and numpy both let through), an integer out of its
  datatype's range is numpy's ``OverflowError`` and a finite value that
  float32 rounds to infinity its ``FloatingPointError`` (both return None:
  the general path words the error).
- :func:`response`: a response whose parameters are empty and whose outputs
  are C-contiguous native arrays of :data:`_ENCODED` dtypes, all JSON or all
  binary. orjson writes a non-finite float of a numpy array as ``null``
  where the general path writes the ``NaN`` / ``Infinity`` literals, so an
  output whose JSON numbers hold an ``n`` is left to the general path.

Costs, both paths (bench/wire_codec.py), are in the README's design section.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..tensors import DATATYPES
from .values import MAX_RANK, cast_numbers

try:
    import orjson
except ImportError:  # pragma: no cover - without the server extra: no encode shortcut
    orjson = None  # type: ignore[assignment]

__all__ = ["NUMERIC", "response", "tensor", "values", "without_booleans"]

Array = np.ndarray[Any, Any]

#: Datatypes :func:`tensor` decodes: all but BYTES (strings) and FP16 (numpy's
#: float64 -> float16 cast may round twice through float32; the general path
#: rounds once).
NUMERIC: dict[str, np.dtype[Any]] = {
    name: dtype for name, dtype in DATATYPES.items() if name not in ("BYTES", "FP16")
}
#: Their little-endian forms (the binary extension's byte order), made once.
_WIRE = {name: dtype.newbyteorder("<") for name, dtype in NUMERIC.items()}
_FLOATS = frozenset({"FP32", "FP64"})
#: The largest finite value of each float datatype: a value at most this large in
#: magnitude casts to a finite one (round to nearest never rounds it up past it).
_FINITE = {"FP32": float(np.finfo(np.float32).max), "FP64": float(np.finfo(np.float64).max)}
_INT64 = np.dtype(np.int64)
_BOOL_DTYPE = np.dtype(np.bool_)
_LITTLE = sys.byteorder == "little"
#: Output dtypes :func:`response` writes (native byte order), with their datatype.
_ENCODED: dict[np.dtype[Any], str] = {
    dtype: name for name, dtype in DATATYPES.items() if name not in ("BYTES", "BOOL", "FP16")
}


def tensor(entry: Any, binary: memoryview, pos: int, plain: bool) -> tuple[str, Array, int] | None:
    """``(name, array, binary bytes used)`` of one tensor entry, or None (module docstring).

    ``binary`` is the body's binary part and ``pos`` the offset of this
    tensor's bytes in it; ``plain``: :func:`without_booleans` of the body.
    The caller still checks the name against those already decoded (the
    general path's duplicate check comes after the entry's header, which
    this shortcut has shown to be valid).
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
        flat = values(data, datatype, dtype, plain)
        return None if flat is None else (name, flat.reshape(shape), 0)
    if type(params) is not dict or len(params) != 1 or "data" in entry or datatype == "BOOL":
        return None
    size = params.get("binary_data_size")
    if type(size) is not int or size != count * dtype.itemsize or pos + size > len(binary):
        return None
    raw = np.frombuffer(binary[pos : pos + size], dtype=_WIRE[datatype])
    return name, raw.reshape(shape), size


_MISSING: Any = object()


def without_booleans(body: bytes, header_length: int | None) -> bool:
    """Whether the JSON header of ``body`` surely holds no ``true`` / ``false``.

    Every boolean a JSON parser returns comes from a ``true`` token (it has
    an ``r``) or a ``false`` token (an ``f``), so a header with neither byte
    holds none (two memchr scans; the names bench/server.py sends have neither,
    ``binary_data_output`` has an ``r``). False only means "look at the types".
    """
    end = len(body) if header_length is None else header_length
    return body.find(b"r", 0, end) < 0 and body.find(b"f", 0, end) < 0


def values(data: list[Any], datatype: str, dtype: np.dtype[Any], plain: bool) -> Array | None:
    """Flat JSON ``data`` of ``datatype`` as a 1-D array, or None (module docstring).

    ``plain``: :func:`without_booleans` said the body holds no boolean.
    ``sum(data)`` (0.3 us for 64 floats) raises TypeError for any element
    but an int, a float or a bool — a string, None, an object, a list, a
    HugeNumber — before numpy sees one (numpy would parse ``"1.5"`` into a
    float, and its type discovery would make a string array of
    ``len(data)`` times the longest string: gigabytes for a 100 kB body).
    What is left to tell apart is bool, which numpy promotes silently:
    ``plain``, or one scan of the types. Floats then convert as the general
    path's do (``np.fromiter``, IEEE round to nearest), the sum taken of the
    magnitudes (``abs``): when it is at most the datatype's largest finite
    value, no element can round to infinity, so the cast runs without numpy's
    error state (its decorator took longer than the cast; bench/request_cpu.py);
    otherwise — NaN, infinity, large values — through the general path's
    checked :func:`.values.cast_numbers`; integers through numpy's type discovery
    (``np.array(data)``: int64 only when every element is an int, the bools
    being gone).
    """
    if datatype in _FLOATS:
        try:  # as sum(data) below, and a bound on every element's magnitude
            total = sum(map(abs, data))
        except (TypeError, OverflowError):
            return None
        if not plain and bool in set(map(type, data)):
            return None
        if total <= _FINITE[datatype]:
            # no element beyond the datatype's largest finite value (nor NaN, nor
            # infinity: the total would be one): the cast cannot overflow, so it
            # needs no numpy error state (the decorator cost more than the cast)
            return np.fromiter(data, dtype=dtype, count=len(data))
        try:  # the general path's own cast
            return cast_numbers(data, datatype)
        except (OverflowError, FloatingPointError):  # beyond the datatype: the general path
            return None  # says so (an int beyond float64, a finite value become infinity)
    try:
        sum(data)
    except (TypeError, OverflowError):  # OverflowError: an int beyond float64 plus a float
        return None
    if datatype == "BOOL":
        found = np.array(data)
        return found if found.dtype == _BOOL_DTYPE else None
    if not plain and bool in set(map(type, data)):
        return None
    found = np.array(data)
    if found.ndim != 1 or found.dtype != _INT64:  # a float, or an int beyond int64
        return None
    if datatype == "INT64":
        return found
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
            data = orjson.dumps(array.reshape(-1), option=orjson.OPT_SERIALIZE_NUMPY)
            if b"n" in data:  # orjson's null for NaN / +-inf (one memchr; numbers have no n)
                return None
            entry["data"] = orjson.Fragment(data)
        entries.append(entry)
    header = orjson.dumps(
        {
            "model_name": model,
            "model_version": version,
            "id": request_id,
            "parameters": parameters,
            "outputs": entries,
        }
    )
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
