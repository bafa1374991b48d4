"""An update repository, a mirror serving it over real HTTP, and devices (python-tuf ngclient)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgecloud.fleet.keys import ROOT_FILE, new_signers, write_signers
from edgecloud.fleet.update_repo import UpdateRepository
from edgecloud.repository import ModelRepository

from ..models import make_repo


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Mirror:
    """A plain static HTTP server over ``root``: what an attacker controlling a mirror serves."""

    root: Path
    url: str

    def device(self, home: Path, root_bytes: bytes):  # type: ignore[no-untyped-def]
        """A device: python-tuf's Updater bootstrapped with ``root_bytes``, state in ``home``."""
        from tuf.ngclient import Updater

        (home / "metadata").mkdir(parents=True, exist_ok=True)
        (home / "downloads").mkdir(exist_ok=True)
        return Updater(
            str(home / "metadata"), f"{self.url}/metadata/", str(home / "downloads"),
            f"{self.url}/targets/", bootstrap=root_bytes,
        )  # fmt: skip


@pytest.fixture
def mirror_of() -> Iterator[object]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(root: Path) -> Mirror:
        handler = functools.partial(_Quiet, directory=str(root))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Mirror(root, f"http://127.0.0.1:{server.server_port}")

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@dataclass
class Fleet:
    models: ModelRepository
    keys: Path
    path: Path

    def repo(self, **kwargs: object) -> UpdateRepository:
        return UpdateRepository(self.path, self.keys, **kwargs)  # type: ignore[arg-type]

    @property
    def root_bytes(self) -> bytes:
        return (self.keys / ROOT_FILE).read_bytes()


def make_fleet(tmp: Path, **kwargs: object) -> Fleet:
    signers = new_signers()
    write_signers(tmp / "keys", signers)
    repo = UpdateRepository.create(tmp / "fleet", signers, **kwargs)  # type: ignore[arg-type]
    (tmp / "keys" / ROOT_FILE).write_bytes(repo.root_bytes())
    return Fleet(make_repo(tmp), tmp / "keys", tmp / "fleet")


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path)
