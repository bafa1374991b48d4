"""Kind 4: BYTES tensors are bytes end to end, over every front end and client.

A string sent as ``"hello"`` used to reach the model as ``"b'hello'"``
(onnxruntime's binding ``repr``s a ``bytes`` element), and numbers, objects
and ``null`` were accepted as strings. Now JSON strings travel as UTF-8,
binary as a 4-byte little-endian length plus the bytes, gRPC as
``bytes_contents``; LocalBackend hands onnxruntime UTF-8 text and returns
``bytes``; anything else is a 400 naming the tensor, element and value. The
model is a string identity built in the test (``tests/models.identity_onnx``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgecloud import InferRequest, RemoteBackend
from edgecloud.errors import InvalidRequestError, TensorValueError

from ._wire_helpers import (
    ALL_FRONTS,
    CLIENT_FRONTS,
    Stack,
    client_infer,
    error_of,
    grpc_call,
    json_entry,
    post_binary,
    post_json,
    raw_request,
    roundtrip,
    stack,
    typed_request,
)

MODEL = "ident-bytes"
TEXTS = [
    b"hello",
    b"",
    "h\u00e9llo \u2603 \U0001f600".encode(),
    b"a\x00b",
    b"b'quoted'",
    b" ",
    b"0",
]


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from stack(tmp_path_factory.mktemp("bytes"))


def objects(items: list[object]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


@pytest.mark.parametrize("front", ALL_FRONTS)
def test_strings_reach_the_model_and_come_back_unchanged(wire: Stack, front: str) -> None:
    got = roundtrip(wire, front, MODEL, objects(TEXTS))
    assert got.dtype == object and got.tolist() == TEXTS


@pytest.mark.parametrize("front", CLIENT_FRONTS)
def test_clients_take_str_as_utf8(wire: Stack, front: str) -> None:
    request = InferRequest(MODEL, {"x": np.array(["hello", "h\u00e9"])})
    assert client_infer(wire, front, request).outputs["y"].tolist() == [b"hello", b"h\xc3\xa9"]


@pytest.mark.parametrize("front", ["json", "gateway-json"])
@pytest.mark.parametrize(
    ("data", "index", "shown"),
    [
        ('["ok", 1]', 1, "1"),
        ('["ok", "ok", null]', 2, "None"),
        ('[{"a": 1}]', 0, "{'a': 1}"),
        ('[["nested"]]', 0, "['nested']"),
        ("[true]", 0, "True"),
        ("[1.5]", 0, "1.5"),
        ('["\\ud800"]', 0, "'\\ud800'"),
    ],
)
def test_json_bytes_take_strings_only(
    wire: Stack, front: str, data: str, index: int, shown: str
) -> None:
    count = data.count(",") + 1
    status, error = error_of(
        post_json(wire.url(front), MODEL, [json_entry("x", "BYTES", [count], data)])
    )
    assert status == 400
    assert f"tensor 'x': element {index} of BYTES data is {shown}" in error


@pytest.mark.parametrize("front", ["binary", "gateway-binary", "grpc-raw"])
@pytest.mark.parametrize(
    ("raw", "count", "fragment"),
    [
        (struct.pack("<I", 10) + b"abc", 1, "element 0 declares 10 bytes, only 3 are left"),
        (struct.pack("<I", 2**32 - 1) + b"abc", 1, "declares 4294967295 bytes"),
        (struct.pack("<I", 1) + b"a" + b"\x00" * 3, 2, "BYTES data ends before element 1"),
        (struct.pack("<I", 1) + b"ab", 1, "1 stray bytes after data"),
        (b"\x01\x00", 1, "hold at most 0"),
    ],
)
def test_binary_lengths_are_checked(
    wire: Stack, front: str, raw: bytes, count: int, fragment: str
) -> None:
    tensors = [("x", "BYTES", [count], raw)]
    if front == "grpc-raw":
        status, error = grpc_call(wire.server.grpc_address, raw_request(MODEL, tensors))
        assert status == "INVALID_ARGUMENT"
    else:
        status, error = error_of(post_binary(wire.url(front), MODEL, tensors, True))
        assert status == 400
    assert "tensor 'x'" in error and fragment in error


def test_grpc_bytes_go_in_bytes_contents(wire: Stack) -> None:
    request = typed_request(MODEL, "x", "BYTES", [1], [7], field="int_contents")
    status, error = grpc_call(wire.server.grpc_address, request)
    assert status == "INVALID_ARGUMENT" and "contents.bytes_contents, not int_contents" in error


@pytest.mark.parametrize("front", CLIENT_FRONTS)
@pytest.mark.parametrize(("item", "shown"), [(1, "1"), (None, "None"), (2.5, "2.5"), ({}, "{}")])
def test_clients_refuse_non_strings(wire: Stack, front: str, item: object, shown: str) -> None:
    request = InferRequest(MODEL, {"x": objects([b"ok", item])})
    with pytest.raises(TensorValueError, match=f"element 1 of BYTES data is {shown}"):
        client_infer(wire, front, request)


@pytest.mark.parametrize("front", ["binary", "grpc-raw", "local"])
def test_non_utf8_bytes_are_a_clear_400_for_a_string_model(wire: Stack, front: str) -> None:
    """onnxruntime's string tensors hold UTF-8 text: other bytes cannot reach it."""
    x = objects([b"ok", b"\xff\xfe"])
    if front == "local":
        with pytest.raises(TensorValueError, match="element 1 of BYTES data is b'\\\\xff\\\\xfe'"):
            client_infer(wire, front, InferRequest(MODEL, {"x": x}))
        return
    raw = b"".join(struct.pack("<I", len(v)) + v for v in x)
    if front == "grpc-raw":
        status, error = grpc_call(
            wire.server.grpc_address, raw_request(MODEL, [("x", "BYTES", [2], raw)])
        )
        assert status == "INVALID_ARGUMENT"
    else:
        status, error = error_of(
            post_binary(wire.server.url, MODEL, [("x", "BYTES", [2], raw)], True)
        )
        assert status == 400
    assert "element 1 of BYTES data" in error and "not UTF-8" in error


