"""Kind 2: tensor decoding never coerces, on any front end.

Before: BOOL ``"false"`` became True, 2.5 for an INT64 was truncated, strings
were read as numbers, 1e39 became FP32 ``inf`` and 300 an INT8 ``44``, a
shape whose element count overflows 64 bits or had absurd rank answered 500,
and of two inputs with one name the last silently won. Now every front end
decodes through ``edgecloud.wire.values`` (the rules are in its docstring)
and answers 400 naming the tensor, the element index, the datatype and the
value. Matrix: JSON and binary bodies to the server and to ``edgecloud edge``,
gRPC typed and raw contents, LocalBackend, RemoteBackend over HTTP and gRPC.

Issue 13's second round adds the smaller silent acceptances: length headers
given twice or spelled ``1_3`` / ``+13``; integers and shape dimensions beyond
64 bits reported as "integers only" / "sizes >= 0"; an output requested twice
or with a parameter we do not implement (Triton's ``classification``) silently
served, ``outputs: []`` a 400 in onnxruntime's words; LocalBackend refusing a
big-endian array with "expects FP32, got FP32" and accepting a BOOL byte 2.
"""

from __future__ import annotations

import http.server
import json
import re
import struct
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from edgecloud import InferRequest, RemoteBackend
from edgecloud.errors import DatatypeMismatchError, InferenceError, InvalidRequestError

