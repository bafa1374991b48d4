"""Issue 14, kind 1: an idempotency key is bound to its request's fingerprint.

Every front end a key can arrive by — HTTP header, HTTP parameter, gRPC
metadata, gRPC parameter, RemoteBackend over HTTP and gRPC, the edge
gateway — must replay the same key with the same payload, refuse it with
another payload (422 / FAILED_PRECONDITION, naming the key), and refuse a
header and a parameter that name two keys (400). Keys the product makes
itself (Filter events, deferred cascade escalations) must be unique across
many objects, so none is dropped by the outbox or answered with another
request's answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from edgecloud import (
    Cascade,
    FunctionBackend,
    IdempotencyKeyReuseError,
    InferRequest,
    InferResponse,
    InvalidRequestError,
    ModelConfig,
    ModelRepository,
    Outbox,
    RemoteBackend,
    RequestContext,
    TensorSpec,
    UnavailableError,
)
from edgecloud.filter import Filter, SegmentConfig
from edgecloud.server.idempotency import IdempotencyStore, IdempotentRunner
from edgecloud.server.launch import ServerProcess, free_port, launch
from edgecloud.server.metrics import ServerMetrics
from edgecloud.tensors import Trace

from ..models import affine_reference, make_repo
from ..server.conftest import Server, start_server

RNG = np.random.default_rng(14)
A = RNG.standard_normal((1, 4)).astype(np.float32)
B = (A + 1).astype(np.float32)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Servers of this module keep their idempotency stores here (not in $HOME)."""
    path = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGECLOUD_STATE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("idem-server")
    running = start_server(make_repo(tmp), tmp)
    yield running
    running.stop()


def computations(server_url: str, model: str = "affine") -> float:
    text = httpx.get(f"{server_url}/metrics").text
    match = re.search(rf'^edgecloud_computations_total{{model="{model}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


@dataclass
class Answer:
    """What a front end made of one request: outputs and replay flag, or the error."""

    y: np.ndarray | None = None
    replayed: bool = False
    status: str = "ok"
    message: str = ""


def _http(url: str, x: np.ndarray, key: str, *, where: str) -> Answer:
    body: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                    "data": x.ravel().tolist()}],
    }  # fmt: skip
    headers = {}
    if where in ("header", "both"):
        headers["Idempotency-Key"] = key
    if where in ("parameter", "both"):
        body["parameters"] = {"idempotency_key": key if where == "parameter" else key + "-x"}
    reply = httpx.post(f"{url}/v2/models/affine/infer", json=body, headers=headers, timeout=10)
    if reply.status_code != 200:
        return Answer(status=str(reply.status_code), message=reply.json()["error"])
    data = reply.json()
    y = np.array(data["outputs"][0]["data"], np.float32).reshape(x.shape[0], 3)
    return Answer(y, bool(data["parameters"].get("idempotent_replay")))


def _grpc(address: str, x: np.ndarray, key: str, *, where: str) -> Answer:
    tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    headers = {"idempotency-key": key} if where in ("metadata", "both") else None
    params = None
    if where in ("parameter", "both"):
        params = {"idempotency_key": key if where == "parameter" else key + "-x"}
    client = triton_grpc.InferenceServerClient(address)
    try:
        result = client.infer(
            "affine", [tensor], headers=headers, parameters=params,
            outputs=[triton_grpc.InferRequestedOutput("y")],
        )  # fmt: skip
    except InferenceServerException as exc:
        return Answer(status=str(exc.status()).removeprefix("StatusCode."), message=exc.message())
    finally:
        client.close()
    params_out = result.get_response().parameters
    replayed = "idempotent_replay" in params_out and params_out["idempotent_replay"].bool_param
    return Answer(result.as_numpy("y"), replayed)


