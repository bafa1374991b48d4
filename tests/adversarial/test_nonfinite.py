"""Kind 3: non-finite floats round-trip exactly over every front end and client.

A model whose output holds NaN, +Inf, -Inf used to answer ``[null, null,
null]`` over JSON (orjson writes non-finite floats as null) and clients read
three NaNs. Now JSON carries the ``NaN`` / ``Infinity`` / ``-Infinity``
literals Triton writes (its PR 3870), in requests and responses, and every
float value — signed zeros, subnormals, the largest finite values — comes
back bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as triton

from ..models import identity_name
from ._wire_helpers import ALL_FRONTS, Stack, json_entry, post_json, roundtrip, stack


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from stack(tmp_path_factory.mktemp("nonfinite"))


def tricky(dtype: type) -> np.ndarray:
    info = np.finfo(dtype)
    return np.array(
        [np.nan, np.inf, -np.inf, -0.0, 0.0, info.max, -info.max, info.smallest_subnormal, 0.1],
        dtype=dtype,
    )


def assert_identical(got: np.ndarray, want: np.ndarray) -> None:
    """Same dtype and shape; NaN where NaN; every other value bit for bit."""
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = np.isnan(want)
    assert (np.isnan(got) == nan).all(), got
    bits = np.dtype(f"u{want.dtype.itemsize}")
    assert (got[~nan].view(bits) == want[~nan].view(bits)).all(), got


@pytest.mark.parametrize("front", ALL_FRONTS)
def test_model_output_nan_and_infinities_survive(wire: Stack, front: str) -> None:
    got = roundtrip(wire, front, "nonfinite", np.array([1, -1, 0, -2], np.float32))
    assert_identical(got, np.array([np.inf, -np.inf, np.nan, -np.inf], np.float32))


@pytest.mark.parametrize("front", ALL_FRONTS)
@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_every_float_value_round_trips(wire: Stack, front: str, datatype: str) -> None:
    if datatype == "FP16" and front == "grpc-typed":
        pytest.skip("the protocol has no typed contents for FP16 (raw only)")
    x = tricky({"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[datatype])
    assert_identical(roundtrip(wire, front, identity_name(datatype), x), x)


@pytest.mark.parametrize("front", ["json", "gateway-json"])
def test_json_carries_the_literals_not_null(wire: Stack, front: str) -> None:
    entry = json_entry("x", "FP32", [3], "[1, -1, 0]")
    response = post_json(wire.url(front), "nonfinite", [entry])
    assert response.status_code == 200, response.text
    assert '"data":[Infinity,-Infinity,NaN]' in response.text
    assert "null" not in response.text


@pytest.mark.parametrize("front", ["json", "gateway-json"])
def test_request_literals_are_values(wire: Stack, front: str) -> None:
    entry = json_entry("x", "FP64", [3], "[NaN, Infinity, -Infinity]")
    response = post_json(wire.url(front), identity_name("FP64"), [entry])
    assert response.status_code == 200, response.text
    assert '"data":[NaN,Infinity,-Infinity]' in response.text


def test_tritonclient_reads_the_literals(wire: Stack) -> None:
    client = triton.InferenceServerClient(wire.server.http_address)
    tensor = triton.InferInput("x", [3], "FP32")
    tensor.set_data_from_numpy(np.array([1, -1, 0], np.float32), binary_data=False)
    wanted = triton.InferRequestedOutput("y", binary_data=False)
    result = client.infer("nonfinite", [tensor], outputs=[wanted])
    assert_identical(result.as_numpy("y"), np.array([np.inf, -np.inf, np.nan], np.float32))
