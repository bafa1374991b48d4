"""A real `edgecloud serve` process for the server tests, torn down afterwards."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from edgecloud import DynamicBatching, ModelRepository
from edgecloud.server.launch import free_port, serve_process

from ..models import make_repo

TOKEN = "s3cret-token"


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
    verify: str | None = None,
) -> Server:
    """A real ``edgecloud serve`` with HTTP and gRPC on free ports, once ready."""
    http_port, grpc_port = free_port(), free_port()
    args = list(extra)
    if token:
        (tmp / "token").write_text(token + "\n")
        args += ["--token-file", str(tmp / "token")]
    log = tmp / f"server-{http_port}.log"
    started = serve_process(
        repo.root, http_port=http_port, grpc_port=grpc_port, extra=args, log=log,
        scheme=scheme, cafile=verify,
    )  # fmt: skip
    return Server(started.process, http_port, grpc_port, repo, token, log)


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