def _remote(url: str, x: np.ndarray, key: str) -> Answer:
    with RemoteBackend(url, timeout=10) as remote:
        request = InferRequest("affine", {"x": x}, context=RequestContext(idempotency_key=key))
        try:
            response = remote.infer(request)
        except InvalidRequestError as exc:
            return Answer(status=str(exc.status_code), message=exc.message)
    return Answer(response.outputs["y"], bool(response.parameters.get("idempotent_replay")))


Sender = Callable[[Server, np.ndarray, str], Answer]
FRONT_ENDS: dict[str, Sender] = {
    "http-header": lambda s, x, k: _http(s.url, x, k, where="header"),
    "http-parameter": lambda s, x, k: _http(s.url, x, k, where="parameter"),
    "grpc-metadata": lambda s, x, k: _grpc(s.grpc_address, x, k, where="metadata"),
    "grpc-parameter": lambda s, x, k: _grpc(s.grpc_address, x, k, where="parameter"),
    "remote-http": lambda s, x, k: _remote(s.url, x, k),
    "remote-grpc": lambda s, x, k: _remote(f"grpc://{s.grpc_address}", x, k),
}
#: How each front end reports a reused key: HTTP 422, gRPC FAILED_PRECONDITION
#: (IdempotencyKeyReuseError.grpc_code); RemoteBackend raises InvalidRequestError
#: carrying 400 for gRPC (the code table has no 422 there) and 422 for HTTP.
REUSE_STATUS = {
    "http-header": "422", "http-parameter": "422", "grpc-metadata": "FAILED_PRECONDITION",
    "grpc-parameter": "FAILED_PRECONDITION", "remote-http": "422", "remote-grpc": "400",
}  # fmt: skip


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_same_key_same_payload_replays_and_other_payload_is_422(
    server: Server, front_end: str
) -> None:
    send = FRONT_ENDS[front_end]
    key = f"{front_end}-{uuid.uuid4().hex}"
    before = computations(server.url)
    first = send(server, A, key)
    again = send(server, A, key)
    other = send(server, B, key)
    assert first.status == again.status == "ok", (first.message, again.message)
    assert not first.replayed and again.replayed
    np.testing.assert_array_equal(first.y, again.y)
    np.testing.assert_allclose(first.y, affine_reference(A)[0], rtol=1e-5)
    assert other.status == REUSE_STATUS[front_end], other
    assert repr(key) in other.message and "another request" in other.message
    assert computations(server.url) - before == 1  # the replay and the 422 computed nothing
    fresh = send(server, B, key + "-new")  # a new key for the new payload is fine
    np.testing.assert_allclose(fresh.y, affine_reference(B)[0], rtol=1e-5)


@pytest.mark.parametrize("front_end", ["http", "grpc"])
def test_header_and_parameter_naming_two_keys_are_a_400(server: Server, front_end: str) -> None:
    key = uuid.uuid4().hex
    if front_end == "http":
        answer = _http(server.url, A, key, where="both")
        assert answer.status == "400"
    else:
        answer = _grpc(server.grpc_address, A, key, where="both")
        assert answer.status == "INVALID_ARGUMENT"
    assert "disagree" in answer.message and key in answer.message


def test_the_same_key_in_agreement_is_one_key(server: Server) -> None:
    key = uuid.uuid4().hex
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": A.ravel().tolist()}
    body = {"inputs": [tensor], "parameters": {"idempotency_key": key}}
    first = httpx.post(f"{server.url}/v2/models/affine/infer", json=body,
                       headers={"Idempotency-Key": key})  # fmt: skip
    again = _http(server.url, A, key, where="header")
    assert first.status_code == 200 and again.replayed


def test_keys_are_scoped_per_model(server: Server) -> None:
    """One caller key may name requests to several models (a cascade's small and
    large model): each model binds it separately."""
    key = uuid.uuid4().hex
    a = {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}
    b = {"name": "b", "shape": [1, 2], "datatype": "INT64", "data": [3, 4]}
    body = {"inputs": [a, b]}
    assert _http(server.url, A, key, where="header").status == "ok"
    other = httpx.post(f"{server.url}/v2/models/two-input/infer", json=body,
                       headers={"Idempotency-Key": key})  # fmt: skip
    assert other.status_code == 200, other.text