from ..models import identity_name
from ._wire_helpers import (
    ALL_FRONTS,
    CLIENT_FRONTS,
    DTYPE,
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

REST = ["json", "gateway-json"]
BINARY = ["binary", "gateway-binary"]


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from stack(tmp_path_factory.mktemp("decoding"))


# (datatype, JSON data, index of the bad element, how the message shows it, why)
JSON_VALUES = [
    ("BOOL", '[true, "false"]', 1, "'false'", "true or false only"),
    ("BOOL", "[true, 0]", 1, "0", "true or false only"),
    ("BOOL", "[1]", 0, "1", "true or false only"),
    ("BOOL", "[null]", 0, "None", "true or false only"),
    ("INT64", "[1, 2.5]", 1, "2.5", "integers only"),
    ("INT64", "[1.0]", 0, "1.0", "integers only"),
    ("INT64", '["3"]', 0, "'3'", "integers only"),
    ("INT64", "[true]", 0, "True", "integers only"),
    ("INT64", "[9223372036854775808]", 0, "9223372036854775808", "outside the INT64 range"),
    ("INT32", "[0, 2147483648]", 1, "2147483648", "outside the INT32 range"),
    ("INT16", "[-32769]", 0, "-32769", "outside the INT16 range"),
    ("INT8", "[127, 128]", 1, "128", "outside the INT8 range [-128, 127]"),
    ("UINT8", "[-1]", 0, "-1", "outside the UINT8 range [0, 255]"),
    ("UINT16", "[65536]", 0, "65536", "outside the UINT16 range"),
    ("UINT32", "[4294967296]", 0, "4294967296", "outside the UINT32 range"),
    ("UINT64", "[-1]", 0, "-1", "outside the UINT64 range [0, 18446744073709551615]"),
    # beyond 64 bits orjson hands over a float: the message says out of range, not "integers"
    ("UINT64", "[18446744073709551616]", 0, "1.8446744073709552e+19", "beyond 64 bits, outside"),
    ("UINT64", "[1, 1" + "0" * 30 + "]", 1, "1e+30", "beyond 64 bits, outside the UINT64"),
    ("INT64", "[-9223372036854775809]", 0, "-9.223372036854776e+18", "beyond 64 bits"),
    ("INT8", "[18446744073709551616]", 0, "1.8446744073709552e+19", "outside the INT8 range"),
    ("FP32", "[1, 1e39]", 1, "1e+39", "beyond the range of FP32"),
    ("FP32", "[-3.5e38]", 0, "-3.5e+38", "beyond the range of FP32"),
    ("FP16", "[65520]", 0, "65520", "beyond the range of FP16"),
    ("FP16", "[-1e5]", 0, "-100000.0", "beyond the range of FP16"),
    ("FP64", "[1e400]", 0, "1e400", "beyond the range of FP64"),
    ("FP32", '["1.5"]', 0, "'1.5'", "numbers, NaN, Infinity or -Infinity only"),
    ("FP32", "[false]", 0, "False", "numbers"),
    ("FP32", "[null]", 0, "None", "numbers"),
    ("FP64", "[{}]", 0, "{}", "numbers"),
    ("FP64", "[1, [2]]", 1, "[2]", "numbers"),
]


@pytest.mark.parametrize("front", REST)
@pytest.mark.parametrize(("datatype", "data", "index", "shown", "why"), JSON_VALUES)
def test_json_values_that_do_not_fit_are_400(
    wire: Stack, front: str, datatype: str, data: str, index: int, shown: str, why: str
) -> None:
    count = len(json.loads(data)) if "[2]" not in data else 2
    entry = json_entry("x", datatype, [count], data)
    status, error = error_of(post_json(wire.url(front), identity_name(datatype), [entry]))
    assert status == 400, error
    assert f"tensor 'x': element {index} of {datatype} data is {shown}: " in error
    assert why in error


# Values at the very edge of each range are values, and come back exactly.
EXTREMES = {
    "INT8": [-128, 127],
    "INT16": [-32768, 32767],
    "INT32": [-(2**31), 2**31 - 1],
    "INT64": [-(2**63), 2**63 - 1],
    "UINT8": [0, 255],
    "UINT16": [0, 65535],
    "UINT32": [0, 2**32 - 1],
    "UINT64": [0, 2**64 - 1],
    "FP16": [65504.0, -65504.0, 6e-8],
    "FP32": [3.4028235e38, -3.4028235e38, 1e-45],
    "FP64": [1.7976931348623157e308, 5e-324],
    "BOOL": [True, False],
}


@pytest.mark.parametrize("front", ALL_FRONTS)
@pytest.mark.parametrize("datatype", sorted(EXTREMES))
def test_range_extremes_round_trip_exactly(wire: Stack, front: str, datatype: str) -> None:
    if datatype == "FP16" and front == "grpc-typed":
        pytest.skip("the protocol has no typed contents for FP16 (raw only)")
    x = np.array(EXTREMES[datatype], dtype=DTYPE[datatype])
    got = roundtrip(wire, front, identity_name(datatype), x)
    assert got.dtype == x.dtype and got.tobytes() == x.tobytes()


def test_json_numbers_are_rounded_not_refused() -> None:
    """Rounding to the nearest representable value is not a coercion (65519 -> 65504)."""
    from edgecloud.wire.rest import tensor_from_json

    assert tensor_from_json([65519, 0.1], "FP16", [2], "x").tolist() == [65504.0, 0.0999755859375]


# -- gRPC typed contents ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "values", "index", "why"),
    [
        ("INT8", [1, 300], 1, "outside the INT8 range"),
        ("INT8", [-129], 0, "outside the INT8 range"),
        ("INT16", [40000], 0, "outside the INT16 range"),
        ("UINT8", [256], 0, "outside the UINT8 range"),
        ("UINT16", [70000], 0, "outside the UINT16 range"),
    ],
)
def test_grpc_typed_values_out_of_range_are_invalid(
    wire: Stack, datatype: str, values: list[int], index: int, why: str
) -> None:
    request = typed_request(identity_name(datatype), "x", datatype, [len(values)], values)
    status, error = grpc_call(wire.server.grpc_address, request)
    assert status == "INVALID_ARGUMENT"
    assert f"tensor 'x': element {index} of {datatype} data is {values[index]}: {why}" in error


@pytest.mark.parametrize(
    ("request_of", "fragment"),
    [
        (
            lambda: typed_request("ident-fp32", "x", "FP32", [2], [1.0, 2.0], "fp64_contents"),
            "FP32 values go in contents.fp32_contents, not fp64_contents",
        ),
        (
            lambda: typed_request("ident-fp32", "x", "FP32", [3], [1.0, 2.0]),
            "2 values in contents, but shape [3] holds 3",
        ),
        (
            lambda: typed_request("ident-int64", "x", "INT64", [2**62, 2**62, 4], [1]),
            "shape [4611686018427387904, 4611686018427387904, 4] spans more elements",
        ),
    ],
)
def test_grpc_typed_contents_must_match(wire: Stack, request_of: object, fragment: str) -> None:
    status, error = grpc_call(wire.server.grpc_address, request_of())  # type: ignore[operator]
    assert status == "INVALID_ARGUMENT" and fragment in error


