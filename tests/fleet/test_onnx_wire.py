"""The hand-written protobuf reader agrees with the onnx package on every initializer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgecloud.fleet import onnx_wire

from .delta_models import mlp, weights


def test_initializers_match_onnx() -> None:
    model = mlp(weights(0), float_data=("b1",))
    data = model.SerializeToString()
    found = {t.name: t for t in onnx_wire.initializers(data)}
    assert list(found) == [t.name for t in model.graph.initializer]
    for tensor in model.graph.initializer:
        got = found[tensor.name]
        assert got.dims == tuple(tensor.dims) and got.data_type == tensor.data_type
        assert got.numel == int(np.prod(tensor.dims))
        if tensor.name == "b1":
            assert got.storage == "typed" and got.raw is None
        else:
            assert got.storage == "raw_data" and got.raw is not None
            assert data[got.raw[0] : got.raw[1]] == tensor.raw_data
        assert onnx.TensorProto.FromString(data[got.span[0] : got.span[1]]) == tensor


def test_packed_dims_and_negative_dims() -> None:
    # TensorProto{dims: packed [2, 3], data_type: 1, name: "w", raw_data: 24 bytes}
    tensor = b"\x0a\x02\x02\x03\x10\x01\x42\x01w\x4a\x18" + bytes(24)
    model = b"\x3a" + bytes([len(tensor) + 2]) + b"\x2a" + bytes([len(tensor)]) + tensor
    (got,) = onnx_wire.initializers(model)
    assert (got.name, got.dims, got.data_type, got.raw[1] - got.raw[0]) == ("w", (2, 3), 1, 24)  # type: ignore[index]
    negative = b"\x08" + b"\xff" * 9 + b"\x01\x42\x01w"  # dims: -1 as a 10-byte varint
    model = b"\x3a" + bytes([len(negative) + 2]) + b"\x2a" + bytes([len(negative)]) + negative
    with pytest.raises(onnx_wire.WireError, match="negative dimension"):
        onnx_wire.initializers(model)


def test_duplicate_names_and_two_graphs_are_refused() -> None:
    tensor = b"\x42\x01w"
    init = b"\x2a" + bytes([len(tensor)]) + tensor
    graph = b"\x3a" + bytes([2 * len(init)]) + init + init
    with pytest.raises(onnx_wire.WireError, match="share a name"):
        onnx_wire.initializers(graph)
    with pytest.raises(onnx_wire.WireError, match="found 2"):
        onnx_wire.initializers(b"\x3a\x00\x3a\x00")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _model(*tensors: bytes, before: bytes = b"") -> bytes:
    return before + _ld(7, b"".join(_ld(5, t) for t in tensors))


def _tensor(
    dims: list[int], *, packed: bool = True, data: bytes = b"", name: bytes = b"w"
) -> bytes:
    if packed:
        dim_bytes = _ld(1, b"".join(_varint(d) for d in dims))
    else:
        dim_bytes = b"".join(b"\x08" + _varint(d) for d in dims)
    return dim_bytes + b"\x10\x01" + _ld(8, name) + data


def test_hostile_dim_counts_are_refused_fast() -> None:
    """20,000 dims of 2**62 made ``numel`` a quadratic big-int product (seconds):
    now more than MAX_RANK dims are refused while reading, packed or not."""
    import time

    from edgecloud.errors import StructureChanged
    from edgecloud.fleet.delta import make_delta

    for packed in (True, False):
        hostile = _model(_tensor([2**62] * 20_000, packed=packed, data=_ld(9, bytes(16))))
        started = time.perf_counter()
        with pytest.raises(onnx_wire.WireError, match="more than 64 dims"):
            onnx_wire.initializers(hostile)
        with pytest.raises(StructureChanged, match="more than 64 dims"):
            make_delta(hostile, hostile, codec="int8")
        assert time.perf_counter() - started < 0.5
    rank64 = _model(_tensor([1] * 64, data=_ld(9, bytes(4))))
    (got,) = onnx_wire.initializers(rank64)
    assert got.numel == 1 and len(got.dims) == onnx_wire.MAX_RANK
    with pytest.raises(onnx_wire.WireError, match="more than 64 dims"):
        onnx_wire.initializers(_model(_tensor([1] * 65, data=_ld(9, bytes(4)))))


@pytest.mark.parametrize(
    ("dims", "data", "match"),
    [
        ([2**62, 2**62], _ld(9, bytes(16)), "more elements than its"),  # raw_data
        ([10**6], b"\x22\x04" + bytes(4), "more elements than its"),  # float_data, packed
        ([2**62, 2**62], b"\x70\x01", "more elements than an int64"),  # data_location EXTERNAL
        ([2**62, 4], b"", "more elements than an int64"),  # no values at all
    ],
)
def test_element_counts_beyond_the_bytes_are_refused(
    dims: list[int], data: bytes, match: str
) -> None:
    with pytest.raises(onnx_wire.WireError, match=match):
        onnx_wire.initializers(_model(_tensor(dims, data=data)))


def test_counts_at_the_bounds_are_read() -> None:
    # a zero dim makes the count 0 whatever the others say; 4-bit types pack 2 per byte
    (zero,) = onnx_wire.initializers(_model(_tensor([2**62, 0, 2**62], data=_ld(9, b""))))
    assert zero.numel == 0
    (packed,) = onnx_wire.initializers(_model(_tensor([32], data=_ld(9, bytes(16)))))
    assert packed.numel == 32


def test_initializer_count_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_wire, "MAX_INITIALIZERS", 100)
    tensors = [_tensor([1], data=_ld(9, bytes(4)), name=f"w{i}".encode()) for i in range(101)]
    assert len(onnx_wire.initializers(_model(*tensors[:100]))) == 100
    with pytest.raises(onnx_wire.WireError, match="more than 100 initializers"):
        onnx_wire.initializers(_model(*tensors))


def test_many_fields_take_constant_memory() -> None:
    """A hundred thousand tiny fields before the graph are walked, not listed."""
    import tracemalloc

    noise = b"\x08\x01" * 100_000  # ir_version, repeated (listed: ~10 MB of tuples)
    model = _model(_tensor([2], data=_ld(9, bytes(8))), before=noise)
    tracemalloc.start()
    try:
        (got,) = onnx_wire.initializers(model)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.numel == 2
    assert peak < 256 << 10, peak