def test_requested_outputs_are_part_of_the_binding(server: Server) -> None:
    key = uuid.uuid4().hex
    base = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                        "data": A.ravel().tolist()}]}  # fmt: skip
    url, headers = f"{server.url}/v2/models/affine/infer", {"Idempotency-Key": key}
    only_y = httpx.post(url, json={**base, "outputs": [{"name": "y"}]}, headers=headers)
    only_z = httpx.post(url, json={**base, "outputs": [{"name": "z"}]}, headers=headers)
    assert only_y.status_code == 200 and only_z.status_code == 422, only_z.text


def test_concurrent_duplicates_share_one_computation(server: Server) -> None:
    key = uuid.uuid4().hex
    before = computations(server.url)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _http(server.url, A, key, where="header"), range(8)))
    assert all(a.status == "ok" for a in answers)
    assert sum(not a.replayed for a in answers) == 1
    for answer in answers:
        np.testing.assert_array_equal(answer.y, answers[0].y)
    assert computations(server.url) - before == 1


def test_a_failed_request_is_not_stored(server: Server) -> None:
    key = uuid.uuid4().hex
    bad = _http(server.url, np.zeros((1, 3), np.float32), key, where="header")
    assert bad.status == "400"
    retry = _http(server.url, A, key, where="header")  # the key was never bound
    assert retry.status == "ok" and not retry.replayed


# -- the edge gateway ----------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    server: Server, tmp_path_factory: pytest.TempPathFactory, state_dir: Path
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("idem-gateway")
    spec = {
        "repository": str(server.repo.root),
        "remotes": {"cloud": {"url": server.url, "timeout_s": 5}},
        "root": "cloud",
    }
    path = tmp / "deployment.yaml"
    path.write_text(yaml.safe_dump(spec))
    port = free_port()
    argv = [sys.executable, "-m", "edgecloud.cli", "edge", "-d", str(path), "--port", str(port)]
    running = launch(argv, f"http://127.0.0.1:{port}", log=tmp / "gateway.log")
    yield running
    running.stop()


def test_gateway_binds_the_key_and_forwards_it(server: Server, gateway: ServerProcess) -> None:
    key = f"gateway-{uuid.uuid4().hex}"
    before = computations(server.url)
    first = _http(gateway.url, A, key, where="header")
    again = _http(gateway.url, A, key, where="parameter")
    other = _http(gateway.url, B, key, where="header")
    assert first.status == again.status == "ok" and again.replayed
    np.testing.assert_array_equal(first.y, again.y)
    assert other.status == "422" and repr(key) in other.message
    # The key reached the server with the first request, bound to its payload there:
    direct_same = _http(server.url, A, key, where="header")
    direct_other = _http(server.url, B, key, where="header")
    assert direct_same.replayed and direct_other.status == "422"
    assert computations(server.url) - before == 1
    assert _http(gateway.url, A, key, where="both").status == "400"


# -- keys the product generates ------------------------------------------------


def _unreachable(_: Any) -> Any:
    raise UnavailableError("the link is down")


class Loud:
    """A trigger: the chunk's mean absolute value."""

    threshold = 0.5
    chunk_s = 0.1

    def score(self, chunk: np.ndarray) -> float:
        return float(np.abs(chunk).mean())


