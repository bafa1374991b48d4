"""Tensor-level deltas: byte-exact round trips, fallbacks to the full model, hostile deltas."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecloud.errors import DeltaError, StructureChanged, UpdateError
from edgecloud.fleet import onnx_wire
from edgecloud.fleet.delta import MAGIC, apply_delta, delta_info, make_delta, sizes

from .delta_models import Weights, min_cosine, mlp, mlp_bytes, run, weights

CODECS = ("xor-zstd", "int8", "topk")
X = np.random.default_rng(7).standard_normal((16, 64)).astype(np.float32)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def changed(w: Weights, mode: str, seed: int, scale: float) -> Weights:
    """A 'fine-tune' of ``w``: every tensor, only the last layer, nothing, or raw bit flips."""
    rng = np.random.default_rng(seed)
    out = {k: v.copy() for k, v in w.items()}
    keys = {"all": list(w), "last": ["W3", "b3"], "none": []}.get(mode, [])
    for key in keys:
        if key == "order":
            out[key] = rng.permutation(10).astype(np.int64)
        else:
            step = rng.standard_normal(w[key].shape) * scale * float(np.abs(w[key]).mean())
            out[key] = (w[key].astype(np.float64) + step).astype(w[key].dtype)
    if mode == "bits":  # arbitrary bit patterns: NaN, inf, subnormals
        for key in ("W1", "W2", "order"):
            raw = out[key].view(np.uint8).reshape(-1)
            raw[rng.integers(0, raw.size, 50)] = rng.integers(0, 256, 50, dtype=np.uint8)
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(["all", "last", "none", "bits"]),
    scale=st.sampled_from([1e-4, 1e-2, 1.0]),
)
def test_lossless_delta_rebuilds_the_new_file_byte_for_byte(
    seed: int, mode: str, scale: float
) -> None:
    base = weights(seed)
    old, new = mlp_bytes(base), mlp_bytes(changed(base, mode, seed + 1, scale))
    for codec in CODECS:
        delta = make_delta(old, new, codec=codec)
        info = delta_info(delta)
        result = apply_delta(old, delta)
        assert sha(result) == info.result_sha256
        assert info.from_sha256 == sha(old) and info.from_size == len(old)
        if codec == "xor-zstd" or mode in ("last", "none"):  # lossy codecs skip small tensors
            assert result == new, codec
            assert info.to_sha256 == sha(new) and not info.lossy
    expected = {"all": 6, "last": 2, "none": 0}.get(mode)
    if expected is not None:
        assert len(delta_info(make_delta(old, new)).tensors) == expected


def test_unchanged_retrain_is_a_few_hundred_bytes() -> None:
    model = mlp_bytes(weights(1))
    delta = make_delta(model, model)
    assert len(delta) < 400 and delta_info(delta).tensors == ()
    assert apply_delta(model, delta) == model


def test_last_layer_delta_is_small_and_names_the_changed_tensors() -> None:
    base = weights(2)
    old, new = mlp_bytes(base), mlp_bytes(changed(base, "last", 3, 1e-2))
    delta = make_delta(old, new)
    assert set(delta_info(delta).tensors) == {"W3", "b3"}
    assert len(delta) < 0.15 * len(new)
    np.testing.assert_array_equal(run(apply_delta(old, delta), X), run(new, X))


@pytest.mark.parametrize("codec", ["int8", "topk"])
def test_lossy_codecs_pin_their_result_and_stay_close(codec: str) -> None:
    base = weights(4)
    old, new = mlp_bytes(base), mlp_bytes(changed(base, "all", 5, 1e-2))
    delta = make_delta(old, new, codec=codec)
    info = delta_info(delta)
    result = apply_delta(old, delta)
    assert info.lossy and info.to_sha256 is None and info.codec == codec
    assert sha(result) == info.result_sha256 != sha(new)
    assert min_cosine(run(result, X), run(new, X)) >= 0.999
    assert len(delta) < len(make_delta(old, new))
    # the publisher's result is the device's: deterministic, byte for byte
    assert make_delta(old, new, codec=codec) == delta


def torch_models(tmp_path: Path) -> list[tuple[bytes, bytes, bool, np.ndarray]]:
    """(old, new, last layer only?, input) from torch exports of a conv net (conv + linear),
    fine-tuned by one Adam step in its last layer, then in every layer (the MLPs are
    built with onnx.helper above)."""
    torch = pytest.importorskip("torch")
    from edgecloud.export import export_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 5)
    )
    x = torch.randn(2, 1, 8, 8)

    def export(tag: str) -> bytes:
        path = tmp_path / f"conv-{tag}.onnx"
        axes = {"x": {0: "batch"}, "y": {0: "batch"}}
        export_onnx(net, (x,), path, input_names=["x"], output_names=["y"], dynamic_axes=axes)
        return path.read_bytes()

    cases = []
    old = export("old")
    for tag, params in (("last", list(net.parameters())[-2:]), ("all", list(net.parameters()))):
        optimiser = torch.optim.Adam(params, lr=1e-3)
        net.train()
        loss = net(x).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        new = export(tag)
        cases.append((old, new, tag == "last", x.numpy()))
        old = new
    return cases


def test_torch_fine_tunes_round_trip_exactly(tmp_path: Path) -> None:
    for old, new, last_only, x in torch_models(tmp_path):
        delta = make_delta(old, new)
        result = apply_delta(old, delta)
        assert result == new
        np.testing.assert_array_equal(run(result, x), run(new, x))
        names = delta_info(delta).tensors
        total = len(onnx_wire.initializers(new))
        assert len(names) == (2 if last_only else total), names


# ---- structure changes: the full model must be sent ---------------------------------------


def test_renamed_initializers_fall_back_to_the_full_model() -> None:
    w = weights(5)
    with pytest.raises(StructureChanged, match="renamed.*'W1'.*'onnx::MatMul_7'"):
        make_delta(mlp_bytes(w), mlp_bytes(w, rename={"W1": "onnx::MatMul_7"}))


def test_changed_shape_falls_back_to_the_full_model() -> None:
    w, v = weights(6), weights(6)
    v["W3"], v["b3"] = v["W3"][:, :9], v["b3"][:9]
    v["order"] = np.arange(9, dtype=np.int64)
    with pytest.raises(StructureChanged, match=r"'W3' changed from .*\[128, 10\].*\[128, 9\]"):
        make_delta(mlp_bytes(w), mlp_bytes(v))


@pytest.mark.parametrize("change", [{"extra_node": True}, {"doc": "retrained on May data"}])
def test_graph_changes_outside_weights_fall_back(change: dict[str, object]) -> None:
    w = weights(7)
    with pytest.raises(StructureChanged, match="outside initializer data"):
        make_delta(mlp_bytes(w), mlp_bytes(changed(w, "all", 1, 1e-2), **change))


def test_float_data_tensors_fall_back_only_when_they_change() -> None:
    w = weights(8)
    v = changed(w, "last", 9, 1e-2)
    old = mlp_bytes(w, float_data=("b1",))
    assert apply_delta(old, make_delta(old, mlp_bytes(v, float_data=("b1",)))) == mlp_bytes(
        v, float_data=("b1",)
    )
    v["b1"] = v["b1"] + 1
    with pytest.raises(StructureChanged, match="'b1' changed but stores its values in float_data"):
        make_delta(old, mlp_bytes(v, float_data=("b1",)))


def test_external_data_falls_back(tmp_path: Path) -> None:
    w = weights(10)
    files = []
    for tag, ws in (("old", w), ("new", changed(w, "all", 2, 1e-2))):
        path = tmp_path / tag / "model.onnx"
        path.parent.mkdir()
        onnx.save_model(mlp(ws), path, save_as_external_data=True, size_threshold=0)
        files.append(path.read_bytes())
    with pytest.raises(StructureChanged, match="external data"):
        make_delta(*files)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00" * 64,
        b"not a model at all",
        b"\x3a\xff\xff\xff\xff\x0f",  # graph (field 7) claiming 4 GiB
        b"\x3a\x05\x2a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # a varint of 11 bytes
        b"\x3a\x02\x2a\x7f",  # an initializer claiming 127 bytes in a 2-byte graph
        b"\x0b\x00",  # wire type 3 (groups)
    ],
)
def test_unreadable_models_raise_structure_changed(garbage: bytes) -> None:
    good = mlp_bytes(weights(11))
    for old, new in ((garbage, good), (good, garbage)):
        with pytest.raises(StructureChanged, match="not an ONNX file"):
            make_delta(old, new)


def test_every_truncation_of_a_model_is_refused_cleanly() -> None:
    model = mlp_bytes(weights(12))
    for cut in range(0, len(model), 97):
        try:
            onnx_wire.initializers(model[:cut])
        except onnx_wire.WireError:
            continue  # a field cut in the middle
        with pytest.raises(StructureChanged):  # cut at a field boundary: another skeleton
            make_delta(model, model[:cut])


# ---- hostile or mismatched deltas -----------------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes, bytes]:
    base = weights(13)
    old, new = mlp_bytes(base), mlp_bytes(changed(base, "all", 14, 1e-2))
    return old, new, make_delta(old, new, codec="int8")


def test_delta_applied_to_the_wrong_base_names_both_digests(
    pair: tuple[bytes, bytes, bytes],
) -> None:
    old, new, delta = pair
    with pytest.raises(DeltaError) as caught:
        apply_delta(new, delta)
    assert sha(old) in caught.value.message and sha(new) in caught.value.message
    assert caught.value.expected_sha256 == sha(old)
    assert caught.value.actual_sha256 == sha(new)
    assert caught.value.status_code == 422 and isinstance(caught.value, UpdateError)


def test_every_truncation_of_a_delta_is_a_delta_error(pair: tuple[bytes, bytes, bytes]) -> None:
    old, _, delta = pair
    (size,) = struct.unpack_from("<I", delta, 8)
    for cut in [*range(0, 64), *range(64, len(delta), max(1, len(delta) // 150))]:
        with pytest.raises(DeltaError):
            apply_delta(old, delta[:cut])
        if cut < 12 + size:  # the header itself is cut
            with pytest.raises(DeltaError):
                delta_info(delta[:cut])


def test_flipped_payload_bytes_never_pass(pair: tuple[bytes, bytes, bytes]) -> None:
    old, _, delta = pair
    rng = np.random.default_rng(0)
    (size,) = struct.unpack_from("<I", delta, 8)
    for position in rng.integers(12 + size, len(delta), 40):
        broken = bytearray(delta)
        broken[position] ^= 0xFF
        with pytest.raises(DeltaError):
            apply_delta(old, bytes(broken))


def rebuild(delta: bytes, edit: object) -> bytes:
    """``delta`` with its JSON header replaced by ``edit(header)``'s return value."""
    (size,) = struct.unpack_from("<I", delta, 8)
    header = json.loads(delta[12 : 12 + size])
    text = json.dumps(edit(header)).encode()  # type: ignore[operator]
    return MAGIC + struct.pack("<I", len(text)) + text + delta[12 + size :]


