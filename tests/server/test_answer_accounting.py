"""Every answer counted once, as what it was; a failed request's memory given back.

Found by the issue-17 hostile review: an ``id`` holding a lone surrogate was a
500 counted as 200; HTTP decode failures went uncounted while gRPC counted
them; a cancelled gRPC call counted as a server error; a request above
``max_batch_size`` was one batch-size observation for several runtime calls;
failures were counted as started on one path and not on another; failing
large requests pinned their bodies in reference cycles until a collection.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from edgecloud import ModelRepository
from edgecloud.errors import EdgecloudError, InvalidRequestError
from edgecloud.server.app import tune_gc
from edgecloud.server.host import ModelHost
from edgecloud.server.http import HttpApp
from edgecloud.server.settings import ServerSettings
from edgecloud.tensors import InferRequest

from ..models import make_repo
from .conftest import Server, start_server

X = [0.5, -1.0, 2.0, 0.25]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("accounting")
    running = start_server(make_repo(tmp), tmp, "--workers", "1")
    yield running
    running.stop()


def _count(server: Server, protocol: str, code: str, model: str = "affine") -> float:
    text = httpx.get(server.url + "/metrics").text
    labels = f'code="{code}",model="{model}",protocol="{protocol}"'
    pattern = rf"^edgecloud_requests_total{{{labels}}} (\S+)$"
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def _body(**extra: object) -> dict[str, object]:
    entry = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X}
    return {"inputs": [entry], **extra}


def test_a_lone_surrogate_is_a_400_naming_the_field_and_counted_as_one(plain: Server) -> None:
    url = plain.url + "/v2/models/affine/infer"
    before = _count(plain, "http", "400"), _count(plain, "http", "200")
    raw = json.dumps(_body(id="ok")).replace('"ok"', '"\\ud800"').encode()
    reply = httpx.post(url, content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "id holds a lone surrogate" in reply.json()["error"]
    # a lone surrogate quoted by an error message: still a 4xx with a JSON body
    raw = json.dumps(_body()).replace('"name": "x"', '"name": "\\ud801"').encode()
    reply = httpx.post(url, content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "inputs[0].name" in reply.json()["error"], reply.text
    after = _count(plain, "http", "400"), _count(plain, "http", "200")
    assert after == (before[0] + 2, before[1])


def test_decode_failures_are_counted_on_http_as_on_grpc(plain: Server) -> None:
    before = _count(plain, "http", "400"), _count(plain, "grpc", "400")
    entry = {"name": "x", "shape": [1, 4], "datatype": "FP32"}
    header = json.dumps({"inputs": [{**entry, "parameters": {"binary_data_size": 4}}]}).encode()
    reply = httpx.post(
        plain.url + "/v2/models/affine/infer",
        content=header + b"\0" * 4,
        headers={"inference-header-content-length": str(len(header))},
    )
    assert reply.status_code == 400
    client = grpcclient.InferenceServerClient(plain.grpc_address)
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4), np.float32))
    tensor._raw_content = b"\0" * 4  # 4 bytes for 16 declared
    with pytest.raises(Exception, match="INVALID_ARGUMENT|bytes"):
        client.infer("affine", [tensor])
    client.close()
    assert _count(plain, "http", "400") == before[0] + 1
    assert _count(plain, "grpc", "400") == before[1] + 1


def _host(repo: ModelRepository, tmp: Path) -> ModelHost:
    host = ModelHost(repo, ServerSettings(idempotency_db=tmp / "idem.db"))
    host.load_all()
    return host


def test_runtime_calls_and_refusals_are_counted_as_they_happened(tmp_path: Path) -> None:
    host = _host(make_repo(tmp_path), tmp_path)
    child = host.metrics.batch_size.labels("affine")

    async def run() -> None:
        loaded = host.local.load("affine")
        host.cost(loaded).add(1e-7, 10_000)  # measured fast: runs inline / tick-batched
        x = np.ones((20, 4), np.float32)  # max_batch_size 8: runs of 8, 8 and 4 rows
        response = await host.infer(InferRequest("affine", {"x": x}))
        assert response.outputs["y"].shape == (20, 3)
        with pytest.raises(InvalidRequestError, match="nope"):
            await host.infer(InferRequest("affine", {"x": x[:1]}, outputs=["nope"]))
        await host.close()

    asyncio.run(run())
    host.metrics.deferred.flush()
    runs = [b.get() for b in child._buckets]
    assert sum(runs) == 3 and child._sum.get() == 20, runs
    started = host.metrics.computations_started.labels("affine")._value.get()
    done = host.metrics.computations.labels("affine")._value.get()
    assert started == done == 1, "a refused output was counted as handed to the runtime"


def _failing_bodies(count: int, megabytes: float) -> Iterator[tuple[bytes, bytes]]:
    rows = int(megabytes * 2**20 / 4 / 5)  # 5 columns where affine takes 4
    entry = {"name": "x", "shape": [rows, 5], "datatype": "FP32"}
    parameters = {"binary_data_size": rows * 20}
    header = json.dumps({"inputs": [{**entry, "parameters": parameters}]}).encode()
    data = np.zeros(rows * 5, np.float32).tobytes()
    for _ in range(count):
        yield header, data


@pytest.mark.parametrize("keyed", [False, True])
def test_failing_large_requests_do_not_pin_their_bodies(tmp_path: Path, keyed: bool) -> None:
    host = _host(make_repo(tmp_path), tmp_path)
    app = HttpApp(host)
    app.ready = True
    thresholds = gc.get_threshold()
    tune_gc()  # as serve runs: rare young collections
    statuses: list[int] = []

    async def one(i: int, header: bytes, data: bytes) -> None:
        body = header + data
        headers = [(b"inference-header-content-length", b"%d" % len(header))]
        if keyed:
            headers.append((b"idempotency-key", b"k%d" % i))
        scope = {"type": "http", "method": "POST", "path": "/v2/models/affine/infer",
                 "headers": headers, "query_string": b""}  # fmt: skip
        sent = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive() -> dict[str, object]:
            return next(sent)

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))  # type: ignore[call-overload]

        await app(scope, receive, send)

    async def run() -> int:
        for i, (header, data) in enumerate(_failing_bodies(12, 2)):
            await one(i, header, data)
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)  # the end-of-iteration collections
        held = tracemalloc.get_traced_memory()[0]
        await host.close()
        return held

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        held = asyncio.run(run()) - baseline
    finally:
        tracemalloc.stop()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert statuses == [400] * 12
    assert held < 8 * 2**20, f"{held / 2**20:.0f} MB still held after 12 failed 2 MB requests"


def test_a_cancelled_grpc_call_is_not_counted_as_a_server_error(plain: Server) -> None:
    client = grpcclient.InferenceServerClient(plain.grpc_address)
    rows = 200_000  # 25,000 runtime calls of 8 rows: far longer than the deadline
    tensor = grpcclient.InferInput("x", [rows, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, 4), np.float32))
    before = _count(plain, "grpc", "500"), _count(plain, "grpc", "499")
    with pytest.raises(Exception, match="Deadline"):
        client.infer("affine", [tensor], client_timeout=0.2)
    client.close()
    deadline = time.monotonic() + 30
    while _count(plain, "grpc", "499") == before[1] and time.monotonic() < deadline:
        time.sleep(0.1)  # the server notices the cancellation when its run ends
    assert _count(plain, "grpc", "499") == before[1] + 1
    assert _count(plain, "grpc", "500") == before[0]


def test_errors_answered_keep_their_message_without_their_traceback(tmp_path: Path) -> None:
    host = _host(make_repo(tmp_path), tmp_path)

    async def run() -> EdgecloudError:
        try:
            await host.infer(InferRequest("affine", {"x": np.ones((1, 5), np.float32)}))
        except EdgecloudError as exc:
            return exc
        finally:
            await host.close()
        raise AssertionError("not refused")

    exc = asyncio.run(run())
    from edgecloud.server.release import release

    release(exc)
    assert exc.__traceback__ is None and "x" in exc.message


def _computed(server: Server) -> float:
    text = httpx.get(server.url + "/metrics").text
    match = re.search(r'^edgecloud_computations_total{model="affine"} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_body_cut_short_by_a_disconnect_is_never_computed_nor_stored(plain: Server) -> None:
    import socket

    body = json.dumps(_body()).encode()
    head = (
        "POST /v2/models/affine/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"idempotency-key: cut-short\r\ncontent-length: {len(body) + 10}\r\n\r\n"
    ).encode()
    before = _count(plain, "http", "499"), _computed(plain)
    with socket.create_connection(("127.0.0.1", plain.http_port)) as conn:
        conn.sendall(head + body)  # a whole JSON document, 10 bytes short of its length
    deadline = time.monotonic() + 10
    while _count(plain, "http", "499") == before[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _count(plain, "http", "499") == before[0] + 1
    assert _computed(plain) == before[1], "a truncated body was computed"
    # the key holds nothing: the whole request with it is computed, not a 422
    reply = httpx.post(
        plain.url + "/v2/models/affine/infer", content=body + b" " * 10,
        headers={"idempotency-key": "cut-short", "content-type": "application/json"},
    )  # fmt: skip
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(
    "where",
    ['"parameters": {"\\udfff": 1}', '"outputs": [{"name": "\\ud800"}]', '"id": "a\\udbff"'],
)
def test_a_lone_surrogate_anywhere_in_the_json_is_a_400_naming_where(
    plain: Server, where: str
) -> None:
    raw = json.dumps(_body())[:-1] + ", " + where + "}"
    reply = httpx.post(
        plain.url + "/v2/models/affine/infer", content=raw.encode(),
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert reply.status_code == 400 and "lone surrogate" in reply.json()["error"], reply.text


def test_remote_clients_refuse_a_lone_surrogate_before_sending(plain: Server) -> None:
    from edgecloud.backends.remote import RemoteBackend

    x = np.ones((1, 4), np.float32)
    for backend in (RemoteBackend(plain.url), RemoteBackend(f"grpc://{plain.grpc_address}")):
        with pytest.raises(InvalidRequestError, match="surrogate"):
            backend.infer(InferRequest("affine", {"x": x}, id="\udc80"))
        backend.close()


def test_a_message_protobuf_cannot_parse_is_invalid_argument_and_counted(plain: Server) -> None:
    import grpc

    before = _count(plain, "grpc", "400", model="")
    with grpc.insecure_channel(plain.grpc_address) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        for raw in (b"\x0a\x02\xff\xfe", b"\x0a\x09affine"):  # invalid UTF-8; truncated
            with pytest.raises(grpc.RpcError) as caught:
                call(raw, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
            assert "ModelInferRequest" in caught.value.details()
    assert _count(plain, "grpc", "400", model="") == before + 2