def test_filter_event_keys_are_unique_across_many_filters(tmp_path: Path) -> None:
    """Before: event-{id(self)}-{index}; filters created one after another reuse
    the same id(), so the outbox kept one event of many."""
    outbox = Outbox(tmp_path / "outbox.db")
    chunk_quiet, chunk_loud = np.zeros(160, np.float32), np.ones(160, np.float32)
    tight = SegmentConfig(pre_roll_s=0, post_roll_s=0, min_duration_s=0, merge_gap_s=0)
    events = 0
    for _ in range(60):
        stream = Filter(
            Loud(), FunctionBackend(_unreachable, name="cloud"), outbox=outbox, segment=tight,
        )  # fmt: skip
        events += len(stream.feed_all([chunk_quiet, chunk_loud, chunk_quiet]))
        del stream
    keys = [item.key for item in outbox.items()]
    assert events == 60 and len(outbox) == events
    assert len(set(keys)) == len(keys) and all(k.startswith("event-") for k in keys)
    outbox.close()


def _unsure(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rows = len(inputs["x"])
    return {"probabilities": np.full((rows, 2), 0.5, np.float32)}


def test_deferred_escalation_keys_are_unique_across_many_cascades() -> None:
    deferred: list[InferRequest] = []
    for _ in range(60):
        cascade = Cascade(
            FunctionBackend(_unsure), FunctionBackend(_unreachable), threshold=0.9,
            on_escalation_failure=lambda request, _answer, _why: deferred.append(request),
        )  # fmt: skip
        cascade.infer(InferRequest("m", {"x": A}))
    keys = [r.context.idempotency_key for r in deferred]
    assert len(keys) == 60 and None not in keys and len(set(keys)) == 60


def test_a_keyed_requests_escalation_key_is_derived_from_it() -> None:
    """Re-sent with the same caller key and rows: the same escalation key (the
    server replays); other rows or another caller key: a different one."""
    deferred: list[InferRequest] = []
    cascade = Cascade(
        FunctionBackend(_unsure), FunctionBackend(_unreachable), threshold=0.9,
        on_escalation_failure=lambda request, _answer, _why: deferred.append(request),
    )  # fmt: skip
    for key, x in (("order-17", A), ("order-17", A), ("order-17", B), ("order-18", A)):
        cascade.infer(InferRequest("m", {"x": x}, context=RequestContext(idempotency_key=key)))
    keys = [r.context.idempotency_key for r in deferred]
    assert keys[0] == keys[1] and len({keys[0], keys[2], keys[3]}) == 3
    assert all(k is not None and k.startswith("escalation-") and "order" not in k for k in keys)


def test_large_requests_are_bound_too(tmp_path: Path) -> None:
    """Requests above 256 kB are fingerprinted off the event loop: same rules."""
    store = IdempotencyStore(tmp_path / "i.db", window_s=60, max_entries=10, max_bytes=1 << 30)
    runner = IdempotentRunner(lambda: store, describe="i.db", metrics=ServerMetrics())
    runner.open()
    big = np.arange(100_000, dtype=np.float32)
    context = RequestContext(idempotency_key="big-1")
    computed: list[int] = []

    async def send(x: np.ndarray) -> InferResponse:
        request = InferRequest("m", {"x": x}, context=context)

        async def compute() -> InferResponse:
            computed.append(1)
            return InferResponse("m", "1", {"y": x[:3]}, Trace("t", []))

        return await runner.run(request, compute)

    async def scenario() -> None:
        first, again = await send(big), await send(big.copy())
        assert again.parameters["idempotent_replay"] is True
        np.testing.assert_array_equal(first.outputs["y"], again.outputs["y"])
        with pytest.raises(IdempotencyKeyReuseError, match="'big-1'"):
            await send(big + 1)
        await runner.close()

    asyncio.run(scenario())
    assert computed == [1]


# -- issue 14 b, kind 1: exactly one fingerprint is bound to a key, under races --

BODIES = [A, B, (A * 2).astype(np.float32)]


def _grpc_stub_call(stub: Any, x: np.ndarray, metadata: list[tuple[str, str]]) -> Answer:
    """One ModelInfer on the generated stub, with ``metadata`` as given (repeats kept).

    No outputs are named, like :func:`_http`: both bind the same fingerprint."""
    import grpc

    from edgecloud.proto import inference_pb2 as pb

    request = pb.ModelInferRequest(model_name="affine")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    try:
        reply = stub.ModelInfer(request, metadata=metadata, timeout=10)
    except grpc.RpcError as exc:
        return Answer(status=exc.code().name, message=exc.details() or "")
    index = [output.name for output in reply.outputs].index("y")  # all outputs, as over HTTP
    y = np.frombuffer(reply.raw_output_contents[index], np.float32).reshape(x.shape[0], 3)
    replayed = "idempotent_replay" in reply.parameters
    return Answer(y, replayed and reply.parameters["idempotent_replay"].bool_param)


@pytest.fixture(scope="module")
def grpc_stub(server: Server) -> Iterator[Any]:
    import grpc

    from edgecloud.proto import inference_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(server.grpc_address)
    yield pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    channel.close()


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    mix=st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from(["http", "grpc"])), min_size=8, max_size=24
    )
)
def test_concurrent_requests_with_several_bodies_bind_exactly_one(
    server: Server, grpc_stub: Any, mix: list[tuple[int, str]]
) -> None:
    """Many requests under one key, a random mix of bodies and front ends, all at
    once: one body is bound and computed once; every request with it gets that
    answer, every request with another body a 422 — never a 422 for the bound body
    (issue 14 b: 2–5 of 20 did, in 5 of 10 trials)."""
    key = f"race-{uuid.uuid4().hex}"
    before = computations(server.url)
    barrier = threading.Barrier(len(mix))

    def send(item: tuple[int, str]) -> tuple[int, str, Answer]:
        body, front_end = item
        barrier.wait()
        if front_end == "http":
            return body, front_end, _http(server.url, BODIES[body], key, where="header")
        return body, front_end, _grpc_stub_call(grpc_stub, BODIES[body], [("idempotency-key", key)])

    with concurrent.futures.ThreadPoolExecutor(len(mix)) as pool:
        results = list(pool.map(send, mix))
    bound = {body for body, _, answer in results if answer.status == "ok"}
    assert len(bound) == 1, results
    (winner,) = bound
    for body, front_end, answer in results:
        if body == winner:
            assert answer.status == "ok", (front_end, answer)
            np.testing.assert_allclose(answer.y, affine_reference(BODIES[body])[0], rtol=1e-5)
        else:
            assert answer.status == ("422" if front_end == "http" else "FAILED_PRECONDITION")
            assert repr(key) in answer.message, answer.message
    assert sum(a.status == "ok" and not a.replayed for _, _, a in results) == 1, results
    assert computations(server.url) - before == 1


