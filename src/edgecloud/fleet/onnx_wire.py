"""Where each initializer's bytes lie in a serialized ONNX ModelProto, without ``onnx``.

A device has numpy and onnxruntime, not the ``onnx`` package, so the delta
code reads the protobuf wire format itself (protobuf encoding spec:
https://protobuf.dev/programming-guides/encoding/ — varints, wire types 0, 1,
2 and 5; groups (3, 4) are refused). Only the path to the top-level graph's
initializers is walked; everything else is skipped by its length prefix, so a
90 MB model is read in milliseconds and nothing is copied.

Field numbers come from onnx/onnx.proto (ONNX IR version 10):
``ModelProto.graph = 7``, ``GraphProto.initializer = 5``,
``TensorProto.dims = 1, data_type = 2, float_data = 4, int32_data = 5,
string_data = 6, int64_data = 7, name = 8, raw_data = 9, double_data = 10,
uint64_data = 11, external_data = 13, data_location = 14``.

Every length read from the input is checked against the bytes that remain
before anything is sliced, so a truncated file or a huge claimed length is a
:class:`WireError`, never an IndexError or an allocation. Counts read from the
input are bounded too: at most :data:`MAX_RANK` dims per tensor, an element
count no larger than the tensor's bytes can hold, at most
:data:`MAX_INITIALIZERS` initializers; fields are walked lazily, so no list
grows with the number of fields a hostile file packs in. Work is linear in the
file's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ITEMSIZE", "MAX_INITIALIZERS", "MAX_RANK", "Initializer", "WireError", "initializers"]

#: Most dims a tensor may have. ONNX sets no limit in the spec, but
#: onnxruntime's kernels and numpy cap ranks at 64 (``NPY_MAXDIMS`` since
#: numpy 2.0; 32 before): a tensor of higher rank cannot be run or loaded
#: anyway, and the cap keeps element counts small integers (a hostile 20,000
#: dims of 2**62 made ``numel`` a quadratic big-int product).
MAX_RANK = 64
#: Most initializers a graph may hold: 2**20, far above any exported model
#: (a 70B-parameter LLM has a few thousand), so a file of millions of tiny
#: tensors cannot make the reader build millions of objects.
MAX_INITIALIZERS = 1 << 20
#: Largest element count of a tensor: ONNX shapes are int64.
MAX_NUMEL = (1 << 63) - 1

#: Bytes per element of each fixed-size TensorProto.DataType (onnx.proto
#: ``TensorProto.DataType``): 1 FLOAT, 2 UINT8, 3 INT8, 4 UINT16, 5 INT16,
#: 6 INT32, 7 INT64, 9 BOOL, 10 FLOAT16, 11 DOUBLE, 12 UINT32, 13 UINT64,
#: 16 BFLOAT16, 17-20 FLOAT8 variants. STRING (8), complex and 4-bit types
#: are absent: their raw_data is not one element per fixed byte count.
ITEMSIZE: dict[int, int] = {
    1: 4,
    2: 1,
    3: 1,
    4: 2,
    5: 2,
    6: 4,
    7: 8,
    9: 1,
    10: 2,
    11: 8,
    12: 4,
    13: 8,
    16: 2,
    17: 1,
    18: 1,
    19: 1,
    20: 1,
}

_GRAPH = 7
_INITIALIZER = 5
_DIMS, _DATA_TYPE, _NAME, _RAW_DATA, _DATA_LOCATION = 1, 2, 8, 9, 14
#: Typed-value fields (float_data, int32_data, string_data, int64_data,
#: double_data, uint64_data): values stored outside raw_data.
_TYPED_DATA = frozenset({4, 5, 6, 7, 10, 11})
_EXTERNAL_DATA = 13


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message where one is expected."""


@dataclass(frozen=True, slots=True)
class Initializer:
    """One ``graph.initializer`` TensorProto of a serialized model.

    ``span`` is the (start, end) byte range of the whole TensorProto message
    in the file; ``raw`` the (start, end) of its ``raw_data`` bytes, or None
    when the values are stored elsewhere (``storage`` says where:
    ``"raw_data"``, ``"typed"`` for float_data/int64_data/..., ``"external"``
    for external data, ``"empty"`` when the tensor has no values).
    """

    name: str
    data_type: int
    dims: tuple[int, ...]
    span: tuple[int, int]
    raw: tuple[int, int] | None
    storage: str

    @property
    def numel(self) -> int:
        """Number of elements: the product of ``dims`` (1 for a scalar).

        Cheap: the reader refuses more than :data:`MAX_RANK` dims and any
        count above what the tensor's bytes can hold (:func:`_numel`).
        """
        return _numel(self.dims, MAX_NUMEL)


