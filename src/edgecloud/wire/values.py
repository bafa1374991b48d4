"""Tensor values off the wire: the one place that turns untrusted data into numpy.

Every front end decodes tensors through these functions — REST JSON, the
binary extension, gRPC typed and raw contents, on the server, the edge
gateway and both RemoteBackend transports — so one rule holds everywhere:
**no silent coercion**. A value that does not fit its datatype is a
:class:`~edgecloud.errors.TensorValueError` (400) naming the tensor, the
element index (row-major, flat), the datatype and the value.

The rules
---------
- Shape: a list of at most :data:`MAX_RANK` integers ``>= 0`` whose non-zero
  dimensions multiply to at most ``2**63 / 16`` (numpy's limit, even for an
  empty tensor). The element
  count is their product in Python integers (it cannot overflow) and is
  checked against the values or bytes present **before** anything is
  allocated, so a tiny request cannot make the server allocate a large array
  (Triton PR 8182 / issue 1649 fixed the same hole).
- ``BOOL``: JSON ``true`` / ``false`` (not ``0`` / ``1``, not strings); raw
  bytes ``0x00`` / ``0x01`` only.
- Integer datatypes: JSON integers only — ``1.0`` is refused, as Triton refuses
  it (rapidjson ``IsInt64``) — within the datatype's range; ``UINT64`` up to
  ``2**64 - 1``.
- ``FP16`` / ``FP32`` / ``FP64``: JSON numbers (integers allowed) and the
  literals ``NaN``, ``Infinity``, ``-Infinity`` (what Triton writes since its
  PR 3870). A finite number that rounds to infinity in the datatype
  (``1e39`` for FP32, ``65520`` for FP16, ``1e400`` for FP64) is an error, not
  ``inf``. Rounding to the nearest representable value is not an error.
- ``BYTES``: JSON strings only, encoded UTF-8; binary: 4-byte little-endian
  length then the bytes, each length checked against the bytes left; gRPC
  ``bytes_contents``. Numbers, objects and ``null`` are refused.
- Nested JSON data must nest exactly as the shape says; flat data is
  row-major.

- Integers beyond 64 bits in JSON (orjson reads them as floats:
  ``18446744073709551616`` arrives as ``1.8446744073709552e+19``) are
  reported as out of range, for values and shape dimensions alike.

Known limit: a JSON object with a key twice (``"data"`` twice, ``"inputs"``
twice) is read as orjson reads it, the last value winning. Detecting it
needs the stdlib parser's ``object_pairs_hook`` (several times slower on every
request) or a tokenizer of our own; a byte scan cannot tell keys from string
contents. The two values were both sent by the caller, so nothing is coerced:
the request means what the JSON parser of almost every server makes of it.

Encoding (responses, and RemoteBackend requests) writes non-finite floats as
the ``NaN`` / ``Infinity`` / ``-Infinity`` literals, so every float value
round-trips exactly, and refuses BYTES elements that are not ``bytes`` or
``str`` instead of stringifying them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidRequestError, TensorValueError, clip
from ..tensors import numpy_dtype

__all__ = [
    "MAX_RANK",
    "HugeNumber",
    "bytes_error",
    "cast_numbers",
    "check_bool",
    "element_count",
    "flatten",
    "from_raw",
    "from_typed",
    "from_values",
    "raw_bytes",
    "requested_outputs",
    "utf8_error",
    "utf8_items",
]

#: Most dimensions a tensor may have: numpy's ``NPY_MAXDIMS`` (64 since numpy 2).
MAX_RANK = 64
_LENGTH = struct.Struct("<I")
_INTS = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_NUMBER = frozenset({int, float})
#: numpy refuses a shape whose non-zero dimensions multiply (times the item size,
#: at most 16 bytes here) beyond its index type, even when another dimension is 0.
_MAX_SPAN = int(np.iinfo(np.intp).max) // 16


class HugeNumber:
    """A JSON number beyond the float64 range (e.g. ``1e400``), kept to be reported."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def element_count(name: str, shape: Any) -> int:
    """Elements of a tensor of ``shape``; raises InvalidRequestError for a bad shape."""
    if not isinstance(shape, list | tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidRequestError(_shape_problem(name, shape))
    if len(shape) > MAX_RANK:
        raise InvalidRequestError(
            f"tensor {clip(name)}: shape has {len(shape)} dimensions, at most {MAX_RANK} allowed"
        )
    if math.prod(d for d in shape if d) > _MAX_SPAN:
        raise InvalidRequestError(
            f"tensor {clip(name)}: shape {list(shape)} spans more elements than any array can hold"
        )
    return math.prod(shape)


def _shape_problem(name: str, shape: Any) -> str:
    if isinstance(shape, list | tuple):
        for i, d in enumerate(shape):
            if _beyond_int64(d) and d > 0:
                return (
                    f"tensor {clip(name)}: shape dimension {i} is {d:.0f} or more, too large "
                    f"(a dimension is at most {2**63 - 1}, and all of them multiply to at "
                    f"most {_MAX_SPAN})"
                )
    return f"tensor {clip(name)}: 'shape' must be a list of sizes >= 0"


def _beyond_int64(value: Any) -> bool:
    """A JSON integer orjson could not hold: it parses those beyond 64 bits as floats
    (``18446744073709551616`` -> ``1.8446744073709552e+19``)."""
    return type(value) is float and value.is_integer() and not -(2**63) < value < 2**64


def requested_outputs(
    names: Sequence[str], parameters: Sequence[Mapping[str, Any]]
) -> list[str] | None:
    """The outputs a request asks for, REST and gRPC alike; None means all.

    An empty list means all outputs, as an absent one does (gRPC cannot tell
    them apart). A name listed twice is a 400, and so is an output parameter
    other than ``binary_data`` (e.g. Triton's ``classification``, which this
    server does not implement: ignoring it would answer another question).
    """
    seen: set[str] = set()
    for name, params in zip(names, parameters, strict=True):
        if name in seen:
            raise InvalidRequestError(f"output {name!r} is requested twice; list it once")
        seen.add(name)
        unknown = sorted(set(params) - {"binary_data"})
        if unknown:
            raise InvalidRequestError(
                f"output {name!r}: parameter(s) {unknown} are not supported (only "
                "binary_data is); this server has no classification extension"
            )
    return list(names) or None


def _value_error(name: str, datatype: str, index: int, value: Any, why: str) -> TensorValueError:
    shown = repr(value.item() if isinstance(value, np.generic) else value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return TensorValueError(
        f"tensor {clip(name)}: element {index} of {datatype} data is {shown}: {why}"
    )


def bytes_error(name: str, index: int, value: Any) -> TensorValueError:
    """The error for a BYTES element that is neither bytes nor (UTF-8) text."""
    return _value_error(name, "BYTES", index, value, "BYTES elements must be bytes or strings")


# -- JSON and gRPC typed contents ---------------------------------------------------


def flatten(name: str, data: Any, shape: Sequence[int]) -> list[Any]:
    """Row-major values of JSON ``data``: flat, or nested exactly as ``shape``."""
    if type(data) is not list:
        return [data]
    if len(shape) < 2 or not data or type(data[0]) is not list:
        return data
    out: list[Any] = []
    _nested(name, data, shape, 0, out)
    return out


def _nested(name: str, data: Any, shape: Sequence[int], depth: int, out: list[Any]) -> None:
    if type(data) is not list or len(data) != shape[depth]:
        got = f"{len(data)} entries" if type(data) is list else repr(data)[:40]
        raise InvalidRequestError(
            f"tensor {clip(name)}: nested data does not match shape {list(shape)}: "
            f"dimension {depth} needs {shape[depth]} entries, got {got}"
        )
    if depth == len(shape) - 1:
        out.extend(data)
        return
    for item in data:
        _nested(name, item, shape, depth + 1, out)


def from_values(
    name: str, datatype: str, values: list[Any], shape: Sequence[int], *, text: bool
) -> np.ndarray[Any, Any]:
    """A tensor of ``shape`` from flat Python values (parsed JSON, gRPC typed contents).

    ``text``: BYTES elements arrive as ``str`` (JSON; encoded UTF-8) rather
    than ``bytes`` (gRPC ``bytes_contents``). Raises TensorValueError naming
    the first value that does not fit ``datatype``.
    """
    count = element_count(name, shape)
    if len(values) != count:
        raise InvalidRequestError(
            f"tensor {clip(name)}: {len(values)} values in data, "
            f"but shape {list(shape)} holds {count}"
        )
    return _flat_values(name, datatype, values, text).reshape(shape)


def from_typed(
    name: str, datatype: str, values: Sequence[Any], shape: Sequence[int]
) -> np.ndarray[Any, Any]:
    """A tensor of ``shape`` from a gRPC typed-contents repeated field, without copying it.

    ``values`` is the protobuf repeated field itself: its length is compared
    with the shape **before** any element is read (a 38 MiB message of 20M
    empty ``bytes_contents`` for shape ``[1]`` used to become a 20M-item list,
    +1 GB, before the count check), and numbers go straight into numpy
    (``np.fromiter`` over the field: half the time of ``np.array(field)`` and
    no intermediate list; protobuf already typed every element). Range errors
    (an ``int_contents`` of 300 for INT8) are TensorValueErrors as in
    :func:`from_values`.
    """
    count = element_count(name, shape)
    if len(values) != count:
        raise InvalidRequestError(
            f"tensor {name!r}: {len(values)} values in contents, but shape {list(shape)} "
            f"holds {count}"
        )
    if datatype == "BYTES":
        return _bytes_values(name, values, bytes).reshape(shape)
    try:
        with np.errstate(over="raise"):
            flat = np.fromiter(values, dtype=numpy_dtype(datatype), count=count)
    except (OverflowError, FloatingPointError):
        raise _first_bad(name, datatype, values) from None
    return flat.reshape(shape)


def _flat_values(name: str, datatype: str, values: list[Any], text: bool) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        return _bytes_values(name, values, str if text else bytes)
    kinds = set(map(type, values))
    if datatype in _INTS:
        if kinds <= {int}:
            try:
                return np.fromiter(values, dtype=numpy_dtype(datatype), count=len(values))
            except OverflowError:
                pass
        raise _first_bad(name, datatype, values)
    if datatype == "BOOL":
        if kinds <= {bool}:
            return np.fromiter(values, dtype=np.bool_, count=len(values))
        raise _first_bad(name, datatype, values)
    return _float_values(name, datatype, values, kinds)


def _float_values(
    name: str, datatype: str, values: list[Any], kinds: set[type]
) -> np.ndarray[Any, Any]:
    if kinds <= _NUMBER:
        try:
            return cast_numbers(values, datatype)
        except (OverflowError, FloatingPointError):
            pass
    raise _first_bad(name, datatype, values)


@np.errstate(over="raise")  # the decorator: 0.45 us a call, a ``with`` block 0.9 us
def cast_numbers(values: list[Any], datatype: str) -> np.ndarray[Any, Any]:
    """Python ints and floats as a float ``datatype``: numpy's IEEE round-to-nearest cast.

    Raises FloatingPointError where a finite value becomes infinity (``1e39``
    for FP32), OverflowError for an int beyond float64. Callers check the
    element types first: numpy would also parse ``"1.5"`` and take ``True``.
    """
    return np.fromiter(values, dtype=numpy_dtype(datatype), count=len(values))


def _first_bad(name: str, datatype: str, values: Sequence[Any]) -> TensorValueError:
    """The error for the first value of ``values`` that ``datatype`` cannot hold."""
    for index, value in enumerate(values):
        why = _why_not(datatype, value)
        if why:
            return _value_error(name, datatype, index, value, why)
    raise AssertionError("no bad value found")  # pragma: no cover - callers found one


def _why_not(datatype: str, value: Any) -> str | None:
    kind = type(value)
    if datatype == "BOOL":
        return None if kind is bool else "BOOL takes true or false only"
    if datatype in _INTS:
        info = np.iinfo(numpy_dtype(datatype))
        if _beyond_int64(value):
            return (
                f"an integer beyond 64 bits, outside the {datatype} range [{info.min}, {info.max}]"
            )
        if kind is not int:
            return f"{datatype} takes integers only"
        if not info.min <= value <= info.max:
            return f"outside the {datatype} range [{info.min}, {info.max}]"
        return None
    if kind is HugeNumber:
        return f"beyond the range of {datatype}"
    if kind not in _NUMBER:
        return f"{datatype} takes numbers, NaN, Infinity or -Infinity only"
    try:
        cast_numbers([value], datatype)
    except (OverflowError, FloatingPointError):
        return f"beyond the range of {datatype} (it would become infinity)"
    return None


def _bytes_values(name: str, values: Sequence[Any], kind: type) -> np.ndarray[Any, Any]:
    out = np.empty(len(values), dtype=object)
    if kind is bytes:
        if set(map(type, values)) <= {bytes}:
            out[:] = values
            return out
    elif set(map(type, values)) <= {str}:
        try:
            out[:] = [v.encode() for v in values]
            return out
        except UnicodeEncodeError:
            pass
    for index, value in enumerate(values):
        if type(value) is not kind:
            want = "JSON strings" if kind is str else "bytes"
            raise _value_error(name, "BYTES", index, value, f"BYTES takes {want} only")
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise utf8_error(name, index, value) from None
    raise AssertionError("no bad value found")  # pragma: no cover


# -- raw bytes (binary extension, gRPC raw contents) --------------------------------


def from_raw(
    name: str, datatype: str, raw: bytes | memoryview, shape: Sequence[int]
) -> np.ndarray[Any, Any]:
    """A tensor from raw little-endian row-major bytes; BYTES length-prefixed.

    The declared element count is checked against the bytes present before
    anything is allocated: a BYTES element takes at least 4 bytes.
    """
    count = element_count(name, shape)
    if datatype == "BYTES":
        if count > len(raw) // 4:
            raise InvalidRequestError(
                f"tensor {clip(name)}: shape {list(shape)} declares {count} BYTES elements, but "
                f"its {len(raw)} bytes of data hold at most {len(raw) // 4} (4-byte length each)"
            )
        return _bytes_elements(name, raw, count).reshape(shape)
    dtype = numpy_dtype(datatype).newbyteorder("<")
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidRequestError(
            f"tensor {clip(name)}: {len(raw)} bytes of binary data, but shape {list(shape)} of "
            f"{datatype} needs {expected}"
        )
    if datatype == "BOOL":
        _check_bool_bytes(name, raw)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _check_bool_bytes(name: str, raw: bytes | memoryview | np.ndarray[Any, Any]) -> None:
    octets = np.frombuffer(raw, dtype=np.uint8)
    bad = np.flatnonzero(octets > 1)
    if bad.size:
        index = int(bad[0])
        raise _value_error(name, "BOOL", index, int(octets[index]), "a raw BOOL is the byte 0 or 1")


def _bytes_elements(name: str, raw: bytes | memoryview, count: int) -> np.ndarray[Any, Any]:
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    end, pos = len(view), 0
    for i in range(count):
        if pos + 4 > end:
            raise InvalidRequestError(f"tensor {clip(name)}: BYTES data ends before element {i}")
        (size,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        if size > end - pos:
            raise InvalidRequestError(
                f"tensor {clip(name)}: BYTES element {i} declares {size} bytes, "
                f"only {end - pos} are left"
            )
        out[i] = bytes(view[pos : pos + size])
        pos += size
    if pos != end:
        raise InvalidRequestError(f"tensor {clip(name)}: {end - pos} stray bytes after data")
    return out


def raw_bytes(array: np.ndarray[Any, Any], name: str = "") -> bytes:
    """Raw bytes of a tensor: little-endian, row-major; BYTES length-prefixed.

    BYTES elements must be ``bytes`` or ``str`` (sent UTF-8); anything else,
    or a ``str`` that UTF-8 cannot encode (a lone surrogate), is a
    TensorValueError (see :func:`utf8_items`).
    """
    if array.dtype.kind in ("O", "U", "S"):
        parts = []
        for raw in utf8_items(name, array):
            parts.append(_LENGTH.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    if array.dtype.kind == "b":
        check_bool(name, array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def check_bool(name: str, array: np.ndarray[Any, Any]) -> None:
    """A numpy bool array's bytes are 0 or 1 (``np.frombuffer(b"\\x02", bool)`` holds 2,
    which numpy prints as True but which is not a BOOL on the wire): else TensorValueError."""
    _check_bool_bytes(name, np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def utf8_items(name: str, array: np.ndarray[Any, Any]) -> list[bytes]:
    """The elements of a BYTES tensor (numpy kind ``O``, ``U`` or ``S``) as bytes, row-major.

    ``bytes`` stay as they are, ``str`` are encoded UTF-8. Every client-side
    encoder of a caller's tensor goes through here (binary extension, gRPC,
    request fingerprints, the outbox), so one rule holds: an element that is
    neither, or a ``str`` UTF-8 cannot encode (a lone surrogate such as
    ``"\\ud800"``), is a TensorValueError (400) naming the tensor, element
    index, datatype and value — never a bare ``UnicodeEncodeError``.

    numpy's own semantics apply before this sees the data: a ``U`` or ``S``
    array drops *trailing* NULs at construction (``np.array([b"a\\x00"])``
    holds ``b"a"``); embedded NULs are kept. Send an object array to keep
    trailing NULs.
    """
    items = array.reshape(-1).tolist()
    kinds = set(map(type, items))
    if kinds <= {bytes}:
        return items
    if kinds <= {bytes, str}:
        try:
            return [x.encode() if type(x) is str else x for x in items]
        except UnicodeEncodeError:
            pass
    out = []
    for index, item in enumerate(items):
        if isinstance(item, bytes):
            out.append(bytes(item))
        elif isinstance(item, str):
            try:
                out.append(item.encode())
            except UnicodeEncodeError:
                raise utf8_error(name, index, item) from None
        else:
            raise bytes_error(name, index, item)
    return out


def utf8_error(name: str, index: int, value: Any) -> TensorValueError:
    """The error for a BYTES element that is not UTF-8 text (bytes) or not encodable (str)."""
    if isinstance(value, str):
        return _value_error(
            name, "BYTES", index, value, "not encodable as UTF-8 (a lone surrogate)"
        )
    return _value_error(
        name, "BYTES", index, value, "not UTF-8; onnxruntime string tensors hold UTF-8 text"
    )
