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
