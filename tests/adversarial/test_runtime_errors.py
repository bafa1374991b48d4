"""Kind 5: a value only the runtime can reject is the caller's mistake, not the server's.

The kind: inputs that pass the declared names, dtypes and shapes but that the
graph rejects when it runs — an index outside an embedding table (Gather;
minilm's token ids), a row length a Reshape cannot take, silero-vad's
unsupported ``sr`` or chunk length. onnxruntime raises ``InvalidArgument`` or
``Fail`` for these; each front end must answer 400 with the runtime's message
(gRPC INVALID_ARGUMENT), each client must raise InvalidRequestError, and a
Fallback or Cascade must re-raise it instead of trying elsewhere. A real
server fault (memory exhausted) stays a 500.
"""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest

from edgecloud import (
    Cascade,
    InferenceError,
    InferRequest,
    InvalidRequestError,
    LocalBackend,
    ModelRepository,
    prefer_local,
    prefer_remote,
)
from edgecloud.backends.base import FunctionBackend
from edgecloud.backends.local import runtime_error
from edgecloud.backends.remote import RemoteBackend
from edgecloud.proto import inference_pb2 as pb
from edgecloud.proto import inference_pb2_grpc as pb_grpc
from edgecloud.server.launch import ServerProcess

from ..server.conftest import Server
from ._server_helpers import TABLE, adversarial_gateway, adversarial_repo, adversarial_server

__all__ = ["adversarial_gateway", "adversarial_repo", "adversarial_server"]

BAD_IDS = np.array([[1, 2, 99]], dtype=np.int64)  # table has rows 0..9
GOOD_IDS = np.array([[1, 2, 9]], dtype=np.int64)
#: (model, inputs the declared checks accept but the graph rejects, what onnxruntime says)
CASES = [
    pytest.param("lookup", {"ids": BAD_IDS}, "out of data bounds", id="gather-out-of-range"),
    pytest.param("lookup", {"ids": -BAD_IDS}, "out of data bounds", id="gather-negative"),
    pytest.param(
        "reshape", {"x": np.ones((1, 4), np.float32)}, "cannot be reshaped", id="reshape-misfit"
    ),
]


def json_body(inputs: dict[str, np.ndarray]) -> dict[str, object]:
    def tensor(name: str, value: np.ndarray) -> dict[str, object]:
        datatype = "INT64" if value.dtype.kind == "i" else "FP32"
        return {"name": name, "shape": list(value.shape), "datatype": datatype,
                "data": value.ravel().tolist()}  # fmt: skip

    return {"inputs": [tensor(k, v) for k, v in inputs.items()]}


@pytest.mark.parametrize(("model", "inputs", "says"), CASES)
def test_local_backend_raises_the_callers_error(
    adversarial_repo: ModelRepository, model: str, inputs: dict[str, np.ndarray], says: str
) -> None:
    with LocalBackend(adversarial_repo) as local:
        with pytest.raises(InvalidRequestError, match=says) as caught:
            local.infer(InferRequest(model, inputs))
        assert caught.value.status_code == 400 and caught.value.fallback is None
        # The same model still answers good inputs.
        ok = local.infer(InferRequest("lookup", {"ids": GOOD_IDS}))
        np.testing.assert_array_equal(ok.outputs["out"], TABLE[GOOD_IDS])


@pytest.mark.parametrize(("model", "inputs", "says"), CASES)
def test_http_answers_400_with_the_runtimes_message(
    adversarial_server: Server, model: str, inputs: dict[str, np.ndarray], says: str
) -> None:
    answer = httpx.post(
        f"{adversarial_server.url}/v2/models/{model}/infer", json=json_body(inputs), timeout=30
    )
    assert answer.status_code == 400, answer.text
    assert says in answer.json()["error"] and model in answer.json()["error"]