# -- issue 14 b, kind 2: a key carrier given twice must name one key ----------


def _post_headers(
    url: str, x: np.ndarray, headers: list[tuple[str, str]] | list[tuple[bytes, bytes]]
) -> httpx.Response:
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return httpx.post(
        f"{url}/v2/models/affine/infer", json={"inputs": [tensor]}, headers=headers, timeout=10
    )


@pytest.mark.parametrize("where", ["server", "gateway"])
def test_two_idempotency_key_headers_with_two_keys_are_a_400(
    server: Server, gateway: ServerProcess, where: str
) -> None:
    url = server.url if where == "server" else gateway.url
    a, b = f"A-{uuid.uuid4().hex}", f"B-{uuid.uuid4().hex}"
    reply = _post_headers(url, A, [("Idempotency-Key", a), ("Idempotency-Key", b)])
    assert reply.status_code == 400, reply.text
    assert a in reply.json()["error"] and b in reply.json()["error"]
    for key in (a, b):  # neither was bound: both are free for another payload
        fresh = _http(url, B, key, where="header")
        assert fresh.status == "ok" and not fresh.replayed, fresh


@pytest.mark.parametrize("where", ["server", "gateway"])
def test_a_repeated_identical_key_header_is_one_key(
    server: Server, gateway: ServerProcess, where: str
) -> None:
    url = server.url if where == "server" else gateway.url
    key = uuid.uuid4().hex
    first = _post_headers(url, A, [("Idempotency-Key", key), ("idempotency-key", key)])
    assert first.status_code == 200, first.text
    assert _http(url, A, key, where="header").replayed