def test_grpc_raw_and_typed_contents_together_are_invalid(wire: Stack) -> None:
    request = raw_request("ident-fp32", [("x", "FP32", [1], np.float32(1).tobytes())])
    request.inputs[0].contents.fp32_contents.append(2.0)
    status, error = grpc_call(wire.server.grpc_address, request)
    assert status == "INVALID_ARGUMENT" and "typed contents and raw contents" in error


# -- raw bytes ---------------------------------------------------------------------------


def send_raw(wire: Stack, front: str, model: str, tensors: list) -> tuple[object, str]:
    if front == "grpc-raw":
        return grpc_call(wire.server.grpc_address, raw_request(model, tensors))
    return error_of(post_binary(wire.url(front), model, tensors, True))


BAD = {"grpc-raw": "INVALID_ARGUMENT"}


@pytest.mark.parametrize("front", [*BINARY, "grpc-raw"])
def test_raw_bool_bytes_are_0_or_1(wire: Stack, front: str) -> None:
    status, error = send_raw(wire, front, "ident-bool", [("x", "BOOL", [3], b"\x01\x00\x02")])
    assert status == BAD.get(front, 400)
    assert "tensor 'x': element 2 of BOOL data is 2: a raw BOOL is the byte 0 or 1" in error


@pytest.mark.parametrize("front", [*BINARY, "grpc-raw"])
def test_raw_sizes_must_match_the_shape(wire: Stack, front: str) -> None:
    status, error = send_raw(wire, front, "ident-fp32", [("x", "FP32", [3], b"\x00" * 8)])
    assert status == BAD.get(front, 400)
    assert "tensor 'x': 8 bytes of binary data, but shape [3] of FP32 needs 12" in error


# -- shapes and names, on every wire front ---------------------------------------------

HUGE = [2**40, 2**40, 2**40]


def shaped(wire: Stack, front: str, shape: list[int], names: tuple[str, ...] = ("x",)) -> tuple:
    """Send FP32 input(s) named ``names`` with ``shape`` and one value of data."""
    one = np.float32(1).tobytes()
    if front in REST:
        entries = [json_entry(n, "FP32", shape, "[1]") for n in names]
        return error_of(post_json(wire.url(front), "ident-fp32", entries))
    if front in BINARY:
        tensors = [(n, "FP32", shape, one) for n in names]
        return error_of(post_binary(wire.url(front), "ident-fp32", tensors, True))
    if front == "grpc-raw":
        tensors = [(n, "FP32", shape, one) for n in names]
        return grpc_call(wire.server.grpc_address, raw_request("ident-fp32", tensors))
    request = typed_request("ident-fp32", names[0], "FP32", shape, [1.0])
    for name in names[1:]:
        request.inputs.add(name=name, datatype="FP32", shape=shape).contents.fp32_contents.append(1)
    return grpc_call(wire.server.grpc_address, request)


WIRE = [*REST, *BINARY, "grpc-typed", "grpc-raw"]


@pytest.mark.parametrize("front", WIRE)
def test_absurd_rank_is_400(wire: Stack, front: str) -> None:
    status, error = shaped(wire, front, [1] * 65)
    assert status in (400, "INVALID_ARGUMENT")
    assert "tensor 'x': shape has 65 dimensions, at most 64 allowed" in error


@pytest.mark.parametrize("front", WIRE)
def test_element_count_beyond_64_bits_is_400(wire: Stack, front: str) -> None:
    shape = HUGE if not front.startswith("grpc") else [2**62, 2**62, 4]
    status, error = shaped(wire, front, shape)
    assert status in (400, "INVALID_ARGUMENT"), error
    assert "tensor 'x'" in error and str(shape) in error


@pytest.mark.parametrize("front", WIRE)
def test_a_name_twice_is_400_not_last_wins(wire: Stack, front: str) -> None:
    status, error = shaped(wire, front, [1], names=("x", "x"))
    assert status in (400, "INVALID_ARGUMENT")
    assert "tensor 'x' appears twice" in error


