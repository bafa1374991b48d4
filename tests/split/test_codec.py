"""Activation codecs: what goes on the wire, and a tail that decodes it back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecloud import ConfigError
from edgecloud.split import extract, find_cut
from edgecloud.split.codec import add_decoder, check_codec, encode, wire_bytes

from .test_partition import branched_onnx

RNG = np.random.default_rng(3)


def test_encodings_are_smaller_and_pass_other_dtypes_through() -> None:
    arrays = {"act": RNG.standard_normal((2, 64, 7)).astype(np.float32),
              "mask": np.ones((2, 7), np.int64)}  # fmt: skip
    assert encode("fp32", arrays)["act"] is arrays["act"]
    half = encode("fp16", arrays)
    assert half["act"].dtype == np.float16 and half["mask"] is arrays["mask"]
    packed = encode("int8", arrays)
    assert packed["act"].dtype == np.uint8 and packed["act__scale"].shape == (2, 1, 1)
    for codec in ("fp32", "fp16", "int8"):
        sent = sum(a.nbytes for a in encode(codec, arrays).values())  # type: ignore[arg-type]
        assert wire_bytes(codec, arrays) == sent  # type: ignore[arg-type]
    decoded = packed["act"] * packed["act__scale"] + packed["act__offset"]
    spread = arrays["act"].max(axis=(1, 2)) - arrays["act"].min(axis=(1, 2))
    assert np.abs(decoded - arrays["act"]).max() <= spread.max() / 255 / 2 + 1e-6


def test_a_constant_activation_survives_int8() -> None:
    flat = {"act": np.full((3, 5), 2.5, np.float32)}
    packed = encode("int8", flat)
    np.testing.assert_allclose(packed["act"] * packed["act__scale"] + packed["act__offset"], 2.5)


@pytest.mark.parametrize("codec,tolerance", [("fp16", 5e-3), ("int8", 0.05)])
def test_the_tail_decodes_what_the_head_encoded(
    tmp_path: Path, codec: str, tolerance: float
) -> None:
    path = branched_onnx(tmp_path / "m.onnx")
    head_path, tail_path = extract(path, find_cut(path, "cut3"), tmp_path)
    onnx.save(add_decoder(onnx.load(str(tail_path)), codec), str(tmp_path / "tail.onnx"))  # type: ignore[arg-type]
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    full = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    (s,) = ort.InferenceSession(str(head_path)).run(None, {"x": x})
    tail = ort.InferenceSession(str(tmp_path / "tail.onnx"))
    feed = encode(codec, {"s": s})  # type: ignore[arg-type]
    assert {i.name for i in tail.get_inputs()} == set(feed)
    got = tail.run(None, feed)[0]
    assert np.abs(got - full).max() <= tolerance * np.abs(full).max()
    assert not np.array_equal(got, full)  # it really went through the lossy codec


def test_unknown_codec_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown activation codec 'int4'; use one of fp32"):
        check_codec("int4")


def _scalar_and_index_onnx(path: Path) -> Path:
    """x: FP32 [batch, 8] -> y = x / max(x) + argmax(x): a rank-0 float (the max) and an
    int64 tensor (the argmax) cross every cut after them, beside the raw input."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMax", ["x"], ["s"], keepdims=0),
        helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=1),
        helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x", "s"], ["d"]),
        helper.make_node("Add", ["d", "f"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "scalar",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
def test_scalars_and_integers_crossing_a_cut_pass_through_every_codec(
    codec: str, tmp_path: Path
) -> None:
    """Before: int8 on a rank-0 tensor was IndexError in add_decoder (``dims[0]``)."""
    from edgecloud import ModelRepository
    from edgecloud.repository import config_from_onnx
    from edgecloud.split import cut_points, write_split
    from edgecloud.split.artifacts import fidelity

    path = _scalar_and_index_onnx(tmp_path / "scalar.onnx")
    repo = ModelRepository(tmp_path / "repo")
    repo.add_version("scalar", path, config=config_from_onnx(path, "scalar", max_batch_size=8))
    parent = repo.get("scalar")
    x = {"x": RNG.random((4, 8)).astype(np.float32) + 0.5}
    crossing = [cut for cut in cut_points(path) if "s" in cut.tensors]
    assert crossing and any("i" in cut.tensors for cut in crossing)
    for cut in crossing:
        pair = write_split(repo, parent, cut, codec, x)
        assert fidelity(parent, pair, x) >= 0.99
        sent = encode(codec, {"s": np.float32(2.0), "i": np.ones((4, 1), np.int64)})  # type: ignore[arg-type]
        assert sent["s"].dtype == np.float32 and sent["i"].dtype == np.int64
        assert set(sent) == {"s", "i"}
        wire = wire_bytes(codec, {"s": np.zeros((), np.float32)})  # type: ignore[arg-type]
        assert wire == 4