def test_json_output_of_non_utf8_bytes_is_refused_not_replaced() -> None:
    from edgecloud.wire.rest import tensor_json

    with pytest.raises(InvalidRequestError, match="not UTF-8 .* binary tensor"):
        tensor_json(objects([b"\xff"]), "y")


@pytest.mark.parametrize("protocol", ["http-json", "http-binary", "grpc"])
def test_tritonclient_sends_and_reads_bytes(wire: Stack, protocol: str) -> None:
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    x = objects(TEXTS)
    if protocol == "grpc":
        client = triton_grpc.InferenceServerClient(wire.server.grpc_address)
        tensor = triton_grpc.InferInput("x", [len(TEXTS)], "BYTES")
        tensor.set_data_from_numpy(x)
        result = client.infer(MODEL, [tensor])
    else:
        binary = protocol == "http-binary"
        client = triton_http.InferenceServerClient(wire.server.http_address)
        tensor = triton_http.InferInput("x", [len(TEXTS)], "BYTES")
        tensor.set_data_from_numpy(x, binary_data=binary)
        wanted = triton_http.InferRequestedOutput("y", binary_data=binary)
        result = client.infer(MODEL, [tensor], outputs=[wanted])
    got = [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("y").tolist()]
    assert got == TEXTS


# -- every numpy string kind reaches the model exact ------------------------------------

NULS = ["a\x00b", "\x00lead", "ok", "mid\x00\x00dle"]


def string_array(kind: str, texts: list[str]) -> np.ndarray:
    if kind == "U":
        return np.array(texts)
    if kind == "S":
        return np.array([t.encode() for t in texts])
    return objects(list(texts) if kind == "O-str" else [t.encode() for t in texts])


@pytest.mark.parametrize("front", CLIENT_FRONTS)
@pytest.mark.parametrize("kind", ["U", "S", "O-str", "O-bytes"])
def test_embedded_nuls_survive_every_numpy_string_kind(wire: Stack, front: str, kind: str) -> None:
    """LocalBackend used to hand ``U`` arrays to onnxruntime, which cut each element at
    its first NUL: ``["a\\x00b", "\\x00lead", "ok"]`` came back ``[b'a', b'', b'ok']``."""
    x = string_array(kind, NULS)
    got = client_infer(wire, front, InferRequest(MODEL, {"x": x})).outputs["y"]
    assert got.tolist() == [t.encode() for t in NULS]


@pytest.mark.parametrize("front", CLIENT_FRONTS)
def test_trailing_nuls_are_numpy_semantics_object_arrays_keep_them(wire: Stack, front: str) -> None:
    """numpy's fixed-width ``U``/``S`` dtypes drop trailing NULs when the array is
    built (documented in ``wire.values.utf8_items``); an object array keeps them."""
    assert np.array([b"a\x00"]).tolist() == [b"a"] and np.array(["a\x00"]).tolist() == ["a"]
    x = objects([b"a\x00", "b\x00", b"\x00"])
    got = client_infer(wire, front, InferRequest(MODEL, {"x": x})).outputs["y"]
    assert got.tolist() == [b"a\x00", b"b\x00", b"\x00"]


