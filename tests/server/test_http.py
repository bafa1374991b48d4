"""The HTTP/REST front end, spoken to with raw HTTP and with tritonclient."""

from __future__ import annotations

import concurrent.futures
import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from ..models import affine_reference
from .conftest import Server

RNG = np.random.default_rng(1)


def client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.http_address)


def call(server: Server, method: str, path: str, **kwargs: object) -> httpx.Response:
    headers = {**server.headers(), **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def triton_infer(server: Server, x: np.ndarray, binary: bool) -> np.ndarray:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput("y", binary_data=binary)]
    result = client(server).infer("affine", [tensor], outputs=outputs, headers=server.headers())
    return result.as_numpy("y")


def test_health_needs_no_token(server: Server) -> None:
    assert httpx.get(server.url + "/v2/health/live").status_code == 200
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    assert client(server).is_server_live() and client(server).is_server_ready()


def test_server_metadata(server: Server) -> None:
    meta = client(server).get_server_metadata(headers=server.headers())
    assert meta["name"] == "edgecloud"
    assert {"binary_tensor_data", "model_configuration"} <= set(meta["extensions"])


def test_model_metadata_has_batch_dimension(server: Server) -> None:
    meta = client(server).get_model_metadata("affine", headers=server.headers())
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["2"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    versioned = client(server).get_model_metadata("affine", "2", headers=server.headers())
    assert versioned["versions"] == ["2"]


def test_model_config_for_triton_tools(server: Server) -> None:
    config = client(server).get_model_config("affine", headers=server.headers())
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 20000


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_the_reference(server: Server, binary: bool) -> None:
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(triton_infer(server, x, binary), affine_reference(x)[0], rtol=1e-5)


def test_raw_json_infer_and_id_echo(server: Server) -> None:
    body = {
        "id": "abc",
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}],
        "outputs": [{"name": "z"}],
    }
    response = call(server, "POST", "/v2/models/affine/infer", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["id"] == "abc" and payload["model_version"] == "2"
    (out,) = payload["outputs"]
    assert out["name"] == "z" and out["shape"] == [1, 3]
    expected = affine_reference(np.array([[1, 2, 3, 4]], np.float32))[1]
    np.testing.assert_allclose(out["data"], expected.ravel(), rtol=1e-5)


def test_binary_request_by_hand(server: Server) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 4], "datatype": "FP32",
                 "parameters": {"binary_data_size": x.nbytes}}
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()  # fmt: skip
    response = call(
        server, "POST", "/v2/models/affine/infer", content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    meta = json.loads(response.content[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
    y = np.frombuffer(response.content[length : length + sizes[0]], np.float32).reshape(2, 3)
    np.testing.assert_allclose(y, affine_reference(x)[0], rtol=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v2/models/ghost/infer", {"inputs": []}, 404, "no model 'ghost'"),
        ("/v2/models/affine/versions/7/infer", {"inputs": []}, 404, "version"),
        ("/v2/models/affine/infer",
         {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]},
         400, "expects shape"),
        ("/v2/models/affine/infer",
         {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]},
         400, "expects datatype FP32, got FP64"),
        ("/v2/models/affine/infer",
         {"inputs": [{"name": "w", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
         400, "no input 'w'"),
        ("/v2/models/affine/infer",
         {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2]}]},
         400, "2 values in data, but shape [2, 4] holds 8"),
        ("/v2/models/affine/infer",
         {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FLOAT", "data": [1, 2, 3, 4]}]},
         400, "unknown datatype 'FLOAT'"),
        ("/v2/models/broken/infer", {"inputs": []}, 503, "invalid config"),
    ],
)  # fmt: skip
def test_errors_have_status_and_message(
    server: Server, path: str, body: dict, status: int, fragment: str
) -> None:
    response = call(server, "POST", path, json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_malformed_bodies_are_400(server: Server) -> None:
    for content in (b"{not json", b"[]", b'{"inputs": 3}'):
        response = call(server, "POST", "/v2/models/affine/infer", content=content)
        assert response.status_code == 400 and response.json()["error"]
    response = call(
        server, "POST", "/v2/models/affine/infer", content=b'{"inputs": []}',
        headers={"Inference-Header-Content-Length": "999"},
    )  # fmt: skip
    assert response.status_code == 400 and "outside the body" in response.json()["error"]


def test_triton_client_sees_errors(server: Server) -> None:
    tensor = triton.InferInput("x", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match="expects shape"):
        client(server).infer("affine", [tensor], headers=server.headers())


def test_auth_is_required_and_checked(server: Server) -> None:
    assert httpx.get(server.url + "/v2").status_code == 401
    wrong = httpx.get(server.url + "/v2", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]


def test_oversize_payload_is_413(server: Server) -> None:
    big = {"inputs": [{"name": "x", "shape": [20000, 4], "datatype": "FP32",
                       "data": [0.0] * 80000}]}  # fmt: skip
    response = call(server, "POST", "/v2/models/affine/infer", json=big)
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_unknown_endpoint_and_method(server: Server) -> None:
    assert call(server, "GET", "/v3/anything").status_code == 404
    assert call(server, "GET", "/v2/models/affine/infer").status_code == 405


def test_model_ready(server: Server) -> None:
    assert client(server).is_model_ready("affine", headers=server.headers())
    assert call(server, "GET", "/v2/models/broken/ready").status_code == 503
    assert call(server, "GET", "/v2/models/ghost/ready").status_code == 404


def test_idempotent_requests_are_answered_once(server: Server) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}
    first = call(server, "POST", "/v2/models/affine/infer", json=body,
                 headers={"Idempotency-Key": "k-1"})  # fmt: skip
    again = call(server, "POST", "/v2/models/affine/infer", json=body,
                 headers={"Idempotency-Key": "k-1"})  # fmt: skip
    assert first.status_code == again.status_code == 200
    assert again.json()["parameters"].get("idempotent_replay") is True
    assert "idempotent_replay" not in first.json()["parameters"]
    assert again.json()["outputs"] == first.json()["outputs"]
    metrics = call(server, "GET", "/metrics").text
    assert 'edgecloud_idempotent_replays_total{model="affine"} 1.0' in metrics


def test_concurrent_requests_are_batched_and_a_bad_one_fails_alone(server: Server) -> None:
    good = [RNG.standard_normal((1, 4)).astype(np.float32) for _ in range(12)]

    def send(i: int) -> httpx.Response:
        if i == 5:
            data = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}
        else:
            data = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": good[i].tolist()}
        return call(server, "POST", "/v2/models/affine/infer", json={"inputs": [data]})

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(send, range(12)))
    for i, response in enumerate(responses):
        if i == 5:
            assert response.status_code == 400
            continue
        assert response.status_code == 200, response.text
        y = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(1, 3)
        np.testing.assert_allclose(y, affine_reference(good[i])[0], rtol=1e-5)
    metrics = call(server, "GET", "/metrics").text
    sizes = [
        line for line in metrics.splitlines() if line.startswith("edgecloud_batch_size_bucket")
    ]
    single = next(s for s in sizes if 'le="1.0"' in s and 'model="affine"' in s)
    total = next(s for s in sizes if 'le="+Inf"' in s and 'model="affine"' in s)
    assert float(single.split()[-1]) < float(total.split()[-1]), "no request was batched"