@pytest.mark.parametrize(("model", "inputs", "says"), CASES)
def test_grpc_answers_invalid_argument(
    adversarial_server: Server, model: str, inputs: dict[str, np.ndarray], says: str
) -> None:
    request = pb.ModelInferRequest(model_name=model)
    for name, value in inputs.items():
        datatype = "INT64" if value.dtype.kind == "i" else "FP32"
        request.inputs.add(name=name, datatype=datatype, shape=list(value.shape))
        request.raw_input_contents.append(value.tobytes())
    with grpc.insecure_channel(adversarial_server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (caught.value.details() or "")


@pytest.mark.parametrize("scheme", ["http", "grpc"])
@pytest.mark.parametrize(("model", "inputs", "says"), CASES)
def test_remote_backend_raises_the_callers_error(
    adversarial_server: Server, scheme: str, model: str, inputs: dict[str, np.ndarray], says: str
) -> None:
    address = (
        adversarial_server.http_address if scheme == "http" else adversarial_server.grpc_address
    )
    with (
        RemoteBackend(f"{scheme}://{address}", timeout=30) as remote,
        pytest.raises(InvalidRequestError, match=says) as caught,
    ):
        remote.infer(InferRequest(model, inputs))
    assert caught.value.fallback is None


def test_batched_neighbours_are_not_failed_by_a_bad_request(adversarial_server: Server) -> None:
    """A bad row merged with good ones fails alone (the batch is re-run request by request)."""
    from concurrent.futures import ThreadPoolExecutor

    url = f"{adversarial_server.url}/v2/models/lookup/infer"
    bodies = [json_body({"ids": BAD_IDS if i % 3 == 0 else GOOD_IDS}) for i in range(9)]
    with ThreadPoolExecutor(9) as pool:
        codes = list(pool.map(lambda b: httpx.post(url, json=b, timeout=30).status_code, bodies))
    assert codes == [400 if i % 3 == 0 else 200 for i in range(9)]


def test_fallback_and_cascade_reraise_instead_of_falling_back(
    adversarial_repo: ModelRepository, adversarial_server: Server
) -> None:
    request = InferRequest("lookup", {"ids": BAD_IDS})
    answered: list[str] = []

    def spare(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        answered.append("spare")
        return {"out": np.zeros((1, 3, 2), np.float32)}

    other = FunctionBackend(spare, name="spare")
    with (
        LocalBackend(adversarial_repo) as local,
        RemoteBackend(f"http://{adversarial_server.http_address}", timeout=30) as remote,
    ):
        for tree in (prefer_local(local, other), prefer_remote(remote, other)):
            with pytest.raises(InvalidRequestError, match="out of data bounds"):
                tree.infer(request)
        unsure = FunctionBackend(
            lambda inputs: {"probabilities": np.full((1, 2), 0.5, np.float32)}, name="small"
        )
        cascade = Cascade(unsure, remote, threshold=0.9, small_model="lookup", large_model="lookup")
        with pytest.raises(InvalidRequestError, match="out of data bounds"):
            cascade.infer(request)
    assert answered == []


@pytest.mark.parametrize(("model", "inputs", "says"), CASES)
def test_gateway_answers_400_without_falling_back(
    adversarial_gateway: ServerProcess, model: str, inputs: dict[str, np.ndarray], says: str
) -> None:
    answer = httpx.post(
        f"{adversarial_gateway.url}/v2/models/{model}/infer", json=json_body(inputs), timeout=30
    )
    assert answer.status_code == 400, answer.text
    assert says in answer.json()["error"]


def test_memory_exhaustion_stays_a_server_fault() -> None:
    """onnxruntime reports an exhausted arena as FAIL too; that one is the server's."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

    oom = Fail("[ONNXRuntimeError] : 1 : FAIL : BFCArena Failed to allocate memory for buffer")
    assert isinstance(runtime_error(oom, "m"), InferenceError)
    assert type(runtime_error(InvalidArgument("bad index"), "m")) is InvalidRequestError
    assert type(runtime_error(Fail("cannot be reshaped"), "m")) is InvalidRequestError
    assert isinstance(runtime_error(RuntimeException("engine"), "m"), InferenceError)
    assert isinstance(runtime_error(RuntimeError("torch"), "m"), InferenceError)


def test_zoo_models_reject_bad_values_as_the_callers(zoo_repo: ModelRepository) -> None:
    """vad with an unsupported sr or chunk, minilm with a token id beyond its vocabulary."""
    names = set(zoo_repo.model_names())
    if not {"vad", "minilm"} & names:
        pytest.skip("the zoo has neither vad nor minilm here")
    with LocalBackend(zoo_repo) as local:
        if "vad" in names:
            state = np.zeros((2, 1, 128), np.float32)
            for sr, samples in ((12345, 512), (8000, 512), (16000, 100), (16000, 0)):
                inputs = {
                    "input": np.zeros((1, samples), np.float32),
                    "state": state,
                    "sr": np.array(sr, np.int64),
                }
                with pytest.raises(InvalidRequestError):
                    local.infer(InferRequest("vad", inputs))
        if "minilm" in names:
            config = zoo_repo.config("minilm")
            inputs = {
                s.name: np.ones((1, 8), np.int64) * (10**7 if "input_ids" in s.name else 1)
                for s in config.inputs
            }
            with pytest.raises(InvalidRequestError):
                local.infer(InferRequest("minilm", inputs))