def _numel(dims: tuple[int, ...] | list[int], limit: int) -> int:
    """The product of ``dims``, or ``limit + 1`` as soon as a partial product exceeds ``limit``.

    A zero anywhere makes the product 0 whatever comes before it, so the
    zeros are looked for first; then the running product stays <= ``limit``
    times one dim, never a huge integer.
    """
    if 0 in dims:
        return 0
    count = 1
    for dim in dims:
        count *= dim
        if count > limit:
            return limit + 1
    return count


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it (at most 10 bytes, 64 bits)."""
    value = shift = 0
    while True:
        if pos >= end:
            raise WireError(f"varint runs past the end of its message at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >> 64:
                raise WireError(f"varint longer than 64 bits ending at byte {pos}")
            return value, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def _fields(data: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """The fields of the message in ``data[start:end]``: (number, wire type, value, pos).

    For wire type 2 ``value`` is the payload's start and ``pos`` its end; for
    the others ``value`` is the number (varint) or the payload's start (fixed
    64/32 bits) and ``pos`` the position after the field. A generator: memory
    stays constant however many fields the message packs in.
    """
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(data, pos, end)
            yield number, wire, value, pos
            continue
        if wire == 2:
            length, pos = _varint(data, pos, end)
            if length > end - pos:
                raise WireError(
                    f"field {number} claims {length} bytes at byte {pos}; only {end - pos} remain"
                )
            yield number, wire, pos, pos + length
            pos += length
            continue
        size = {1: 8, 5: 4}.get(wire)
        if size is None:
            raise WireError(f"unsupported wire type {wire} (field {number}) at byte {pos}")
        if size > end - pos:
            raise WireError(f"fixed-size field {number} runs past the end at byte {pos}")
        yield number, wire, pos, pos + size
        pos += size


def _packed_varints(data: memoryview, start: int, end: int) -> Iterator[int]:
    pos = start
    while pos < end:
        value, pos = _varint(data, pos, end)
        yield value


def _signed(value: int) -> int:
    """int64 two's complement of a 64-bit varint."""
    return value - (1 << 64) if value >> 63 else value


def _tensor(data: memoryview, start: int, end: int) -> Initializer:
    """Read one TensorProto at ``data[start:end]``."""
    name: str | None = None
    data_type = 0
    dims: list[int] = []
    raw: tuple[int, int] | None = None
    storage = "empty"
    for number, wire, value, pos in _fields(data, start, end):
        if number == _DIMS and wire in (0, 2):
            for dim in [value] if wire == 0 else _packed_varints(data, value, pos):
                if len(dims) == MAX_RANK:
                    raise WireError(f"initializer at byte {start} has more than {MAX_RANK} dims")
                dims.append(_signed(dim))
        elif number == _DATA_TYPE and wire == 0:
            data_type = value
        elif number == _NAME and wire == 2:
            try:
                name = bytes(data[value:pos]).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise WireError(f"initializer name at byte {value} is not UTF-8") from exc
        elif number == _RAW_DATA and wire == 2:
            if raw is not None:
                raise WireError(f"initializer at byte {start} has raw_data twice")
            raw, storage = (value, pos), "raw_data"
        elif number in _TYPED_DATA:
            storage = "typed"
        elif number == _EXTERNAL_DATA or (number == _DATA_LOCATION and wire == 0 and value == 1):
            storage = "external"
    if name is None:
        raise WireError(f"initializer at byte {start} has no name")
    if any(d < 0 for d in dims):
        raise WireError(f"initializer {name!r} has a negative dimension {dims}")
    if storage != "raw_data":
        raw = None
    # Values in the file take at least half a byte each (4-bit types pack two
    # per byte, raw or in int32_data); external values are elsewhere: int64.
    limit = MAX_NUMEL if storage in ("external", "empty") else 2 * (end - start)
    if _numel(dims, limit) > limit:
        where = "an int64 count" if limit == MAX_NUMEL else f"its {end - start} bytes"
        raise WireError(f"initializer {name!r} has dims {_shown(dims)}: more elements than {where}")
    return Initializer(name, data_type, tuple(dims), (start, end), raw, storage)


def _shown(dims: list[int]) -> str:
    """``dims`` for a message, the long ones cut (a dim can be a 19-digit number)."""
    text = str(dims)
    return text if len(text) <= 80 else text[:76] + "...]"


def initializers(model: bytes | memoryview) -> list[Initializer]:
    """The top-level graph's initializers of a serialized ONNX model, in file order.

    Raises:
        WireError: the bytes are not a ModelProto with one graph (truncated,
            garbage, a length that runs past the end, a duplicate name), or
            a count is out of bounds (more than :data:`MAX_RANK` dims, more
            elements than the tensor's bytes hold, more than
            :data:`MAX_INITIALIZERS` initializers).
    """
    data = memoryview(model)
    graph: tuple[int, int, int, int] | None = None
    count = 0
    for field in _fields(data, 0, len(data)):
        if field[0] == _GRAPH:
            graph, count = graph or field, count + 1
    if graph is None or count != 1 or graph[1] != 2:
        raise WireError(f"expected one graph field in the ModelProto, found {count}")
    _, _, start, end = graph
    found: list[Initializer] = []
    for number, wire, value, pos in _fields(data, start, end):
        if number == _INITIALIZER and wire == 2:
            if len(found) == MAX_INITIALIZERS:
                raise WireError(f"the graph has more than {MAX_INITIALIZERS} initializers")
            found.append(_tensor(data, value, pos))
    names = [t.name for t in found]
    if len(set(names)) != len(names):
        raise WireError("two initializers share a name")
    return found