def test_data_and_binary_data_size_together_are_400(wire: Stack) -> None:
    entry = {"name": "x", "datatype": "FP32", "shape": [1], "data": [2.0],
             "parameters": {"binary_data_size": 4}}  # fmt: skip
    header = json.dumps({"inputs": [entry]}).encode()
    response = post_binary_raw(wire.server.url, header, struct.pack("<f", 1.0))
    assert error_of(response) == (400, "tensor 'x' has both 'data' and binary_data_size; send one")


def post_binary_raw(url: str, header: bytes, tail: bytes):  # type: ignore[no-untyped-def]
    import httpx

    return httpx.post(
        f"{url}/v2/models/ident-fp32/infer",
        content=header + tail,
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=30,
    )


# -- clients ---------------------------------------------------------------------------


@pytest.mark.parametrize("front", CLIENT_FRONTS)
@pytest.mark.parametrize(
    ("model", "array", "got"),
    [
        ("ident-fp32", np.array([1.5], np.float64), "FP64"),
        ("ident-int8", np.array([300], np.int64), "INT64"),
        ("ident-bool", np.array([0], np.uint8), "UINT8"),
        ("ident-int64", np.array([2.5], np.float32), "FP32"),
    ],
)
def test_clients_never_cast_arrays(
    wire: Stack, front: str, model: str, array: np.ndarray, got: str
) -> None:
    expected = DatatypeMismatchError if front == "local" else InvalidRequestError
    with pytest.raises(
        expected, match=f"input 'x' of model '{model}' expects datatype .* got {got}"
    ):
        client_infer(wire, front, InferRequest(model, {"x": array}))


@pytest.mark.parametrize("front", CLIENT_FRONTS)
def test_clients_refuse_lists(wire: Stack, front: str) -> None:
    with pytest.raises(InvalidRequestError, match="numpy array"):
        client_infer(wire, front, InferRequest("ident-fp32", {"x": [1.0, 2.0]}))  # type: ignore[dict-item]


@pytest.mark.parametrize("front", WIRE)
def test_an_empty_tensor_of_absurd_span_is_400(wire: Stack, front: str) -> None:
    """numpy refuses such a shape even with a zero dimension (found by test_fuzz)."""
    status, error = shaped(wire, front, [0, 2**40, 2**40])
    assert status in (400, "INVALID_ARGUMENT"), error
    assert "spans more elements than any array can hold" in error


@pytest.mark.parametrize("front", REST)
@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ('"parameters": {"binary_data_output": "false"}',
         "parameter 'binary_data_output' must be true or false, got 'false'"),
        ('"outputs": [{"name": "y", "parameters": {"binary_data": 1}}]',
         "parameter 'binary_data' must be true or false, got 1"),
        ('"outputs": [{"name": "y", "parameters": [true]}]', "'parameters' must be an object"),
        ('"id": 7', "'id' must be a string, got 7"),
    ],
)  # fmt: skip
def test_request_flags_are_not_coerced_either(
    wire: Stack, front: str, extra: str, fragment: str
) -> None:
    """``bool("false")`` is True: the boolean parameters of a request take true/false only."""
    body = '{"inputs": [' + json_entry("x", "FP32", [1], "[1]") + "], " + extra + "}"
    import httpx

    response = httpx.post(
        f"{wire.url(front)}/v2/models/ident-fp32/infer", content=body.encode(), timeout=30
    )
    assert error_of(response) == (400, fragment)


# -- RemoteBackend decodes responses by the same rules -------------------------------------