def _batch_histogram(server: Server, model: str) -> tuple[float, float]:
    """``edgecloud_batch_size``'s (_count, _sum) for ``model``."""
    text = call(server, "GET", "/metrics").text
    values = {
        line.split("{")[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("edgecloud_batch_size_") and f'model="{model}"' in line
        and "_bucket" not in line
    }  # fmt: skip
    return values.get("edgecloud_batch_size_count", 0.0), values.get(
        "edgecloud_batch_size_sum", 0.0
    )


def test_batch_size_metric_counts_executions_and_their_rows(server: Server) -> None:
    """One observation per runtime call with its rows (Triton counts executions):
    ``_sum`` is exactly the rows run, ``_count`` the merged runs, not the requests
    (it used to observe the last batch's size once per request: 400 requests of
    ~800 rows gave count 400, sum 2122)."""
    sizes = [1 + i % 3 for i in range(24)]  # 48 rows, 24 requests
    count0, sum0 = _batch_histogram(server, "affine")

    def send(rows: int) -> int:
        x = RNG.standard_normal((rows, 4)).astype(np.float32)
        data = {"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": x.ravel().tolist()}
        return call(server, "POST", "/v2/models/affine/infer", json={"inputs": [data]}).status_code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        assert set(pool.map(send, sizes)) == {200}
    empty = {"name": "x", "shape": [0, 4], "datatype": "FP32", "data": []}
    response = call(server, "POST", "/v2/models/affine/infer", json={"inputs": [empty]})
    assert response.status_code == 200, response.text  # no runtime call: not observed
    count, total = _batch_histogram(server, "affine")
    assert total - sum0 == sum(sizes)
    # At most one execution per request, at least the rows over max_batch_size; how many
    # merge depends on arrival times (a request finding its batcher idle runs at once),
    # so merging itself is checked where it is deterministic: test_batching.py's
    # test_on_batch_is_called_once_per_run_with_its_rows.
    assert -(-sum(sizes) // 8) <= count - count0 <= len(sizes), (count - count0, "runs")


def test_metrics_and_openapi(server: Server) -> None:
    metrics = call(server, "GET", "/metrics").text
    assert "edgecloud_requests_total" in metrics and "edgecloud_request_seconds_bucket" in metrics
    spec = call(server, "GET", "/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/v2/models/{model}/infer" in spec["paths"]


def test_bytes_tensors_round_trip_through_the_codec() -> None:
    from edgecloud.wire.rest import tensor_bytes, tensor_from_bytes

    array = np.array([b"ab", b"", "é".encode()], dtype=object)
    raw = tensor_bytes(array)
    assert raw[:4] == struct.pack("<I", 2)
    assert list(tensor_from_bytes(raw, "BYTES", [3], "t")) == list(array)
