"""Kind 8: every endpoint answers the body the Open Inference Protocol defines.

The kind: a standard client parses what the specification promises, so each
endpoint of the REST specification's table (kserve/open-inference-protocol,
specification/protocol/inference_rest.md) must answer its JSON object —
exactly its keys, with their JSON types — in the good case, the not-ready /
not-found case and as the ``{"error": $string}`` object on failure; the
content type must match the body. Walked on the server and on the edge
gateway (the same front end over a deployment), parsed with a JSON parser;
Triton's clients (HTTP and gRPC) must keep working on top.

Members of the kind "health, readiness and metadata agree with what is served":

* one version parser (``version_number``) for infer, ready and metadata, on
  REST and gRPC: ``latest`` is served everywhere; a malformed version or an
  unserved number is 404 (NOT_FOUND) for infer and metadata and not ready
  (503 with the ready body; gRPC ``ready: false``) for ready;
* gRPC ModelMetadata for an unknown version has REST's class (NOT_FOUND, 404);
* the gateway's readiness is the server's computation: a model whose config
  does not match its graph, or a version not served, is not ready on both;
* a known path with another method is 405 with ``Allow`` (HEAD included),
  on every path of the router, on the server and the gateway.
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
from edgecloud.proto import inference_pb2 as pb
from edgecloud.proto import inference_pb2_grpc as pb_grpc
from edgecloud.server.host import ModelHost
from edgecloud.server.http import HttpApp
from edgecloud.server.launch import ServerProcess
from edgecloud.server.settings import ServerSettings

from ..models import affine_config, affine_onnx, make_repo
from ..server.conftest import Server, start_server
from ._server_helpers import (
    adversarial_gateway,
    adversarial_repo,
    adversarial_server,
    start_gateway,
)

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


# -- one version parser: infer, ready, metadata; REST and gRPC ------------------------

#: (version in the path, REST status of infer, of ready, of metadata). ``affine``
#: serves version 2 only (versions 1 and 2 on disk, policy: the newest).
MALFORMED = ["+2", "v2", "%202", "2%20", "%D9%A2", "-1", "1" * 5000, "99999999999999999999"]
VERSIONS = [
    ("2", 200, 200, 200),
    ("latest", 200, 200, 200),
    ("1", 404, 503, 404),
    ("77", 404, 503, 404),
    *[(bad, 404, 503, 404) for bad in MALFORMED],
]


@pytest.mark.parametrize(
    ("version", "infer", "ready", "metadata"), VERSIONS, ids=[v[0][:12] for v in VERSIONS]
)
def test_every_endpoint_reads_a_version_the_same_way(
    adversarial_server: Server, version: str, infer: int, ready: int, metadata: int
) -> None:
    base = f"/v2/models/affine/versions/{version}"
    got = {
        "infer": answer(adversarial_server.url, "POST", base + "/infer", GOOD_INFER),
        "ready": answer(adversarial_server.url, "GET", base + "/ready", None),
        "metadata": answer(adversarial_server.url, "GET", base, None),
    }
    assert {k: v[0] for k, v in got.items()} == {
        "infer": infer, "ready": ready, "metadata": metadata,
    }, got  # fmt: skip
    if infer == 200:
        assert got["infer"][1]["model_version"] == "2"
        assert got["metadata"][1]["versions"] == ["2"]
        assert got["ready"][1] == {"name": "affine", "ready": True}
    for status, body in got.values():
        if status == 404:
            ERROR(body)
            if version in MALFORMED:
                assert "versions are numbers or 'latest'" in body["error"], body


GRPC_VERSIONS = [("2", True), ("latest", True), ("1", False), ("77", False), ("+2", False),
                 ("v2", False), ("\u0662", False), ("1" * 5000, False)]  # fmt: skip


@pytest.mark.parametrize(
    ("version", "served"), GRPC_VERSIONS, ids=[v[0][:12] for v in GRPC_VERSIONS]
)
def test_grpc_reads_a_version_as_rest_does(
    adversarial_server: Server, version: str, served: bool
) -> None:
    """Ready, metadata and infer over gRPC: served versions answer, the rest is
    NOT_FOUND (REST's 404; metadata used to answer INVALID_ARGUMENT)."""
    import grpc

    with grpc.insecure_channel(adversarial_server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        ready = stub.ModelReady(pb.ModelReadyRequest(name="affine", version=version), timeout=10)
        assert ready.ready is served
        request = pb.ModelInferRequest(model_name="affine", model_version=version)
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        tensor.contents.fp32_contents.extend([0.5] * 4)
        calls = [
            lambda: stub.ModelMetadata(
                pb.ModelMetadataRequest(name="affine", version=version), timeout=10
            ),
            lambda: stub.ModelInfer(request, timeout=10),
        ]
        for call in calls:
            if served:
                call()
                continue
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
        if served:
            meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="affine", version=version))
            assert list(meta.versions) == ["2"]


