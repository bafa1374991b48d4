"""The agent under hostile conditions: a dripping mirror, a full or read-only disk, a corrupt
state file, a server that is down, a model name that is not published, a bad delta."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgecloud.backends.local import LocalBackend
from edgecloud.errors import ConfigError, DownloadError, UpdateStorageError
from edgecloud.fleet.agent import AgentSettings, UpdateAgent
from edgecloud.fleet.agent_state import AgentState
from edgecloud.fleet.download import RateFloor, fetch_target
from edgecloud.repository import ModelRepository
from edgecloud.tensors import InferRequest

from .agent_fixtures import RangeServer, TinyFleet, classifier_onnx, samples_npz
from .test_agent import events, make_agent

X = np.random.default_rng(5).standard_normal((2, 4)).astype(np.float32)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[TinyFleet, RangeServer]]:
    repo = TinyFleet(tmp_path / "fleet-repo")
    with RangeServer(repo.root) as server:
        yield repo, server


# -- an overall deadline on every transfer -------------------------------------------------


def test_rate_floor_cuts_a_transfer_that_falls_behind() -> None:
    now = [0.0]
    floor = RateFloor(1000.0, allowance_s=10.0, clock=lambda: now[0])
    now[0] = 9.0
    floor.add(1, "u")  # within the allowance: anything goes
    now[0] = 12.0
    floor.add(2000, "u")  # 2001 B >= 1000 B/s * 2 s
    now[0] = 14.0
    with pytest.raises(DownloadError, match=r"u: too slow .* minimum 1000 B/s"):
        floor.add(1, "u")  # 2002 B < 4000 B
    RateFloor(None, clock=lambda: now[0]).add(0, "u")  # None: no floor


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_rate_floor_refuses_a_nonsense_rate(rate: float) -> None:
    with pytest.raises(ConfigError, match="min_rate_bytes_s"):
        RateFloor(rate)


class DripServer:
    """Serves ``root`` at ``/fleet/`` honestly, except paths for which ``drip(path)`` is
    true: their body goes out one byte every ``gap_s`` (a mirror that never times out)."""

    def __init__(self, root: Path, drip: Callable[[str], bool], gap_s: float = 0.02) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answer = b"{}" * 500
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self._send(answer, drip(self.path))

            def _send(self, data: bytes, slowly: bool) -> None:
                if not slowly:
                    self.wfile.write(data)
                    return
                with contextlib.suppress(OSError):
                    for i in range(len(data)):
                        if server.stop.is_set():
                            return
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(gap_s)

            def do_GET(self) -> None:
                file = root / self.path.removeprefix("/fleet/")
                if not file.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self._send(data, drip(self.path))

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.stop = threading.Event()
        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_dripping_mirror_is_cut_and_the_prefix_kept(tmp_path: Path) -> None:
    data = os.urandom(20_000)
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "f").write_bytes(data)
    server = DripServer(tmp_path, lambda path: True)
    staging = tmp_path / "staging" / "f.part"
    try:
        started = time.monotonic()
        with httpx.Client(timeout=5.0) as client, pytest.raises(DownloadError, match="too slow"):
            fetch_target(
                client, f"{server.url}/fleet/targets/f", staging, length=len(data),
                sha256=hashlib.sha256(data).hexdigest(), min_rate_bytes_s=1000.0,
                allowance_s=0.3,
            )  # fmt: skip
        assert time.monotonic() - started < 3.0  # cut, not held for 400 s
    finally:
        server.close()
    kept = staging.read_bytes()
    assert 0 < len(kept) < len(data) and data.startswith(kept)  # resumable


def test_dripping_metadata_is_a_clear_failed_check(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, _ = fleet
    repo.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    server = DripServer(repo.root, lambda path: path.endswith("timestamp.json"))
    try:
        agent = make_agent(
            tmp_path, repo, server,  # type: ignore[arg-type]
            min_rate_bytes_s=2000.0, rate_allowance_s=0.3,
        )  # fmt: skip
        started = time.monotonic()
        [outcome] = agent.check()
        assert time.monotonic() - started < 5.0
    finally:
        server.close()
    assert outcome.action == "failed" and outcome.version is None
    assert "timestamp.json" in outcome.detail and "too slow" in outcome.detail
    agent.close()


def test_a_server_that_is_down_is_one_line_naming_it(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    agent = make_agent(tmp_path, repo, server)
    server.__exit__()
    [outcome] = agent.check()
    assert outcome.action == "failed"
    assert outcome.detail == f"cannot reach {server.url}/fleet/ (connection refused)"
    agent.close()


def test_an_unknown_model_is_named_with_the_published_ones(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    repo.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    repository = ModelRepository(tmp_path / "device-repo")
    settings = AgentSettings(server.url, ("clf", "clf-typo"), "dev-1", watch_requests=0)
    agent = UpdateAgent(
        repository, LocalBackend(repository, intra_op_threads=1), settings,
        state_dir=tmp_path / "state", trust_root=repo.root_bytes,
    )  # fmt: skip
    agent.start()
    outcomes = {o.model: o for o in agent.check()}
    assert outcomes["clf"].action == "updated"
    typo = outcomes["clf-typo"]
    assert typo.action == "failed"
    assert typo.detail == (
        "updates.models[1]: 'clf-typo' is not published on the fleet server (published: clf)"
    )
    agent.close()


# -- one policy for a state file that is not a state -----------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"{", b"", b"\xff\xfe", b"[]", b'{"clf": 5}', b'{"clf": {"active": "1"}}',
     b'{"clf": {"active": true}}', b'{"clf": {"bad": {"2": 1}}}'],
)  # fmt: skip
def test_a_corrupt_state_file_is_set_aside_and_rebuilt_from_disk(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer], content: bytes
) -> None:
    repo, server = fleet
    repo.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    agent = make_agent(tmp_path, repo, server)
    assert agent.check()[0].action == "updated"
    events(agent)  # drained
    agent.close()
    state = tmp_path / "state" / "agent.json"
    state.write_bytes(content)
    again = make_agent(tmp_path, repo, server)  # start() ran: serving again
    assert again.backend.infer(InferRequest("clf", {"x": X})).version == "1"
    [aside] = list(state.parent.glob("agent.json.corrupt-*"))
    assert aside.read_bytes() == content
    [warning] = [e for e in events(again) if e["event"] == "error"]
    assert "moved to agent.json.corrupt-" in str(warning["detail"])
    assert again.check()[0].action == "current"
    assert again.active("clf") == 1
    again.close()


def test_a_state_naming_a_version_not_on_disk_is_reported(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    repo.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    agent = make_agent(tmp_path, repo, server)
    agent.check()
    events(agent)
    agent.close()
    (tmp_path / "state" / "agent.json").write_text(json.dumps({"clf": {"active": 7}}))
    again = make_agent(tmp_path, repo, server)
    assert again.active("clf") == 1
    [warning] = [e for e in events(again) if e["event"] == "error"]
    assert "active version 7 is not on disk" in str(warning["detail"])
    again.close()


# -- storage that refuses writes (root: small tmpfs mounts) ---------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (needs root: skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_in_staging_is_one_line_and_the_update_retried(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    repo.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    with small_disk(tmp_path / "state" / "staging", "256k") as staging:
        agent = make_agent(tmp_path, repo, server)
        filler = staging / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as out:
            while True:
                out.write(b"\0" * 4096)
                out.flush()
        [outcome] = agent.check()
        assert outcome.action == "failed" and outcome.version is None
        assert "no space left on device (ENOSPC)" in outcome.detail
        assert agent.state("clf")["installing"] is None
        filler.unlink()
        [retried] = agent.check()
        assert retried.action == "updated" and retried.version == 1, retried
        agent.close()


def test_a_full_device_repository_installs_nothing_half(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    repo.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    repo.publish("clf", 2, classifier_onnx(2), samples=samples_npz() + b"\0" * 40_000)
    with small_disk(tmp_path / "device-repo", "16k"):
        agent = make_agent(tmp_path, repo, server)
        [outcome] = agent.check()
        assert outcome.action == "failed"
        assert "cannot write version 2 of clf: no space left on device (ENOSPC)" in outcome.detail
        assert not (agent.repository.root / "clf" / "2").exists()
        assert not list(agent.repository.root.glob("clf/.staging-*"))
        st = agent.state("clf")
        assert st["active"] is None and st["installing"] is None
        agent.close()


def test_a_full_disk_on_a_state_write_changes_nothing(tmp_path: Path) -> None:
    with small_disk(tmp_path / "state", "8k"):
        store = AgentState(tmp_path / "state")
        store.save("clf", active=1)
        filler = tmp_path / "state" / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as out:
            while True:
                out.write(b"\0" * 1024)
                out.flush()
        with pytest.raises(UpdateStorageError, match=r"no space left on device \(ENOSPC\)"):
            store.save("clf", active=2, previous=1, bad=list(range(1, 2000)))
        assert store.get("clf")["active"] == 1  # memory follows disk
        assert json.loads((tmp_path / "state" / "agent.json").read_text())["clf"]["active"] == 1
        assert not list((tmp_path / "state").glob(".agent.json.*.tmp"))
        store.close()


def test_a_read_only_state_directory_is_one_line(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    repo.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    with small_disk(tmp_path / "state" / "staging", "1m") as state:
        agent = make_agent(tmp_path, repo, server)
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        [outcome] = agent.check()
        assert outcome.action == "failed"
        assert "read-only file system (EROFS)" in outcome.detail
        subprocess.run(["mount", "-o", "remount,rw", str(state)], check=True)
        assert agent.check()[0].action == "updated"
        agent.close()


# -- deltas ------------------------------------------------------------------------------------


def test_a_delta_whose_result_is_wrong_is_reported_then_full(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    from edgecloud.fleet.delta import make_delta

    repo, server = fleet
    one, two, three = (classifier_onnx(v) for v in (1, 2, 3))
    repo.publish("clf", 1, one, samples=samples_npz())
    agent = make_agent(tmp_path, repo, server)
    agent.check()
    events(agent)
    wrong = make_delta(one, three)  # applies to version 1, but rebuilds version 3
    custom = {"edgecloud": {
        "kind": "delta", "model": "clf", "from": 1, "to": 2, "codec": "xor-zstd", "lossy": False,
        "from_sha256": hashlib.sha256(one).hexdigest(),
        "result_sha256": hashlib.sha256(two).hexdigest(),
    }}  # fmt: skip
    repo.put("clf/deltas/1-2.xor-zstd.delta", wrong, custom)
    sha = repo.publish("clf", 2, two, samples=samples_npz())
    [outcome] = agent.check()
    assert outcome.action == "updated" and outcome.version == 2
    assert agent.repository.get("clf", 2, served_only=False).files["model.onnx"] == sha
    bad = [e for e in events(agent) if e["event"] == "download" and not e["ok"]]
    assert len(bad) == 1 and "clf/deltas/1-2.xor-zstd.delta: applied, but" in str(bad[0]["detail"])
    agent.close()


def test_unchanged_files_are_reused_from_the_installed_version(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    samples = samples_npz()
    repo.publish("clf", 1, classifier_onnx(1), samples=samples)
    agent = make_agent(tmp_path, repo, server)
    agent.check()
    repo.publish("clf", 2, classifier_onnx(2), samples=samples)
    for stored in (repo.root / "targets" / "clf" / "2").glob("*.samples.npz"):
        stored.unlink()  # the server cannot send it: only a reuse can install version 2
    [outcome] = agent.check()
    assert outcome.action == "updated" and outcome.version == 2
    entry = agent.repository.get("clf", 2, served_only=False, verify=True)
    assert entry.files["samples.npz"] == hashlib.sha256(samples).hexdigest()
    assert outcome.downloaded < len(classifier_onnx(2)) + 4096  # the model, no samples
    agent.close()


def test_fleet_check_exits_1_on_a_failed_model_in_one_line_without_none(tmp_path: Path) -> None:
    import socket
    import sys

    fleet = TinyFleet(tmp_path / "fleet-repo")
    (tmp_path / "root.json").write_bytes(fleet.root_bytes)
    with socket.socket() as sock:  # a port nobody listens on: the server is down
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    lines = ["repository: device-repo", "updates:", f"  server: {url}", "  root: root.json",
             "  models: [clf]", "  device_id: dev-9", "root: local"]  # fmt: skip
    path = tmp_path / "device.yaml"
    path.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "fleet", "check", "-d", str(path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done
    assert done.stdout.splitlines() == [
        "clf: serving nothing yet",
        f"clf: failed (nothing installed): cannot reach {url}/fleet/ (connection refused)",
    ]
    assert "None" not in done.stdout + done.stderr
    assert "Retrying" not in done.stderr and "Traceback" not in done.stderr


def test_a_version_with_the_same_model_downloads_no_model(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    model = classifier_onnx(1)
    repo.publish("clf", 1, model, samples=samples_npz())
    agent = make_agent(tmp_path, repo, server)
    agent.check()
    repo.publish("clf", 2, model, samples=samples_npz())  # new config or samples only
    [outcome] = agent.check()
    assert outcome.action == "updated" and outcome.version == 2
    assert outcome.downloaded < 4096  # the config, not the 57 KB model
    assert agent.repository.get("clf", 2, served_only=False, verify=True).version == 2
    agent.close()


def test_a_dripping_telemetry_answer_leaves_the_event_queued(tmp_path: Path) -> None:
    from edgecloud.fleet.telemetry import Telemetry, http_sender

    server = DripServer(tmp_path, lambda path: path == "/fleet/telemetry")
    telemetry = Telemetry(tmp_path / "telemetry.db", device="dev-1")
    telemetry.record("clf", "check", ok=True)
    send = http_sender(server.url, timeout_s=0.3)
    try:
        started = time.monotonic()
        assert telemetry.drain(send) == 0
        assert 0.3 < time.monotonic() - started < 3.0  # cut after the allowance, not 1000 s
        [item] = telemetry.outbox.items()  # still queued, not dead-lettered
        assert "too slow" in str(item.last_error) or item.last_error is None
    finally:
        server.close()
        telemetry.close()