def _entry(header: dict, **fields: object) -> dict:
    header["tensors"][0].update(fields)
    return header


HOSTILE_HEADERS = {
    "unknown codec": lambda h: {**h, "codec": "gzip"},
    "bad digest": lambda h: {**h, "from_sha256": "00"},
    "negative offset": lambda h: _entry(h, offset=-1),
    "offset past the payload": lambda h: _entry(h, offset=10**12),
    "huge length": lambda h: _entry(h, length=2**63),
    "float length": lambda h: _entry(h, length=1.5),
    "bool offset": lambda h: _entry(h, offset=True),
    "unknown tensor": lambda h: _entry(h, name="not-in-the-model"),
    "unknown tensor codec": lambda h: _entry(h, codec="lz4"),
    "list as codec": lambda h: _entry(h, codec=["int8"]),
    "params on xor": lambda h: _entry(h, codec="xor-zstd"),
    "int8 on an int64 tensor": lambda h: {
        **h,
        "tensors": [{**t, "codec": "int8", "name": "order"} for t in h["tensors"][:1]],
    },
    "extra field": lambda h: _entry(h, extra=1),
    "duplicate tensor": lambda h: {**h, "tensors": h["tensors"] + h["tensors"][:1]},
    "tensors not a list": lambda h: {**h, "tensors": {"W1": 1}},
    "not an object": lambda h: [h],
    "format 2": lambda h: {**h, "format": 2},
    "format 1.0": lambda h: {**h, "format": 1.0},
    "format true": lambda h: {**h, "format": True},
    "format '1'": lambda h: {**h, "format": "1"},
    "format missing": lambda h: {k: v for k, v in h.items() if k != "format"},
    "from_size true": lambda h: {**h, "from_size": True},
    "from_size float": lambda h: {**h, "from_size": float(h["from_size"])},
    "result_size bool": lambda h: {**h, "result_size": False},
    "to_sha256 a number": lambda h: {**h, "to_sha256": 1},
    "codec null": lambda h: {**h, "codec": None},
    "unknown top-level key": lambda h: {**h, "lossy": False},
    "missing key": lambda h: {k: v for k, v in h.items() if k != "result_size"},
    "params a list": lambda h: _entry(h, params=[]),
    "name a number": lambda h: _entry(h, name=1),
    "a gap before the first payload": lambda h: _entry(h, offset=1),
    "two entries on one payload": lambda h: {
        **h,
        "tensors": h["tensors"] + [{**h["tensors"][0], "name": "b1"}],
    },
    "wrong result size": lambda h: {**h, "result_size": 10**15},
    "wrong result digest": lambda h: {**h, "result_sha256": "0" * 64},
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HEADERS))
def test_hostile_headers_are_delta_errors(name: str, pair: tuple[bytes, bytes, bytes]) -> None:
    old, _, delta = pair
    with pytest.raises(DeltaError):
        apply_delta(old, rebuild(delta, HOSTILE_HEADERS[name]))