# -- 405 with Allow on every path of the router ---------------------------------------

#: Every path the router serves, with the one method it takes.
ROUTES = [
    ("/v2/health/live", "GET"),
    ("/v2/health/ready", "GET"),
    ("/v2", "GET"),
    ("/v2/models/affine", "GET"),
    ("/v2/models/affine/versions/2", "GET"),
    ("/v2/models/affine/ready", "GET"),
    ("/v2/models/affine/versions/2/ready", "GET"),
    ("/v2/models/affine/config", "GET"),
    ("/v2/models/affine/infer", "POST"),
    ("/v2/models/affine/versions/2/infer", "POST"),
    ("/metrics", "GET"),
    ("/openapi.json", "GET"),
    ("/v2/openapi.json", "GET"),
]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def wrong_methods(url: str) -> list[tuple[str, str, int, str, bytes]]:
    out = []
    for path, allowed in ROUTES:
        for method in METHODS:
            if method != allowed:
                reply = httpx.request(method, url + path, timeout=10)
                allow = reply.headers.get("allow", "")
                out.append((path, method, reply.status_code, allow, reply.content))
    return out


def check_405s(got: list[tuple[str, str, int, str, bytes]]) -> None:
    allowed = dict(ROUTES)
    for path, method, status, allow, body in got:
        assert (status, allow) == (405, allowed[path]), (path, method, status, allow, body)
        if method != "HEAD":  # a HEAD answer has no body
            ERROR(json.loads(body))
            assert method in json.loads(body)["error"]


def test_server_answers_405_with_allow_on_every_path(adversarial_server: Server) -> None:
    check_405s(wrong_methods(adversarial_server.url))


def test_gateway_answers_405_with_allow_on_every_path(adversarial_gateway: ServerProcess) -> None:
    check_405s(wrong_methods(adversarial_gateway.url))


def test_unknown_paths_stay_404(adversarial_server: Server) -> None:
    for path in ("/v2/health/other", "/v2/models/affine/explain", "/v2/models/affine/ready/x",
                 "/v2/models/affine/versions", "/v3"):  # fmt: skip
        for method in ("GET", "POST"):
            status, body = answer(adversarial_server.url, method, path, None)
            assert status == 404, (method, path, body)
            ERROR(body)


# -- the gateway's readiness is the server's -----------------------------------------


@pytest.fixture(scope="module")
def mismatch_pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server and a gateway in front of it, on a repository where ``mismatch``'s
    config does not match its graph (it declares input ``features``; the graph takes ``x``)."""
    tmp = tmp_path_factory.mktemp("mismatch")
    repo = make_repo(tmp)
    config = affine_config("mismatch")
    config.inputs[0] = config.inputs[0].model_copy(update={"name": "features"})
    repo.add_version("mismatch", affine_onnx(tmp / "mismatch.onnx"), config=config)
    server = start_server(repo, tmp)
    try:
        gateway = start_gateway(repo, server.url, tmp)
    except BaseException:
        server.stop()
        raise
    yield server, gateway
    gateway.stop()
    server.stop()


READY_CASES = [
    ("affine", "", 200),
    ("affine", "/versions/2", 200),
    ("affine", "/versions/latest", 200),
    ("affine", "/versions/1", 503),
    ("affine", "/versions/99", 503),
    ("affine", "/versions/v2", 503),
    ("two-input", "", 200),
    ("mismatch", "", 503),
    ("mismatch", "/versions/1", 503),
    ("mismatch", "/versions/latest", 503),
    ("ghost", "", 404),
]


@pytest.mark.parametrize(("model", "version", "status"), READY_CASES)
def test_gateway_readiness_is_the_servers(
    mismatch_pair: Any, model: str, version: str, status: int
) -> None:
    server, gateway = mismatch_pair
    path = f"/v2/models/{model}{version}/ready"
    on_server = answer(server.url, "GET", path, None)
    on_gateway = answer(gateway.url, "GET", path, None)
    assert on_server[0] == on_gateway[0] == status, (on_server, on_gateway)
    if status == 404:  # the messages name the server or the gateway
        ERROR(on_server[1])
        ERROR(on_gateway[1])
    else:
        assert on_server[1] == on_gateway[1] == {"name": model, "ready": status == 200}


def test_a_model_not_ready_is_not_served_either(mismatch_pair: Any) -> None:
    """Ready and infer agree on the gateway: not ready, and infer does not answer 200."""
    _, gateway = mismatch_pair
    body = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                        "data": [0.5] * 4}]}  # fmt: skip
    status, parsed = answer(gateway.url, "POST", "/v2/models/mismatch/infer", body)
    assert status == 503, parsed
    assert answer(gateway.url, "GET", "/v2/models/mismatch/ready", None)[0] == 503
