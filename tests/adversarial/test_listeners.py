"""Kind 7: every listener is the server's alone, and every setting does what it says.

The kind: ``edgecloud serve`` (HTTP and gRPC) and ``edgecloud edge`` bind
their ports exclusively — a port another process holds, even one that
allows sharing (grpc sets SO_REUSEPORT by default), is refused with one line
naming the port (exit 1, no traceback), and no server started later can
share ours; an address that cannot be had (unknown host, both protocols on
one port) is the same one line. Settings precedence (flag > environment >
file > default) is tested field by field in tests/server/test_settings.py;
here the real processes honour it.

Members added after the first round:

* settings that come as alternatives or pairs (``token`` / ``token_file``)
  resolve by the precedence of their source on the real server: a
  ``--token-file`` flag replaces the file's or the environment's ``token``;
* an unknown ``EDGECLOUD_SERVER_*`` variable stops ``serve`` and ``edge`` with
  one line naming it;
* IPv6 hosts (``::1``, ``::``) are bracketed for grpc and in the printed URLs,
  and a taken gRPC port on ``::`` is "in use", named as ``[::]:port``;
* port 0 ("pick a free one") prints the ports actually bound, for ``serve``
  (HTTP and gRPC) and ``edge``, and they answer.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


# -- alternatives resolve by source on the real server ---------------------------------


def status_with(url: str, token: str) -> int:
    return httpx.get(f"{url}/v2", headers={"Authorization": f"Bearer {token}"}).status_code


@pytest.mark.parametrize("old_from", ["file", "env"])
def test_token_file_flag_replaces_a_lower_token(
    repo: ModelRepository, tmp_path: Path, old_from: str
) -> None:
    """`token: old-secret` in --config (or EDGECLOUD_SERVER_TOKEN) and --token-file
    new.txt: the new token works, the old one is refused (it was the other way)."""
    config = tmp_path / "server.yaml"
    config.write_text("token: old-secret\n" if old_from == "file" else "{}\n")
    (tmp_path / "new.txt").write_text("new-secret\n")
    env = {**os.environ}
    if old_from == "env":
        env["EDGECLOUD_SERVER_TOKEN"] = "old-secret"
    port = free_port()
    argv = [
        sys.executable, "-m", "edgecloud.cli", "serve", "--repo", str(repo.root),
        "--http-port", str(port), "--grpc-port", "-1", "--config", str(config),
        "--token-file", str(tmp_path / "new.txt"),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    process = launch(argv, url, env=env, log=tmp_path / "token.log")
    try:
        assert (status_with(url, "new-secret"), status_with(url, "old-secret")) == (200, 401)
    finally:
        process.stop()


@pytest.mark.parametrize("command", ["serve", "edge"])
def test_an_unknown_environment_variable_stops_the_command(
    repo: ModelRepository, tmp_path: Path, command: str
) -> None:
    deployment = tmp_path / "d.yaml"
    deployment.write_text(f"repository: {repo.root}\nroot: local\n")
    args = ["--repo", repo.root] if command == "serve" else ["-d", deployment]
    result = edgecloud(command, *args, env={"EDGECLOUD_SERVER_HTTP_PROT": "9000"})
    assert_one_line_error(result, "EDGECLOUD_SERVER_HTTP_PROT", "EDGECLOUD_SERVER_HTTP_PORT")


# -- the printed addresses: IPv6 bracketed, port 0 resolved ---------------------------


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")


def start_announced(argv: list[str | Path], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start an edgecloud command; its process and the line announcing where it serves."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgecloud.cli", *map(str, argv)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        found = re.search(r"^edgecloud .* on \S+.*$", text, re.MULTILINE)
        if found:
            return process, found.group(0)
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {text}")
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise AssertionError(f"no announcement within 60 s: {log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=15)


def grpc_live(target: str) -> bool:
    from edgecloud.proto import inference_pb2 as pb
    from edgecloud.proto import inference_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        return bool(stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live)


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.0.1"),
        pytest.param("::1", marks=needs_ipv6),
        pytest.param("::", marks=needs_ipv6),
    ],
    ids=["ipv4", "ipv6-loopback", "ipv6-any"],
)
def test_serve_announces_the_ports_it_bound(
    repo: ModelRepository, tmp_path: Path, host: str
) -> None:
    """--http-port 0 --grpc-port 0: the printed URL and gRPC target are the bound
    ones (IPv6 bracketed), and both answer."""
    argv: list[str | Path] = ["serve", "--repo", repo.root, "--host", host,
                              "--http-port", "0", "--grpc-port", "0"]  # fmt: skip
    process, line = start_announced(argv, tmp_path / "serve.log")
    try:
        shown = f"[{host}]" if ":" in host else host
        found = re.search(
            rf"on (http://{re.escape(shown)}:(\d+)) and grpc ({re.escape(shown)}:(\d+))$", line
        )
        assert found, line
        url, http_port, target, grpc_port = found.groups()
        assert 0 not in (int(http_port), int(grpc_port)) and http_port != grpc_port, line
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
        assert grpc_live(target)
    finally:
        stop(process)


def test_edge_announces_the_port_it_bound(repo: ModelRepository, tmp_path: Path) -> None:
    deployment = tmp_path / "d.yaml"
    deployment.write_text(f"repository: {repo.root}\nroot: local\n")
    process, line = start_announced(["edge", "-d", deployment, "--port", "0"], tmp_path / "e.log")
    try:
        found = re.search(r"on (http://127\.0\.0\.1:(\d+))$", line)
        assert found and found.group(2) != "0", line
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{found.group(1)}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"{found.group(1)}/v2/health/live").json() == {"live": True}
    finally:
        stop(process)


@needs_ipv6
@pytest.mark.parametrize("holder", ["plain", "grpc"])
def test_a_taken_grpc_port_on_ipv6_any_is_in_use(repo: ModelRepository, holder: str) -> None:
    """--host :: with the gRPC port held (by a plain listener, or a gRPC server
    allowing SO_REUSEPORT): one line, "in use", the address bracketed."""
    if holder == "plain":
        squatter: Any = socket.create_server(("::", 0), family=socket.AF_INET6)
        port = squatter.getsockname()[1]
    else:
        squatter = grpc.server(ThreadPoolExecutor(1))
        port = squatter.add_insecure_port("[::]:0")
        squatter.start()
    try:
        result = edgecloud(
            "serve", "--repo", repo.root, "--host", "::",
            "--http-port", free_port(), "--grpc-port", port,
        )  # fmt: skip
    finally:
        squatter.close() if holder == "plain" else squatter.stop(None)
    assert_one_line_error(result, f"[::]:{port}", "in use", "--grpc-port")


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("::1", "[::1]:8001"),
        ("::", "[::]:8001"),
        ("[::1]", "[::1]:8001"),
        ("fe80::1%lo", "[fe80::1%lo]:8001"),
        ("::ffff:127.0.0.1", "[::ffff:127.0.0.1]:8001"),
        ("127.0.0.1", "127.0.0.1:8001"),
        ("0.0.0.0", "0.0.0.0:8001"),
        ("localhost", "localhost:8001"),
    ],
)
def test_addresses_are_written_as_urls_and_grpc_take_them(host: str, shown: str) -> None:
    from edgecloud.server.launch import address

    assert address(host, 8001) == shown