# -- a str UTF-8 cannot encode is the caller's 400 on every path -------------------------

SURROGATES = ["\ud800", "\udfff", "ok\udc80"]


@pytest.mark.parametrize("front", CLIENT_FRONTS)
@pytest.mark.parametrize("kind", ["O", "U"])
@pytest.mark.parametrize("bad", SURROGATES)
def test_unencodable_str_is_a_tensor_value_error_on_every_client(
    wire: Stack, front: str, kind: str, bad: str
) -> None:
    """Before: LocalBackend answered InferenceError (500) for an object array and a 400
    quoting ``<class 'UnicodeEncodeError'>`` for a ``U`` array; RemoteBackend raised a
    bare ``UnicodeEncodeError`` (not an EdgecloudError, so a Fallback passed it on)."""
    x = objects(["ok", bad]) if kind == "O" else np.array(["ok", bad])
    with pytest.raises(TensorValueError) as info:
        client_infer(wire, front, InferRequest(MODEL, {"x": x}))
    assert info.value.status_code == 400 and info.value.fallback is None
    assert f"tensor 'x': element 1 of BYTES data is {bad!r}: not encodable as UTF-8" in str(
        info.value
    )


@pytest.mark.parametrize("encoder", ["fingerprint", "binary", "json"])
@pytest.mark.parametrize("kind", ["O", "U"])
def test_request_encoders_name_the_unencodable_element(encoder: str, kind: str) -> None:
    """The fingerprint (idempotency, outbox keys) and both REST encodings (the outbox
    stores the binary one) share the rule."""
    from edgecloud.wire.fingerprint import request_fingerprint
    from edgecloud.wire.rest import encode_request

    x = objects(["ok", "\ud800"]) if kind == "O" else np.array(["ok", "\ud800"])
    request = InferRequest(MODEL, {"x": x})
    with pytest.raises(TensorValueError, match=r"element 1 of BYTES data is '\\ud800'"):
        if encoder == "fingerprint":
            request_fingerprint(request)
        else:
            encode_request(request, binary=encoder == "binary")


def test_a_fallback_does_not_route_around_the_callers_bad_string(wire: Stack) -> None:
    from edgecloud import prefer_remote

    remote = RemoteBackend(wire.server.url)
    try:
        with pytest.raises(TensorValueError, match="element 1 of BYTES data"):
            prefer_remote(remote, wire.local).infer(
                InferRequest(MODEL, {"x": objects(["ok", "\ud800"])})
            )
    finally:
        remote.close()


@pytest.mark.parametrize("kind", ["O", "U"])
def test_the_outbox_refuses_an_unencodable_string_and_stores_nothing(
    tmp_path: Path, kind: str
) -> None:
    from edgecloud.routing.outbox import Outbox

    x = objects(["ok", "\ud800"]) if kind == "O" else np.array(["ok", "\ud800"])
    outbox = Outbox(tmp_path / "outbox.db")
    try:
        with pytest.raises(TensorValueError, match=r"element 1 of BYTES data is '\\ud800'"):
            outbox.put(InferRequest(MODEL, {"x": x}))
        assert len(outbox) == 0
    finally:
        close = getattr(outbox, "close", None)
        if close is not None:
            close()


@pytest.mark.parametrize("kind", ["U", "S", "O-str", "O-bytes"])
def test_batched_string_model_keeps_nuls_when_split_into_runs(tmp_path: Path, kind: str) -> None:
    """The batched path too: 5 rows for a model that takes 2 per run."""
    from edgecloud import LocalBackend, ModelRepository
    from edgecloud.repository import ModelConfig
    from edgecloud.tensors import TensorSpec

    from ..models import identity_onnx

    repo = ModelRepository(tmp_path / "repo")
    config = ModelConfig(
        name="sid",
        max_batch_size=2,
        inputs=[TensorSpec(name="x", datatype="BYTES", shape=())],
        outputs=[TensorSpec(name="y", datatype="BYTES", shape=())],
    )
    repo.add_version("sid", identity_onnx(tmp_path / "sid.onnx", "BYTES"), config=config)
    texts = [*NULS, "e"]
    with LocalBackend(repo) as local:
        got = local.infer(InferRequest("sid", {"x": string_array(kind, texts)})).outputs["y"]
    assert got.tolist() == [t.encode() for t in texts]