@pytest.mark.parametrize(
    "params",
    [
        {"count": 1, "peak": 1e308},
        {"count": -1, "peak": 1.0},
        {"count": 10**9, "peak": 1.0},
        {"count": 5, "peak": float("nan")},
        {"count": 5},
        {"count": "5", "peak": 1.0},
        {"count": True, "peak": 1.0},
        {"count": 5.0, "peak": 1.0},
        {"count": 5, "peak": True},
        {"count": 5, "peak": 1.0, "extra": 0},
    ],
)
def test_hostile_topk_params_are_delta_errors(params: dict[str, object]) -> None:
    base = weights(20)
    old = mlp_bytes(base)
    delta = make_delta(old, mlp_bytes(changed(base, "all", 21, 1e-2)), codec="topk")

    def edit(header: dict) -> dict:
        entry = next(t for t in header["tensors"] if t["codec"] == "topk")
        entry["params"] = {**entry["params"], **params} if "peak" in params else params
        return header

    with pytest.raises(DeltaError):
        apply_delta(old, rebuild(delta, edit))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"EDGEDLT1",
        b"XXXXXXXX\x00\x00\x00\x00",
        MAGIC + struct.pack("<I", 2**32 - 1) + b"{}",  # a 4 GiB header claimed
        MAGIC + struct.pack("<I", 200_000) + b"[" * 200_000,  # nesting bomb
        MAGIC + struct.pack("<I", 4) + b"\xff\xfe{}",  # not UTF-8
    ],
)
def test_garbage_deltas_are_delta_errors(raw: bytes, pair: tuple[bytes, bytes, bytes]) -> None:
    with pytest.raises(DeltaError):
        apply_delta(pair[0], raw)
    with pytest.raises(DeltaError):
        delta_info(raw)


