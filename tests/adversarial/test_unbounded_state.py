"""Kind 6 (state half): no request leaves state behind that it did not earn.

The kind: anything a request names — a model, a version — must not become a
Prometheus series, a cache entry or a table row unless it exists, and what
does exist is held only while it is served. Checked: ``/metrics`` of the
server (HTTP and gRPC) and of the edge gateway keeps its series after 10,000
requests for models that do not exist (before the fix: one series per name,
a 242 MB scrape after 1,500 long names); LocalBackend's sessions and
ModelHost's batchers stay bounded while versions are hot-swapped in.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np

from edgecloud import InferRequest, LocalBackend
from edgecloud.proto import inference_pb2 as pb
from edgecloud.proto import inference_pb2_grpc as pb_grpc
from edgecloud.server.host import ModelHost
from edgecloud.server.launch import ServerProcess
from edgecloud.server.settings import ServerSettings

from ..models import affine_onnx, make_repo
from ..server.conftest import Server
from ._server_helpers import adversarial_gateway, adversarial_repo, adversarial_server

__all__ = ["adversarial_gateway", "adversarial_repo", "adversarial_server"]

REQUESTS = 10_000
CONCURRENCY = 16
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]}


def ghost_names(count: int) -> list[str]:
    """Distinct long model names nobody serves."""
    return [f"ghost-{i}-{secrets.token_hex(40)}" for i in range(count)]


def series(exposition: bytes) -> list[str]:
    """The exposition without its sample values: what must not grow."""
    return sorted(
        re.sub(r" [^ ]+$", "", line)
        for line in exposition.decode().splitlines()
        if line and not line.startswith("#")
    )


async def _flood_http(url: str, names: list[str]) -> set[int]:
    """POST an infer for each name over kept-alive HTTP/1.1 connections; the statuses seen.

    A bare asyncio client: 10,000 requests through httpx take ~50 s on two cores.
    """
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(BODY).encode()
    codes: set[int] = set()

    async def worker(share: list[str]) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for name in share:
                writer.write(
                    f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: {host}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    .encode() + body
                )  # fmt: skip
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                codes.add(int(head.split(" ", 2)[1]))
                length = re.search(r"(?im)^content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(worker(names[i::CONCURRENCY]) for i in range(CONCURRENCY)))
    return codes


async def _flood_grpc(address: str, names: list[str]) -> set[str]:
    codes: set[str] = set()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]

        async def worker(share: list[str]) -> None:
            for name in share:
                request = pb.ModelInferRequest(model_name=name)
                request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
                request.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
                try:
                    await stub.ModelInfer(request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    codes.add(exc.code().name)

        await asyncio.gather(*(worker(names[i::CONCURRENCY]) for i in range(CONCURRENCY)))
    return codes


def assert_metrics_unchanged_by(
    url: str, flood: Callable[[list[str]], Coroutine[Any, Any, set[Any]]]
) -> None:
    asyncio.run(flood(["ghost"]))  # creates the one series all unknown models share
    before = httpx.get(f"{url}/metrics").content
    flood_result = asyncio.run(flood(ghost_names(REQUESTS)))
    after = httpx.get(f"{url}/metrics").content
    assert flood_result in ({404}, {"NOT_FOUND"}), flood_result
    assert series(after) == series(before)
    assert len(after) < len(before) + 200, (len(before), len(after))  # only counters' digits
    assert b"ghost-" not in after


def test_server_http_metrics_do_not_grow(adversarial_server: Server) -> None:
    url = adversarial_server.url
    assert_metrics_unchanged_by(url, lambda names: _flood_http(url, names))


def test_server_grpc_metrics_do_not_grow(adversarial_server: Server) -> None:
    address = adversarial_server.grpc_address
    assert_metrics_unchanged_by(adversarial_server.url, lambda names: _flood_grpc(address, names))


def test_gateway_metrics_do_not_grow(adversarial_gateway: ServerProcess) -> None:
    url = adversarial_gateway.url
    assert_metrics_unchanged_by(url, lambda names: _flood_http(url, names))


def test_known_models_still_have_their_own_series(adversarial_server: Server) -> None:
    reply = httpx.post(f"{adversarial_server.url}/v2/models/affine/infer", json=BODY)
    assert reply.status_code == 200
    text = httpx.get(f"{adversarial_server.url}/metrics").text
    assert 'edgecloud_requests_total{code="200",model="affine",protocol="http"}' in text
    assert "ghost-" not in text


def test_local_backend_keeps_sessions_of_served_versions_only(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    onnx_file = affine_onnx(tmp_path / "again.onnx")
    x = np.ones((1, 4), np.float32)
    with LocalBackend(repo, warmup=False) as local:
        local.infer(InferRequest("affine", {"x": x}))
        for _ in range(12):
            version = repo.add_version("affine", onnx_file).version
            local.infer(InferRequest("affine", {"x": x}, version=str(version)))
            held = [(m.entry.name, m.entry.version) for m in local.loaded()]
            assert sorted(v for n, v in held if n == "affine") == [version]


def test_model_host_retires_batchers_of_unserved_versions(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    onnx_file = affine_onnx(tmp_path / "again.onnx")
    host = ModelHost(repo, ServerSettings(grpc_port=None, worker_threads=2))
    host.load_all()
    x = np.ones((1, 4), np.float32)

    async def run() -> list[int]:
        counts = []
        for _ in range(12):
            version = repo.add_version("affine", onnx_file).version
            await host.infer(InferRequest("affine", {"x": x}, version=str(version)))
            counts.append(len(host._batchers))
        await host.close()
        return counts

    counts = asyncio.run(run())
    assert max(counts) <= 2, counts  # affine's served version + two-input at most


def test_unserved_versions_leave_nothing(adversarial_server: Server) -> None:
    """A version that is not served is refused (never a 500) without loading or recording it."""
    url = f"{adversarial_server.url}/v2/models/affine/versions"
    for version in ("1", "77", "9" * 300, "9" * 5000, "+2", "%D9%A3"):
        reply = httpx.post(f"{url}/{version}/infer", json=BODY)
        assert reply.status_code == 404, reply.text
        assert httpx.get(f"{url}/{version}").status_code == 404
        ready = httpx.get(f"{url}/{version}/ready")
        assert (ready.status_code, ready.json()["ready"]) == (503, False)
    assert b"9" * 300 not in httpx.get(f"{adversarial_server.url}/metrics").content