class _Canned(http.server.BaseHTTPRequestHandler):
    """A v2 'server' that answers every infer with one fixed body (a real socket)."""

    body = b""

    def do_GET(self) -> None:
        self._send(b'{"name": "canned", "extensions": []}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send(self.body)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        ('{"name": "y", "datatype": "BOOL", "shape": [1], "data": ["false"]}',
         "tensor 'y': element 0 of BOOL data is 'false'"),
        ('{"name": "y", "datatype": "INT64", "shape": [2], "data": [1, 2.5]}',
         "tensor 'y': element 1 of INT64 data is 2.5"),
        ('{"name": "y", "datatype": "FP32", "shape": [1], "data": [1e39]}',
         "tensor 'y': element 0 of FP32 data is 1e+39"),
        ('{"name": "y", "datatype": "BYTES", "shape": [1], "data": [null]}',
         "tensor 'y': element 0 of BYTES data is None"),
    ],
)  # fmt: skip
def test_remote_backend_refuses_a_response_that_coerces(output: str, fragment: str) -> None:
    """A bad response is the server's fault: InferenceError (a Fallback may go elsewhere)."""
    handler = type("Handler", (_Canned,), {"body": ('{"outputs": [' + output + "]}").encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        with (
            RemoteBackend(url, binary=False) as remote,
            pytest.raises(InferenceError, match=re.escape(fragment)),
        ):
            remote.infer(InferRequest("m", {"x": np.zeros(1, np.float32)}))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- header parsing: one value, ASCII digits ---------------------------------------------


def raw_http(url: str, head: bytes, body: bytes) -> tuple[int, str]:
    """Send a hand-written request (repeated or odd headers httpx would not send)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        # one write: a server that refuses the headers (llhttp stops at a second
        # Content-Length) closes at once, and bytes arriving after that close are
        # answered with a reset that would hide its 400 from this reader
        request = b"POST /v2/models/ident-fp32/infer HTTP/1.1\r\nHost: x\r\n" + head
        sock.sendall(request + b"Connection: close\r\n\r\n" + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    payload = reply.split(b"\r\n\r\n", 1)[1]
    return status, payload.decode("latin-1")


BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})


@pytest.mark.parametrize("front", REST)
@pytest.mark.parametrize(
    "value", [b"1_3", b"+13", b"0x1", b"1e1", b"-1", b"\xd9\xa1\xd9\xa3", b"13.0", b""]
)
def test_header_length_takes_ascii_digits_only(wire: Stack, front: str, value: bytes) -> None:
    """``int()`` took ``1_3`` and `` +13`` (and Arabic-Indic digits)."""
    head = b"Content-Length: %d\r\nInference-Header-Content-Length: %s\r\n" % (
        len(BODY),
        value,
    )
    status, error = raw_http(wire.url(front), head, BODY.encode())
    assert status == 400, error
    assert "inference-header-content-length" in error.lower()


@pytest.mark.parametrize("front", REST)
@pytest.mark.parametrize("header", [b"Inference-Header-Content-Length", b"Content-Length"])
@pytest.mark.parametrize("same", [True, False])
def test_a_length_header_twice_is_400(wire: Stack, front: str, header: bytes, same: bool) -> None:
    """``dict(scope["headers"])`` kept the last of two; the body follows one of them."""
    size = len(BODY)
    values = (size, size) if same else (size, 5)
    if header == b"Content-Length":
        head = b"Content-Length: %d\r\nContent-Length: %d\r\n" % values
    else:
        head = b"Content-Length: %d\r\n" % size
        head += b"".join(b"%s: %d\r\n" % (header, v) for v in values)
    status, _ = raw_http(wire.url(front), head, BODY.encode())
    assert status == 400


@pytest.mark.parametrize("front", REST)
@pytest.mark.parametrize(("shape", "fragment"), [
    ("[18446744073709551616]", "dimension 0 is 18446744073709551616 or more, too large"),
    ("[1, 1" + "0" * 25 + "]", "dimension 1 is "),
    ("[9223372036854775807]", "spans more elements than any array can hold"),
])  # fmt: skip
def test_a_shape_beyond_64_bits_is_too_large_not_negative(
    wire: Stack, front: str, shape: str, fragment: str
) -> None:
    body = '{"inputs":[{"name":"x","datatype":"FP32","shape":' + shape + ',"data":[]}]}'
    status, error = raw_http(wire.url(front), b"Content-Length: %d\r\n" % len(body), body.encode())
    assert status == 400 and fragment in error, error
    assert ">= 0" not in error


# -- requested outputs: the same rules on REST, gRPC and LocalBackend --------------------


def rest_outputs(url: str, outputs: object) -> tuple[int, str, object]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}
    body["outputs"] = outputs
    response = httpx.post(f"{url}/v2/models/ident-fp32/infer", json=body, timeout=30)
    reply = response.json()
    return response.status_code, reply.get("error", ""), reply.get("outputs")


@pytest.mark.parametrize("front", REST)
@pytest.mark.parametrize(("outputs", "fragment"), [
    ([{"name": "y"}, {"name": "y"}], "output 'y' is requested twice"),
    ([{"name": "y", "parameters": {"classification": 2}}], "['classification'] are not supported"),
    ([{"name": "y", "parameters": {"binary_data": False, "x": 1}}], "['x'] are not supported"),
])  # fmt: skip
def test_rest_outputs_twice_or_unsupported_parameters_are_400(
    wire: Stack, front: str, outputs: object, fragment: str
) -> None:
    status, error, _ = rest_outputs(wire.url(front), outputs)
    assert status == 400 and fragment in error, error


@pytest.mark.parametrize("front", REST)
def test_rest_empty_outputs_means_all_as_in_grpc(wire: Stack, front: str) -> None:
    """Was a 400 quoting onnxruntime ("At least one output should be requested")
    labelled as a rejection of the inputs."""
    status, error, outputs = rest_outputs(wire.url(front), [])
    assert status == 200, error
    assert [o["name"] for o in outputs] == ["y"]  # type: ignore[union-attr]


@pytest.mark.parametrize("case", ["twice", "classification", "none"])
def test_grpc_outputs_follow_the_rest_rules(wire: Stack, case: str) -> None:
    request = typed_request("ident-fp32", "x", "FP32", [1], [1.0])
    if case == "twice":
        request.outputs.add(name="y")
        request.outputs.add(name="y")
    elif case == "classification":
        request.outputs.add(name="y").parameters["classification"].int64_param = 2
    status, reply = grpc_call(wire.server.grpc_address, request)
    if case == "none":
        assert status == "OK" and [o.name for o in reply.outputs] == ["y"]
    else:
        assert status == "INVALID_ARGUMENT"
        assert ("requested twice" if case == "twice" else "'classification'") in reply


@pytest.mark.parametrize("front", CLIENT_FRONTS)
def test_clients_follow_the_output_rules(wire: Stack, front: str) -> None:
    x = np.ones(1, np.float32)
    got = client_infer(wire, front, InferRequest("ident-fp32", {"x": x}, outputs=[]))
    assert list(got.outputs) == ["y"]
    with pytest.raises(InvalidRequestError, match="requested twice"):
        client_infer(wire, front, InferRequest("ident-fp32", {"x": x}, outputs=["y", "y"]))


# -- LocalBackend agrees with the wire on byte order and BOOL bytes -----------------------


@pytest.mark.parametrize("front", CLIENT_FRONTS)
@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64", "INT16", "INT32", "INT64",
                                      "UINT16", "UINT32", "UINT64"])  # fmt: skip
def test_other_byte_order_is_the_same_values(wire: Stack, front: str, datatype: str) -> None:
    """LocalBackend said "expects datatype FP32, got FP32" for ``>f4`` (and onnxruntime
    reads such a buffer as native: 1.5 became 6.9e-41); RemoteBackend sent it right."""
    native = np.array([1, 2, 3], DTYPE[datatype])
    swapped = native.astype(native.dtype.newbyteorder(">"))
    got = client_infer(wire, front, InferRequest(identity_name(datatype), {"x": swapped}))
    assert got.outputs["y"].tolist() == native.tolist()


@pytest.mark.parametrize("front", CLIENT_FRONTS)
@pytest.mark.parametrize("octet", [2, 255])
def test_a_bool_byte_other_than_0_or_1_is_refused_by_every_client(
    wire: Stack, front: str, octet: int
) -> None:
    """LocalBackend passed it to onnxruntime, RemoteBackend's JSON wrote it as true;
    the server refuses the same bytes with 400."""
    x = np.array([0, octet, 1], np.uint8).view(np.bool_)
    with pytest.raises(InvalidRequestError, match=f"element 1 of BOOL data is {octet}"):
        client_infer(wire, front, InferRequest("ident-bool", {"x": x}))
