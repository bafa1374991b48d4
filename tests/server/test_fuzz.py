"""Hypothesis throws malformed bodies, shapes, dtypes, headers and lengths at a live server.

The contract: every answer is a 2xx or a 4xx with an ``error`` message — never
a 5xx, never a dropped connection — and the server's memory stays flat.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
        "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=3)}), max_size=2),
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
    length=st.integers(-5, 400) | st.text(alphabet="0123456789-+.xe", min_size=1, max_size=4),
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
