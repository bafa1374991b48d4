"""Kind 8: every endpoint answers the body the Open Inference Protocol defines.

The kind: a standard client parses what the specification promises, so each
endpoint of the REST specification's table (kserve/open-inference-protocol,
specification/protocol/inference_rest.md) must answer its JSON object —
exactly its keys, with their JSON types — in the good case, the not-ready /
not-found case and as the ``{"error": $string}`` object on failure; the
content type must match the body. Walked on the server and on the edge
gateway (the same front end over a deployment), parsed with a JSON parser;
Triton's clients (HTTP and gRPC) must keep working on top.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from edgecloud import ModelRepository
from edgecloud.server.host import ModelHost
from edgecloud.server.http import HttpApp
from edgecloud.server.launch import ServerProcess
from edgecloud.server.settings import ServerSettings

from ..server.conftest import Server
from ._server_helpers import adversarial_gateway, adversarial_repo, adversarial_server

__all__ = ["adversarial_gateway", "adversarial_repo", "adversarial_server"]

Check = Callable[[Any], None]


def exactly(**types: type | tuple[type, ...]) -> Check:
    """A check that the body is an object with exactly these keys, of these JSON types."""

    def check(body: Any) -> None:
        assert isinstance(body, dict), body
        assert set(body) == set(types), f"keys {sorted(body)} != {sorted(types)}"
        for key, kind in types.items():
            assert isinstance(body[key], kind), f"{key}: {body[key]!r} is not {kind}"
            assert not (kind is not bool and isinstance(body[key], bool)), key

    return check


def at_least(required: dict[str, type], optional: dict[str, type]) -> Check:
    def check(body: Any) -> None:
        assert isinstance(body, dict), body
        assert set(required) <= set(body) <= set(required) | set(optional), sorted(body)
        for key, kind in {**required, **optional}.items():
            if key in body:
                assert isinstance(body[key], kind), f"{key}: {body[key]!r} is not {kind}"

    return check


def tensors(key: str, data: bool) -> Check:
    fields = {"name": str, "datatype": str, "shape": list}
    if data:
        fields["data"] = list

    def check(body: Any) -> None:
        for tensor in body[key]:
            at_least(fields, {"parameters": dict})(tensor)
            assert all(isinstance(d, int) and not isinstance(d, bool) for d in tensor["shape"])

    return check


def both(*checks: Check) -> Check:
    def check(body: Any) -> None:
        for c in checks:
            c(body)

    return check


ERROR = exactly(error=str)
LIVE = exactly(live=bool)
READY = exactly(ready=bool)
MODEL_READY = exactly(name=str, ready=bool)
SERVER_METADATA = both(exactly(name=str, version=str, extensions=list))
MODEL_METADATA = both(
    at_least({"name": str, "platform": str}, {"versions": list, "inputs": list, "outputs": list}),
    tensors("inputs", data=False),
    tensors("outputs", data=False),
)
INFER = both(
    at_least({"model_name": str, "outputs": list}, {"model_version": str, "id": str,
                                                     "parameters": dict}),
    tensors("outputs", data=True),
)  # fmt: skip

X = {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0.5] * 8}
GOOD_INFER = {"id": "42", "inputs": [X]}
BAD_INFER = {"inputs": [{**X, "data": [0.5] * 7}]}

#: The specification's endpoint table, each row with its good and failing cases:
#: (API, verb, path, request body, expected status, body check).
TABLE: list[tuple[str, str, str, Any, int, Check]] = [
    ("Inference", "POST", "/v2/models/affine/infer", GOOD_INFER, 200, INFER),
    ("Inference", "POST", "/v2/models/affine/versions/2/infer", GOOD_INFER, 200, INFER),
    ("Inference", "POST", "/v2/models/affine/infer", BAD_INFER, 400, ERROR),
    ("Inference", "POST", "/v2/models/ghost/infer", GOOD_INFER, 404, ERROR),
    ("Model Metadata", "GET", "/v2/models/affine", None, 200, MODEL_METADATA),
    ("Model Metadata", "GET", "/v2/models/affine/versions/2", None, 200, MODEL_METADATA),
    ("Model Metadata", "GET", "/v2/models/ghost", None, 404, ERROR),
    ("Model Metadata", "GET", "/v2/models/affine/versions/77", None, 404, ERROR),
    ("Server Ready", "GET", "/v2/health/ready", None, 200, READY),
    ("Server Live", "GET", "/v2/health/live", None, 200, LIVE),
    ("Server Metadata", "GET", "/v2", None, 200, SERVER_METADATA),
    ("Model Ready", "GET", "/v2/models/affine/ready", None, 200, MODEL_READY),
    ("Model Ready", "GET", "/v2/models/affine/versions/2/ready", None, 200, MODEL_READY),
    ("Model Ready", "GET", "/v2/models/affine/versions/77/ready", None, 503, MODEL_READY),
    ("Model Ready", "GET", "/v2/models/ghost/ready", None, 404, ERROR),
    ("(none)", "GET", "/v2/nothing/here", None, 404, ERROR),
    ("(none)", "DELETE", "/v2/models/affine", None, 405, ERROR),
]


def answer(url: str, verb: str, path: str, body: Any) -> tuple[int, Any]:
    reply = httpx.request(verb, url + path, json=body, timeout=30)
    assert reply.headers["content-type"] == "application/json"
    assert reply.content, f"{verb} {path}: empty body"
    return reply.status_code, json.loads(reply.content)


@pytest.mark.parametrize(
    ("api", "verb", "path", "body", "status", "check"),
    TABLE,
    ids=[f"{row[1]} {row[2]} {row[4]}" for row in TABLE],
)
def test_server_answers_the_specified_bodies(
    adversarial_server: Server,
    api: str,
    verb: str,
    path: str,
    body: Any,
    status: int,
    check: Check,
) -> None:
    got, parsed = answer(adversarial_server.url, verb, path, body)
    assert got == status, (api, parsed)
    check(parsed)
    if api == "Model Ready" and status != 404:
        assert parsed["name"] == "affine" and parsed["ready"] is (status == 200)
    if api == "Inference" and status == 200:
        assert parsed["id"] == "42" and parsed["model_name"] == "affine"


@pytest.mark.parametrize(
    ("api", "verb", "path", "body", "status", "check"),
    [row for row in TABLE if "/versions/" not in row[2]],
)
def test_gateway_answers_the_specified_bodies(
    adversarial_gateway: ServerProcess,
    api: str,
    verb: str,
    path: str,
    body: Any,
    status: int,
    check: Check,
) -> None:
    got, parsed = answer(adversarial_gateway.url, verb, path, body)
    assert got == status, (api, parsed)
    check(parsed)


def test_health_bodies_byte_for_byte(adversarial_server: Server) -> None:
    live = httpx.get(adversarial_server.url + "/v2/health/live")
    ready = httpx.get(adversarial_server.url + "/v2/health/ready")
    assert (live.status_code, live.content) == (200, b'{"live":true}')
    assert (ready.status_code, ready.content) == (200, b'{"ready":true}')


def test_not_ready_answers_its_body(adversarial_repo: ModelRepository) -> None:
    """Before the lifespan started (and after it ended) the server is live, not ready."""
    host = ModelHost(adversarial_repo, ServerSettings(grpc_port=None))
    host.load_all()
    app = HttpApp(host)

    async def probe() -> dict[str, tuple[int, bytes]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            replies = {p: await client.get(p) for p in ("/v2/health/live", "/v2/health/ready")}
        await host.close()
        return {p: (r.status_code, r.content) for p, r in replies.items()}

    replies = asyncio.run(probe())
    assert replies["/v2/health/live"] == (200, b'{"live":true}')
    assert replies["/v2/health/ready"] == (503, b'{"ready":false}')


def test_triton_http_client_keeps_working(adversarial_server: Server) -> None:
    client = triton_http.InferenceServerClient(adversarial_server.http_address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("affine") and client.is_model_ready("affine", "2")
    assert not client.is_model_ready("affine", "77")
    assert client.get_server_metadata()["name"] == "edgecloud"
    assert client.get_model_metadata("affine")["inputs"][0]["shape"] == [-1, 4]
    assert client.get_model_config("affine")["max_batch_size"] == 8
    tensor = triton_http.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    assert client.infer("affine", [tensor]).as_numpy("y").shape == (1, 3)


def test_triton_grpc_client_keeps_working(adversarial_server: Server) -> None:
    client = triton_grpc.InferenceServerClient(adversarial_server.grpc_address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("affine") and not client.is_model_ready("affine", "77")
    assert client.get_server_metadata().name == "edgecloud"
    assert client.get_model_metadata("affine").inputs[0].shape == [-1, 4]
