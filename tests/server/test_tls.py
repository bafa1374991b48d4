"""TLS: HTTPS and gRPC over TLS with a self-signed certificate made by the test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgecloud import InferRequest, RemoteBackend

from ..models import affine_reference, make_repo
from .conftest import start_server

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_and_grpcs(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    repo = make_repo(tmp_path)
    server = start_server(
        repo, tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), scheme="https",
        verify=str(cert),
    )  # fmt: skip
    x = np.ones((2, 4), np.float32)
    try:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{server.http_port}/v2/health/ready", timeout=2)
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused
            httpx.get(f"https://127.0.0.1:{server.http_port}/v2/health/ready", timeout=2)
        url = f"https://127.0.0.1:{server.http_port}"
        with RemoteBackend(url, verify=str(cert)) as remote:
            y = remote.infer(InferRequest("affine", {"x": x})).outputs["y"]
        np.testing.assert_allclose(y, affine_reference(x)[0], rtol=1e-5)
        grpcs = f"grpcs://localhost:{server.grpc_port}"
        with RemoteBackend(grpcs, root_certificates=cert.read_bytes()) as remote:
            z = remote.infer(InferRequest("affine", {"x": x})).outputs["z"]
        np.testing.assert_allclose(z, affine_reference(x)[1], rtol=1e-5)
    finally:
        server.stop()
