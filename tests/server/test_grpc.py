"""The gRPC front end, spoken to with tritonclient's gRPC client."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from ..models import affine_reference
from .conftest import Server


def client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.grpc_address)


def headers(server: Server) -> dict[str, str]:
    return {"authorization": f"Bearer {server.token}"}


def test_liveness_readiness_and_metadata(server: Server) -> None:
    c = client(server)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("affine", headers=headers(server))
    assert not c.is_model_ready("broken", headers=headers(server))
    meta = c.get_server_metadata(headers=headers(server))
    assert meta.name == "edgecloud" and "binary_tensor_data" in meta.extensions
    model = c.get_model_metadata("affine", headers=headers(server))
    assert list(model.inputs[0].shape) == [-1, 4] and model.versions == ["2"]


def test_infer_raw_contents(server: Server) -> None:
    x = np.random.default_rng(2).standard_normal((4, 4)).astype(np.float32)
    tensor = triton.InferInput("x", [4, 4], "FP32")
    tensor.set_data_from_numpy(x)
    result = client(server).infer("affine", [tensor], headers=headers(server), request_id="r1")
    np.testing.assert_allclose(result.as_numpy("y"), affine_reference(x)[0], rtol=1e-5)
    assert result.get_response().id == "r1"


def test_two_inputs_with_int64(server: Server) -> None:
    a = triton.InferInput("a", [2, 2], "FP32")
    a.set_data_from_numpy(np.full((2, 2), 1.5, np.float32))
    b = triton.InferInput("b", [2, 2], "INT64")
    b.set_data_from_numpy(np.array([[1, 2], [3, 4]], np.int64))
    out = client(server).infer("two-input", [a, b], headers=headers(server)).as_numpy("out")
    np.testing.assert_allclose(out, [[1.5, 3.0], [4.5, 6.0]])


@pytest.mark.parametrize(
    ("model", "shape", "fragment"),
    [("ghost", [1, 4], "no model 'ghost'"), ("affine", [1, 3], "expects shape")],
)
def test_errors_carry_status_and_message(
    server: Server, model: str, shape: list[int], fragment: str
) -> None:
    tensor = triton.InferInput("x", shape, "FP32")
    tensor.set_data_from_numpy(np.zeros(shape, np.float32))
    with pytest.raises(InferenceServerException, match=fragment):
        client(server).infer(model, [tensor], headers=headers(server))


def test_token_is_required(server: Server) -> None:
    with pytest.raises(InferenceServerException, match="bearer token"):
        client(server).get_server_metadata()
