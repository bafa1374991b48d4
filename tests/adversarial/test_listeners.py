"""Kind 7: every listener is the server's alone, and every setting does what it says.

The kind: ``edgecloud serve`` (HTTP and gRPC) and ``edgecloud edge`` bind
their ports exclusively — a port another process holds, even one that
allows sharing (grpc sets SO_REUSEPORT by default), is refused with one line
naming the port (exit 1, no traceback), and no server started later can
share ours; an address that cannot be had (unknown host, both protocols on
one port) is the same one line. Settings precedence (flag > environment >
file > default) is tested field by field in tests/server/test_settings.py;
here the real processes honour it.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from edgecloud import ModelRepository
from edgecloud.server.launch import free_port, launch

from ..models import make_repo
from ..server.conftest import Server, start_server


def edgecloud(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        "COLUMNS": "200",
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", *map(str, args)],
        capture_output=True, text=True, timeout=60, env=environment,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    text = result.stderr + result.stdout
    assert "Traceback" not in text and "internal error" not in text, text
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    error = [line for line in lines if line.startswith("error:")]
    assert len(error) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error[0], (fragment, error[0])


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    return make_repo(tmp_path_factory.mktemp("listeners"))


@pytest.fixture
def grpc_squatter() -> Iterator[int]:
    """Another gRPC server (grpc's defaults: SO_REUSEPORT on) holding a port."""
    server = grpc.server(ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


def sharing_listener(port: int = 0) -> socket.socket:
    """A plain TCP listener that allows sharing (SO_REUSEADDR and SO_REUSEPORT)."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def test_serve_refuses_a_grpc_port_another_grpc_server_holds(
    repo: ModelRepository, grpc_squatter: int
) -> None:
    result = edgecloud(
        "serve", "--repo", repo.root, "--http-port", free_port(), "--grpc-port", grpc_squatter
    )
    assert_one_line_error(result, f"127.0.0.1:{grpc_squatter}", "in use", "--grpc-port")


@pytest.mark.parametrize("sharing", [False, True], ids=["plain", "so_reuseport"])
def test_serve_refuses_a_taken_http_port(repo: ModelRepository, sharing: bool) -> None:
    holder = sharing_listener() if sharing else socket.create_server(("127.0.0.1", 0))
    with holder:
        port = holder.getsockname()[1]
        result = edgecloud("serve", "--repo", repo.root, "--http-port", port, "--grpc-port", -1)
    assert_one_line_error(result, f"127.0.0.1:{port}", "in use", "--http-port")


def test_edge_refuses_a_taken_port(repo: ModelRepository, tmp_path: Path) -> None:
    deployment = tmp_path / "d.yaml"
    deployment.write_text(f"repository: {repo.root}\nroot: local\n")
    with sharing_listener() as holder:
        port = holder.getsockname()[1]
        result = edgecloud("edge", "-d", deployment, "--port", port)
    assert_one_line_error(result, f"127.0.0.1:{port}", "in use", "--port")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--host", "no-such-host.invalid"], ["no-such-host.invalid", "--host"]),
        (["--host", "192.0.2.1"], ["192.0.2.1", "not an address of this machine"]),
        (["--http-port", "9100", "--grpc-port", "9100"], ["both 9100"]),
        (["--tls-cert", "/no/cert.pem", "--tls-key", "/no/key.pem"], ["/no/cert.pem", "TLS"]),
        (["--tls-cert", "{garbage}", "--tls-key", "{garbage}"], ["garbage.pem", "TLS"]),
    ],
    ids=["unknown-host", "foreign-address", "same-port", "missing-tls", "garbage-tls"],
)
def test_other_bind_failures_are_one_clear_line(
    repo: ModelRepository, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    args = [a.replace("{garbage}", str(garbage)) for a in args]
    assert_one_line_error(edgecloud("serve", "--repo", repo.root, *args), *fragments)


def test_no_later_server_can_share_our_ports(repo: ModelRepository, tmp_path: Path) -> None:
    running: Server = start_server(repo, tmp_path, token="only-for-us")
    try:
        intruder = grpc.server(ThreadPoolExecutor(1))  # grpc's defaults: SO_REUSEPORT on
        with pytest.raises(RuntimeError, match="Failed to bind"):
            intruder.add_insecure_port(running.grpc_address)
        with pytest.raises(OSError):
            sharing_listener(running.http_port)
        second = edgecloud(
            "serve", "--repo", repo.root,
            "--http-port", free_port(), "--grpc-port", running.grpc_port,
        )  # fmt: skip
        assert_one_line_error(second, running.grpc_address, "in use")
        # Every gRPC call still reaches the token-protected server.
        with grpc.insecure_channel(running.grpc_address) as channel:
            from edgecloud.proto import inference_pb2 as pb
            from edgecloud.proto import inference_pb2_grpc as pb_grpc

            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            for _ in range(20):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        running.stop()


def test_environment_and_file_reach_the_real_server(repo: ModelRepository, tmp_path: Path) -> None:
    """No --http-port flag: the environment's port wins over the file's, the flag over both."""
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    settings = tmp_path / "server.yaml"
    settings.write_text(f"http_port: {file_port}\ngrpc_port: -1\nrequest_timeout_s: 7\n")
    env = {**os.environ, "EDGECLOUD_SERVER_HTTP_PORT": str(env_port)}
    base = [sys.executable, "-m", "edgecloud.cli", "serve", "--repo", str(repo.root)]
    process = launch(
        [*base, "--config", str(settings)], f"http://127.0.0.1:{env_port}", env=env,
        log=tmp_path / "env.log",
    )  # fmt: skip
    try:
        assert httpx.get(f"http://127.0.0.1:{env_port}/v2/health/live").status_code == 200
    finally:
        process.stop()
    process = launch(
        [*base, "--config", str(settings), "--http-port", str(flag_port)],
        f"http://127.0.0.1:{flag_port}", env=env, log=tmp_path / "flag.log",
    )  # fmt: skip
    try:
        assert httpx.get(f"http://127.0.0.1:{flag_port}/v2/health/live").status_code == 200
    finally:
        process.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_gateway_honours_tls_and_token_from_the_environment(
    repo: ModelRepository, tmp_path: Path
) -> None:
    """Settings the gateway takes from the environment do what they say (not silently HTTP)."""
    from ..server.test_tls import self_signed

    cert, key = self_signed(tmp_path)
    deployment = tmp_path / "d.yaml"
    deployment.write_text(f"repository: {repo.root}\nroot: local\n")
    port = free_port()
    env = {
        **os.environ,
        "EDGECLOUD_SERVER_TLS_CERT": str(cert),
        "EDGECLOUD_SERVER_TLS_KEY": str(key),
        "EDGECLOUD_SERVER_TOKEN": "gateway-token",
    }
    argv = [
        sys.executable,
        "-m",
        "edgecloud.cli",
        "edge",
        "-d",
        str(deployment),
        "--port",
        str(port),
    ]
    url = f"https://127.0.0.1:{port}"
    process = launch(argv, url, env=env, cafile=str(cert), log=tmp_path / "edge.log")
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        assert httpx.get(f"{url}/v2/health/live", verify=trust).json() == {"live": True}
        assert httpx.get(f"{url}/v2", verify=trust).status_code == 401
        headers = {"Authorization": "Bearer gateway-token"}
        assert httpx.get(f"{url}/v2", verify=trust, headers=headers).status_code == 200
    finally:
        process.stop()
