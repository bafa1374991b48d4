"""edgecloud's RemoteBackend against an independent v2 server: a real MLServer process."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgecloud import InferRequest, ModelNotFoundError, RemoteBackend
from edgecloud.server.launch import ServerProcess

from ..conftest import ROOT
from ..models import affine_onnx
from .conftest import free_port

sys.path.insert(0, str(ROOT / "bench"))
from peers.mlserver import start_mlserver

pytestmark = [pytest.mark.slow, pytest.mark.network]


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    tmp = tmp_path_factory.mktemp("mlserver")
    model = affine_onnx(tmp / "affine.onnx")
    server = start_mlserver(model, "affine", tmp / "work", free_port(), free_port(), free_port())
    yield server, model
    server.stop()


def test_remote_backend_falls_back_to_json_and_matches(
    mlserver: tuple[ServerProcess, Path],
) -> None:
    server, model = mlserver
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    expected = ort.InferenceSession(str(model)).run(None, {"x": x})
    with RemoteBackend(server.url) as remote:
        assert remote.binary
        response = remote.infer(InferRequest("affine", {"x": x}))
        assert not remote.binary, "MLServer has no binary extension: the client must switch"
        again = remote.infer(InferRequest("affine", {"x": x}))
    np.testing.assert_allclose(response.outputs["y"], expected[0], rtol=1e-5)
    np.testing.assert_allclose(again.outputs["z"], expected[1], rtol=1e-5)
    assert response.model == "affine" and response.trace.spans[0].bytes_down > 0


def test_remote_backend_maps_mlserver_errors(mlserver: tuple[ServerProcess, Path]) -> None:
    server, _ = mlserver
    with RemoteBackend(server.url, binary=False) as remote:
        assert remote.ready() and remote.ready("affine")
        assert remote.metadata("affine")["name"] == "affine"
        with pytest.raises(ModelNotFoundError, match="404"):
            remote.infer(InferRequest("ghost", {"x": np.zeros((1, 4), np.float32)}))