def test_a_payload_claiming_a_huge_size_is_refused_before_allocating(
    pair: tuple[bytes, bytes, bytes],
) -> None:
    zstandard = pytest.importorskip("zstandard")
    old, _, delta = pair
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (64 << 20))  # 64 MiB of zeros, ~2 KB

    def swap(header: dict) -> dict:
        header["tensors"] = [{**header["tensors"][0], "offset": 0, "length": len(bomb)}]
        return header

    (size,) = struct.unpack_from("<I", delta, 8)
    text = json.dumps(swap(json.loads(delta[12 : 12 + size]))).encode()
    hostile = MAGIC + struct.pack("<I", len(text)) + text + bomb
    with pytest.raises(DeltaError, match="claims 67108864 bytes"):
        apply_delta(old, hostile)


def test_unknown_codec_is_refused_when_making() -> None:
    model = mlp_bytes(weights(15))
    with pytest.raises(UpdateError, match="unknown delta codec 'gzip'; known: 'int8', 'topk'"):
        make_delta(model, model, codec="gzip")


def test_sizes_reports_each_codec_and_the_full_model() -> None:
    w = weights(16)
    old, new = mlp_bytes(w), mlp_bytes(changed(w, "all", 17, 1e-2))
    got = sizes(old, new)
    assert got["full"] == len(new) and set(got) == {"full", *CODECS}
    assert all(isinstance(got[c], int) and 0 < got[c] < len(new) for c in CODECS)  # type: ignore[operator]
    assert sizes(old, mlp_bytes(w, extra_node=True), ["xor-zstd"]) == {
        "full": len(mlp_bytes(w, extra_node=True)),
        "xor-zstd": None,
    }


