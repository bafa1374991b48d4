"""Hypothesis throws malformed bodies, shapes, dtypes, headers and lengths at a live server.

The contract: every answer is a 2xx or a 4xx with an ``error`` message — never
a 5xx, never a dropped connection — and the server's memory stays flat. Valid
tensors of every datatype (NaN, ±Inf and range extremes included) get exactly
LocalBackend's answer over JSON, binary, gRPC typed and raw, and the gateway.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecloud import InferRequest

from ..adversarial._wire_helpers import (
    DTYPE,
    TYPED_FIELD,
    Stack,
    grpc_call,
    json_entry,
    post_json,
    raw_request,
    roundtrip,
    stack,
    typed_request,
)
from ..models import identity_name
from .conftest import Server

pytestmark = pytest.mark.slow

DATATYPES = ["FP32", "FP64", "INT64", "BYTES", "BOOL", "UINT8", "FP16", "FLOAT", "", "fp32"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)
tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "y", "a", "", "x" * 50]),
        "datatype": st.sampled_from(DATATYPES),
        "shape": st.lists(st.integers(-2, 6), max_size=4) | json_values,
    },
    optional={
        "data": st.lists(st.floats(allow_nan=False, width=32) | st.integers(-5, 5), max_size=30)
        | json_values,
        "parameters": st.fixed_dictionaries(
            {"binary_data_size": st.integers(-4, 64) | json_values}
        ),
    },
)
bodies = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=3) | json_values},
    optional={
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["y", "z", ""]) | st.text(max_size=3)},
                optional={
                    "parameters": st.dictionaries(
                        st.sampled_from(["binary_data", "classification", "x"]),
                        json_values,
                        max_size=2,
                    )
                },
            ),
            max_size=3,
        ),
        "parameters": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
        "id": json_values,
    },
)


def post(server: Server, content: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        server.url + "/v2/models/affine/infer",
        content=content,
        headers={**server.headers(), **headers},
        timeout=30,
    )


def assert_clean(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["error"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_malformed_json_bodies_get_4xx(server: Server, body: dict[str, Any]) -> None:
    content = json.dumps(body, allow_nan=True).encode()
    assert_clean(post(server, content, {"Content-Type": "application/json"}))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=bodies,
    tail=st.binary(max_size=80),
    length=st.integers(-5, 400) | st.text(alphabet="0123456789-+.xe_", min_size=1, max_size=4),
)
def test_malformed_binary_bodies_get_4xx(
    server: Server, body: dict[str, Any], tail: bytes, length: int | str
) -> None:
    header = json.dumps(body).encode()
    response = post(server, header + tail, {"Inference-Header-Content-Length": str(length)})
    assert_clean(response)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=200))
def test_random_bytes_get_4xx(server: Server, raw: bytes) -> None:
    assert_clean(post(server, raw, {"Content-Type": "application/json"}))


def test_memory_is_stable_under_bad_requests(server: Server) -> None:
    def rss() -> int:
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        return int(
            next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]
        )

    bad = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2]}]}'
    url = server.url + "/v2/models/affine/infer"
    with httpx.Client(headers=server.headers(), timeout=30) as http:
        for _ in range(300):  # reach a steady state first
            http.post(url, content=bad)
        before = rss()
        for _ in range(2000):
            assert http.post(url, content=bad).status_code == 400
    grown_kib = rss() - before
    assert grown_kib < 8 * 1024, f"server RSS grew {grown_kib} KiB over 2,000 bad requests"
    assert server.process.poll() is None


# -- every front end agrees with LocalBackend (issue 13, kind 2) ------------------------

FRONTS = ["json", "binary", "grpc-typed", "grpc-raw", "gateway-json", "gateway-binary"]
FLOAT_WIDTH = {"FP16": 16, "FP32": 32, "FP64": 64}


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from stack(tmp_path_factory.mktemp("fuzz-wire"))


def elements(datatype: str) -> st.SearchStrategy[Any]:
    if datatype == "BYTES":  # NULs anywhere: onnxruntime cut numpy 'U' elements at one
        return (st.text(max_size=8) | st.text(alphabet="\x00a\u00e9", max_size=4)).map(str.encode)
    if datatype in FLOAT_WIDTH:
        return st.floats(width=FLOAT_WIDTH[datatype])  # NaN and ±Inf included
    if datatype == "BOOL":
        return st.booleans()
    info = np.iinfo(DTYPE[datatype])
    return st.integers(int(info.min), int(info.max))


@st.composite
def valid_tensors(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from(sorted(DTYPE)))
    # min_size 1: the ident models are unbatched, and a zero-size tensor for an
    # unbatched model is refused before the runtime (tests/adversarial/test_zero_size.py).
    values = draw(st.lists(elements(datatype), min_size=1, max_size=12))
    array = np.empty(len(values), dtype=object) if datatype == "BYTES" else None
    if array is not None:
        array[:] = values
    else:
        array = np.array(values, dtype=DTYPE[datatype])
    return datatype, array


def same(got: np.ndarray, want: np.ndarray) -> bool:
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    if want.dtype == object:
        return bool(got.tolist() == want.tolist())
    if want.dtype.kind == "f":
        nan = np.isnan(want)
        return bool((np.isnan(got) == nan).all() and got[~nan].tobytes() == want[~nan].tobytes())
    return got.tobytes() == want.tobytes()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensor=valid_tensors())
def test_valid_requests_get_the_local_answer_over_every_front(
    wire: Stack, tensor: tuple[str, np.ndarray]
) -> None:
    datatype, x = tensor
    model = identity_name(datatype)
    want = wire.local.infer(InferRequest(model, {"x": x})).outputs["y"]
    for front in FRONTS:
        if front == "grpc-typed" and datatype == "FP16":
            continue  # no typed contents for FP16 in the protocol
        got = roundtrip(wire, front, model, x)
        assert same(got, want), (front, got, want)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    datatype=st.sampled_from(sorted(DTYPE)),
    data=st.lists(json_values | st.integers(-(2**70), 2**70), min_size=1, max_size=6),
    gateway=st.booleans(),
)
def test_invalid_json_values_get_4xx(
    wire: Stack, datatype: str, data: list[Any], gateway: bool
) -> None:
    entry = json_entry("x", datatype, [len(data)], json.dumps(data, allow_nan=True))
    response = post_json(wire.url("gateway-json" if gateway else "json"),
                         identity_name(datatype), [entry])  # fmt: skip
    assert_clean(response)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    datatype=st.sampled_from([*sorted(DTYPE), "BF16", "x"]),
    shape=st.lists(st.integers(0, 2**62), max_size=4) | st.lists(st.integers(0, 3), max_size=70),
    raw=st.binary(max_size=40),
    typed=st.one_of(
        st.none(),
        st.tuples(st.sampled_from(sorted(set(TYPED_FIELD.values()))), st.integers(-5, 300)),
    ),
)
def test_grpc_never_fails_internally(
    wire: Stack, datatype: str, shape: list[int], raw: bytes, typed: tuple[str, int] | None
) -> None:
    model = identity_name(datatype if datatype in DTYPE else "FP32")
    if typed is None:
        request = raw_request(model, [("x", datatype, shape, raw)])
    else:
        field, value = typed
        value_of = {"bool_contents": bool(value), "bytes_contents": raw,
                    "fp32_contents": float(value), "fp64_contents": float(value)}  # fmt: skip
        request = typed_request(
            model, "x", datatype, shape, [value_of.get(field, abs(value))], field
        )
    code, reply = grpc_call(wire.server.grpc_address, request)
    assert code in ("OK", "INVALID_ARGUMENT"), (code, reply)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensor=valid_tensors(), swapped=st.booleans())
def test_local_backend_reads_every_numpy_spelling_of_a_tensor_alike(
    wire: Stack, tensor: tuple[str, np.ndarray], swapped: bool
) -> None:
    """The same values as a ``U`` or ``S`` array (BYTES, when numpy can hold them:
    no trailing NULs), or in the other byte order (numbers): the same answer."""
    datatype, x = tensor
    model = identity_name(datatype)
    want = wire.local.infer(InferRequest(model, {"x": x})).outputs["y"]
    if datatype == "BYTES":
        items = x.tolist()
        if any(v.endswith(b"\x00") for v in items):
            return  # numpy's fixed-width dtypes drop trailing NULs by design
        other = np.array([v.decode() for v in items]) if swapped else np.array(items, "S")
        other = other.reshape(x.shape) if items else np.empty(0, "U1" if swapped else "S1")
    elif datatype == "BOOL" or not swapped:
        return
    else:
        other = x.astype(x.dtype.newbyteorder(">"))
    got = wire.local.infer(InferRequest(model, {"x": other})).outputs["y"]
    assert same(got, want), (other, got, want)
