"""Starting, refusing bad settings, and stopping gracefully on SIGTERM."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from edgecloud import ModelRepository

from ..models import make_repo
from .conftest import start_server


def test_sigterm_drains_in_flight_requests_and_exits(tmp_path: Path) -> None:
    server = start_server(make_repo(tmp_path), tmp_path)
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    answered: list[int] = []

    def keep_sending() -> list[object]:
        outcomes: list[object] = []
        with httpx.Client(timeout=10) as http:
            while True:
                try:
                    status = http.post(
                        server.url + "/v2/models/affine/infer", json=body
                    ).status_code
                except httpx.TransportError as exc:  # refused or closed once shutting down
                    outcomes.append(exc)
                    return outcomes
                outcomes.append(status)
                answered.append(status)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(keep_sending) for _ in range(8)]
        deadline = time.monotonic() + 20
        while len(answered) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = server.process.wait(timeout=15)
        stopped_in = time.monotonic() - started
        outcomes = [o for f in futures for o in f.result(timeout=20)]
    statuses = [o for o in outcomes if isinstance(o, int)]
    assert len(statuses) >= 50
    assert set(statuses) == {200}, "a request was answered with an error during shutdown"
    assert stopped_in < 10
    assert code in (0, -signal.SIGTERM)


def test_serve_refuses_an_empty_repository(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "serve", "--repo", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "edgecloud zoo build" in result.stderr


def test_serve_reports_a_bad_token_file(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "serve", "--repo", str(repo.root),
         "--token-file", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "cannot read a token" in result.stderr
    assert "Traceback" not in result.stderr


def test_repository_object_is_unchanged_by_serving(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in repo.root.rglob("*") if p.is_file()}
    server = start_server(repo, tmp_path)
    server.stop()
    after = {
        p: p.stat().st_mtime_ns for p in ModelRepository(repo.root).root.rglob("*") if p.is_file()
    }
    assert before == after