DEVICE_SCRIPT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"onnx", "torch", "google", "tuf", "httpx"}:
            raise ImportError(f"{name} is blocked on the device")
sys.meta_path.insert(0, Block())
import edgecloud.fleet.delta as delta
assert "zstandard" not in sys.modules, "zstandard imported before it is needed"
old, patch = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
sys.stdout.buffer.write(delta.apply_delta(old, patch))
"""


def test_a_device_applies_deltas_with_numpy_and_zstandard_alone(tmp_path: Path) -> None:
    import subprocess
    import sys

    w = weights(18)
    old, new = mlp_bytes(w), mlp_bytes(changed(w, "all", 19, 1e-2))
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "delta").write_bytes(make_delta(old, new))
    result = subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT, str(tmp_path / "old"), str(tmp_path / "delta")],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == new


def _with_header_text(delta: bytes, text: bytes) -> bytes:
    (size,) = struct.unpack_from("<I", delta, 8)
    return MAGIC + struct.pack("<I", len(text)) + text + delta[12 + size :]


@pytest.mark.parametrize(
    ("key", "where"),
    [("format", "top"), ("from_sha256", "top"), ("tensors", "top"), ("offset", "entry")],
)
def test_duplicate_keys_are_refused(key: str, where: str, pair: tuple[bytes, bytes, bytes]) -> None:
    """JSON keeps the last of two equal keys silently; a reader that kept the first
    would see another delta than the one signed, so a repeated key is refused."""
    old, _, delta = pair
    (size,) = struct.unpack_from("<I", delta, 8)
    header = json.loads(delta[12 : 12 + size])
    obj = header if where == "top" else header["tensors"][0]
    text = json.dumps(header)
    inner = json.dumps(obj)
    doubled = inner[:-1] + f", {json.dumps(key)}: {json.dumps(obj[key])}" + "}"
    edited = text.replace(inner, doubled, 1)
    assert edited != text and json.loads(edited) == header  # python's reader takes it
    hostile = _with_header_text(delta, edited.encode())
    for read in (lambda d: apply_delta(old, d), delta_info):
        with pytest.raises(DeltaError, match=f"key '{key}' appears twice"):
            read(hostile)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_refused(constant: str, pair: tuple[bytes, bytes, bytes]) -> None:
    _, _, delta = pair
    (size,) = struct.unpack_from("<I", delta, 8)
    header = json.loads(delta[12 : 12 + size])
    text = json.dumps(header).replace(
        f'"from_size": {header["from_size"]}', f'"from_size": {constant}'
    )
    assert constant in text
    with pytest.raises(DeltaError, match="not a JSON value"):
        delta_info(_with_header_text(delta, text.encode()))


@pytest.mark.parametrize("edit", ["trailing", "truncated"])
def test_payload_must_be_exactly_what_the_entries_claim(
    edit: str, pair: tuple[bytes, bytes, bytes]
) -> None:
    old, _, delta = pair
    hostile = delta + b"\0" if edit == "trailing" else delta[:-1]
    for read in (lambda d: apply_delta(old, d), delta_info):
        with pytest.raises(
            DeltaError, match="trailing bytes" if edit == "trailing" else "truncated"
        ):
            read(hostile)