@pytest.mark.parametrize("where", ["server", "gateway"])
@pytest.mark.parametrize("value", ["", "é", "x" * 256])
def test_a_bad_key_header_is_a_400_like_a_bad_parameter(
    server: Server, gateway: ServerProcess, where: str, value: str
) -> None:
    """An empty ``Idempotency-Key`` header was silently no key; the empty parameter
    was a 400. Both are 400s now, as are the other malformed keys."""
    url = server.url if where == "server" else gateway.url
    reply = _post_headers(url, A, [(b"Idempotency-Key", value.encode())])
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert "printable ASCII" in error and "the Idempotency-Key header" in error, error
    assert ("is empty" in error) == (value == ""), error
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": A.ravel().tolist()}
    for param in (value, " " * len(value)):
        body = {"inputs": [tensor], "parameters": {"idempotency_key": param}}
        refused = httpx.post(f"{url}/v2/models/affine/infer", json=body)
        assert refused.status_code == 400, refused.text
        assert "the idempotency_key parameter" in refused.json()["error"]


def test_two_idempotency_key_metadata_entries_are_invalid_argument(
    server: Server, grpc_stub: Any
) -> None:
    a, b = f"A-{uuid.uuid4().hex}", f"B-{uuid.uuid4().hex}"
    both = _grpc_stub_call(grpc_stub, A, [("idempotency-key", a), ("idempotency-key", b)])
    assert both.status == "INVALID_ARGUMENT", both
    assert a in both.message and b in both.message
    for key in (a, b):  # neither was bound
        fresh = _grpc_stub_call(grpc_stub, B, [("idempotency-key", key)])
        assert fresh.status == "ok" and not fresh.replayed, fresh
    same = uuid.uuid4().hex
    twice = _grpc_stub_call(grpc_stub, A, [("idempotency-key", same), ("idempotency-key", same)])
    assert twice.status == "ok" and not twice.replayed, twice
    assert _grpc_stub_call(grpc_stub, A, [("idempotency-key", same)]).replayed
    empty = _grpc_stub_call(grpc_stub, A, [("idempotency-key", "")])
    assert empty.status == "INVALID_ARGUMENT" and "printable ASCII" in empty.message, empty
    assert "the idempotency-key metadata is empty" in empty.message, empty


def test_concurrent_requests_with_two_bodies_at_the_gateway_bind_exactly_one(
    server: Server, gateway: ServerProcess
) -> None:
    """The gateway's runner is the same mechanism: the same race through it binds one
    body, computed once at the server behind it."""
    for trial in range(2):
        key = f"gateway-race-{trial}-{uuid.uuid4().hex}"
        before = computations(server.url)
        bodies = [trial % 2, (trial + 1) % 2] * 8
        barrier = threading.Barrier(len(bodies))

        def send(body: int, key: str = key, barrier: threading.Barrier = barrier) -> Answer:
            barrier.wait()
            return _http(gateway.url, BODIES[body], key, where="header")

        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(send, bodies))
        winners = {
            body for body, answer in zip(bodies, answers, strict=True) if answer.status == "ok"
        }
        assert len(winners) == 1, answers
        for body, answer in zip(bodies, answers, strict=True):
            assert answer.status == ("ok" if body in winners else "422"), answer
        assert sum(a.status == "ok" and not a.replayed for a in answers) == 1
        assert computations(server.url) - before == 1


# -- a keyed request that outlives the server's request timeout -------------------------

SLOW_N, SLOW_STEPS = 512, 60
"""A 512x512 MatMul chain of 60 steps: about 0.3-1 s of onnxruntime on one CI core."""


