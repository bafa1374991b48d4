"""RemoteBackend against a real edgecloud server process."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edgecloud import (
    AuthenticationError,
    DeadlineExceededError,
    InferRequest,
    InvalidRequestError,
    ModelNotFoundError,
    RemoteBackend,
    RequestContext,
    UnavailableError,
)

from ..models import affine_reference
from .conftest import TOKEN, Server, free_port

X = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_reference_and_is_traced(server: Server, binary: bool) -> None:
    with RemoteBackend(server.url, token=TOKEN, binary=binary) as remote:
        response = remote.infer(InferRequest("affine", {"x": X}, id="q1"))
    np.testing.assert_allclose(response.outputs["y"], affine_reference(X)[0], rtol=1e-5)
    assert response.id == "q1" and response.version == "2"
    (span,) = response.trace.spans
    assert span.kind == "network" and span.seconds > 0
    assert span.bytes_up >= X.nbytes and span.bytes_down > 0
    assert response.trace.served_by == f"remote:{server.url}"


def test_requested_outputs_and_versions(server: Server) -> None:
    with RemoteBackend(server.url, token=TOKEN) as remote:
        response = remote.infer(InferRequest("affine", {"x": X}, version="2", outputs=["z"]))
    assert list(response.outputs) == ["z"]
    np.testing.assert_allclose(response.outputs["z"].sum(axis=1), 1.0, rtol=1e-5)


def test_async_calls_share_a_pool(server: Server) -> None:
    async def run() -> list[np.ndarray]:
        remote = RemoteBackend(server.url, token=TOKEN)
        try:
            requests = [InferRequest("affine", {"x": X[i : i + 1]}) for i in range(5)]
            responses = await asyncio.gather(*(remote.infer_async(r) for r in requests))
        finally:
            await remote.aclose()
        return [r.outputs["y"] for r in responses]

    results = asyncio.run(run())
    np.testing.assert_allclose(np.concatenate(results), affine_reference(X)[0], rtol=1e-5)


def test_idempotency_key_travels(server: Server) -> None:
    context = RequestContext(idempotency_key="remote-key-1")
    with RemoteBackend(server.url, token=TOKEN) as remote:
        first = remote.infer(InferRequest("affine", {"x": X}, context=context))
        second = remote.infer(InferRequest("affine", {"x": X}, context=context))
    assert "idempotent_replay" not in first.parameters
    assert second.parameters["idempotent_replay"] is True
    np.testing.assert_array_equal(first.outputs["y"], second.outputs["y"])


def test_server_errors_become_typed_errors(server: Server) -> None:
    with RemoteBackend(server.url, token=TOKEN) as remote:
        with pytest.raises(ModelNotFoundError, match="no model 'ghost'"):
            remote.infer(InferRequest("ghost", {"x": X}))
        with pytest.raises(InvalidRequestError, match="expects shape"):
            remote.infer(InferRequest("affine", {"x": X[:, :3].copy()}))
    with RemoteBackend(server.url, token="wrong") as remote, pytest.raises(AuthenticationError):
        remote.infer(InferRequest("affine", {"x": X}))


def test_dead_server_is_unavailable_and_not_ready() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with RemoteBackend(url, timeout=2) as remote:
        assert not remote.ready()
        with pytest.raises(UnavailableError, match="unreachable"):
            remote.infer(InferRequest("affine", {"x": X}))


def test_passed_deadline_is_not_sent(server: Server) -> None:
    context = RequestContext.with_timeout(-1.0)
    with RemoteBackend(server.url, token=TOKEN) as remote, pytest.raises(DeadlineExceededError):
        remote.infer(InferRequest("affine", {"x": X}, context=context))


def test_metadata_and_readiness(server: Server) -> None:
    with RemoteBackend(server.url, token=TOKEN) as remote:
        assert remote.ready() and remote.ready("affine")
        assert remote.metadata("affine")["inputs"][0]["shape"] == [-1, 4]
        with pytest.raises(ModelNotFoundError):
            remote.metadata("ghost")


def test_grpc_transport_matches_and_maps_errors(server: Server) -> None:
    with RemoteBackend(f"grpc://{server.grpc_address}", token=TOKEN) as remote:
        assert remote.ready() and remote.ready("affine") and not remote.ready("broken")
        assert remote.metadata("affine")["inputs"][0]["shape"] == [-1, 4]
        response = remote.infer(InferRequest("affine", {"x": X}, outputs=["y"], id="g1"))
        np.testing.assert_allclose(response.outputs["y"], affine_reference(X)[0], rtol=1e-5)
        assert response.id == "g1" and response.trace.spans[0].bytes_up >= X.nbytes
        with pytest.raises(ModelNotFoundError, match="no model 'ghost'"):
            remote.infer(InferRequest("ghost", {"x": X}))
        with pytest.raises(InvalidRequestError, match="expects shape"):
            remote.infer(InferRequest("affine", {"x": X[:, :3].copy()}))
        replay = RequestContext(idempotency_key="grpc-key")
        remote.infer(InferRequest("affine", {"x": X}, context=replay))
        again = remote.infer(InferRequest("affine", {"x": X}, context=replay))
        assert again.parameters["idempotent_replay"] is True
    with (
        RemoteBackend(f"grpc://{server.grpc_address}", token="nope") as remote,
        pytest.raises(AuthenticationError),
    ):
        remote.infer(InferRequest("affine", {"x": X}))


def test_grpc_dead_server_is_unavailable() -> None:
    with RemoteBackend(f"grpc://127.0.0.1:{free_port()}", timeout=2) as remote:
        assert not remote.ready()
        with pytest.raises((UnavailableError, DeadlineExceededError)):
            remote.infer(InferRequest("affine", {"x": X}))


def test_unknown_url_scheme_is_a_config_error() -> None:
    from edgecloud import ConfigError

    with pytest.raises(ConfigError, match="http"):
        RemoteBackend("ftp://example")


def test_a_rejected_request_never_switches_a_binary_server_to_json(server: Server) -> None:
    """A 4xx about the request (here a 422: a key reused with another payload)
    must not be read as "this server lacks binary tensors" when its metadata
    advertises them: the client would speak JSON to it for good."""
    key = RequestContext(idempotency_key="remote-binary-422")
    with RemoteBackend(server.url, token=TOKEN) as remote:
        remote.infer(InferRequest("affine", {"x": X}, context=key))
        with pytest.raises(InvalidRequestError, match="422"):
            remote.infer(InferRequest("affine", {"x": X + 1}, context=key))
        assert remote.binary
        remote.infer(InferRequest("affine", {"x": X}))
        assert remote.binary
