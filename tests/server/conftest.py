"""A real `edgecloud serve` process for the server tests, torn down afterwards."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from edgecloud import DynamicBatching, ModelRepository

from ..models import make_repo

TOKEN = "s3cret-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    repo: ModelRepository
    token: str | None
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=15)


def start_server(
    repo: ModelRepository,
    tmp: Path,
    *extra: str,
    token: str | None = None,
    scheme: str = "http",
    verify: bool | str = True,
) -> Server:
    http_port, grpc_port = free_port(), free_port()
    args = [
        sys.executable, "-m", "edgecloud.cli", "serve", "--repo", str(repo.root),
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra,
    ]  # fmt: skip
    if token:
        (tmp / "token").write_text(token + "\n")
        args += ["--token-file", str(tmp / "token")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with (tmp / f"server-{http_port}.log").open("wb") as log:
        process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)
    server = Server(process, http_port, grpc_port, repo, token, tmp / f"server-{http_port}.log")
    if isinstance(verify, str):
        verify = ssl.create_default_context(cafile=verify)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {server.log.read_text()}")
        try:
            ready = f"{scheme}://127.0.0.1:{http_port}/v2/health/ready"
            if httpx.get(ready, timeout=1, verify=verify).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError("server did not become ready in 30 s")


def add_batching(repo: ModelRepository) -> None:
    """Give the affine model a queue delay so concurrent requests really merge."""
    path = repo.root / "affine" / "config.yaml"
    config = repo.config("affine").model_copy(
        update={"dynamic_batching": DynamicBatching(max_queue_delay_us=20000)}
    )
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on the tiny models, with a bearer token."""
    tmp = tmp_path_factory.mktemp("server")
    repo = make_repo(tmp)
    add_batching(repo)
    broken = repo.root / "broken" / "1"
    broken.mkdir(parents=True)
    (repo.root / "broken" / "config.yaml").write_text("name: broken\ninputs: [\n")
    running = start_server(repo, tmp, "--max-request-mb", "0.05", token=TOKEN)
    yield running
    running.stop()
