from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgecloud import UnavailableError
from edgecloud.server.launch import free_port, launch, serve_process

from ..models import make_repo


def test_a_process_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('boom: no models'); sys.exit(3)"]
    with pytest.raises(UnavailableError, match="exited with 3: boom: no models"):
        launch(argv, f"http://127.0.0.1:{free_port()}", log=tmp_path / "log")


def test_serve_process_is_ready_and_stops(tmp_path: Path) -> None:
    server = serve_process(make_repo(tmp_path).root)
    assert server.process.poll() is None and server.url.startswith("http://127.0.0.1:")
    assert server.stop() is not None and server.process.poll() is not None
    assert server.stop() == 0.0  # stopping twice is harmless