def _slow_repo(root: Path) -> ModelRepository:
    """A repository with ``slow``: FP32 [1] in, FP32 [] out, much slower than its timeout."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(SLOW_N, dtype=np.float32), "W")
    shape = numpy_helper.from_array(np.array([SLOW_N, SLOW_N], np.int64), "shape")
    nodes = [helper.make_node("Expand", ["s", "shape"], ["m0"])]
    nodes += [helper.make_node("MatMul", [f"m{i}", "W"], [f"m{i + 1}"]) for i in range(SLOW_STEPS)]
    nodes.append(helper.make_node("ReduceMean", [f"m{SLOW_STEPS}"], ["y"], keepdims=0))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        initializer=[weight, shape],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, root / "slow.onnx")
    repo = ModelRepository(root / "repo")
    config = ModelConfig(
        name="slow", max_batch_size=0,
        inputs=[TensorSpec(name="s", datatype="FP32", shape=(1,))],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=())],
    )  # fmt: skip
    repo.add_version("slow", root / "slow.onnx", config=config)
    return repo


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("slow-server")
    running = start_server(_slow_repo(tmp), tmp, "--timeout", "0.05")
    yield running
    running.stop()


def _counter(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf'^{name}{{model="slow"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def _post_slow(url: str, value: float, key: str | None) -> httpx.Response:
    body = {"inputs": [{"name": "s", "shape": [1], "datatype": "FP32", "data": [value]}]}
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(f"{url}/v2/models/slow/infer", json=body, headers=headers, timeout=30)


def _settled(url: str, started: float, deadline_s: float = 20.0) -> None:
    """Wait until every computation started so far has ended."""
    end = time.monotonic() + deadline_s
    while _counter(url, "edgecloud_computations_total") < started:
        assert time.monotonic() < end, "a computation never ended"
        time.sleep(0.05)


def test_keyed_request_past_the_timeout_is_computed_once_and_replayed(
    slow_server: Server,
) -> None:
    """Before: each of 4 re-sends under one key got a 504 and burnt a full
    computation, none stored. Now: one computation; its 504'd callers' retries
    share it while it runs and replay it after."""
    url, key = slow_server.url, f"slow-{uuid.uuid4()}"
    started0 = _counter(url, "edgecloud_computations_started_total")
    first = _post_slow(url, 2.0, key)
    assert first.status_code == 504, first.text
    assert "re-send with the same key" in first.json()["error"]
    second = _post_slow(url, 2.0, key)  # while it runs: shares it (504 again, or its answer)
    assert second.status_code in (200, 504), second.text
    _settled(url, started0 + 1)
    third = _post_slow(url, 2.0, key)
    assert third.status_code == 200, third.text
    data = third.json()
    assert data["outputs"][0]["data"] == [pytest.approx(2.0)]
    assert data["parameters"]["idempotent_replay"] is True
    assert _counter(url, "edgecloud_computations_started_total") - started0 == 1
    assert _counter(url, "edgecloud_computations_late_total") >= 1
    other = _post_slow(url, 3.0, key)  # the stored answer is still bound to its payload
    assert other.status_code == 422, other.text


def test_unkeyed_request_past_the_timeout_is_counted(slow_server: Server) -> None:
    """An unkeyed computation that outlives its caller is not invisible: it is
    counted as started, finished and late (its answer is dropped)."""
    url = slow_server.url
    started0 = _counter(url, "edgecloud_computations_started_total")
    late0 = _counter(url, "edgecloud_computations_late_total")
    reply = _post_slow(url, 1.0, None)
    assert reply.status_code == 504, reply.text
    assert "idempotency key" not in reply.json()["error"]
    assert _counter(url, "edgecloud_computations_started_total") - started0 == 1
    _settled(url, started0 + 1)
    assert _counter(url, "edgecloud_computations_late_total") - late0 == 1
