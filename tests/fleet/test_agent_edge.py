"""``edgecloud edge`` runs the agent: an on-demand check (SIGUSR1) hot-swaps under traffic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from edgecloud.backends.local import LocalBackend
from edgecloud.fleet.agent import AgentSettings, UpdateAgent
from edgecloud.repository import ModelRepository
from edgecloud.server.launch import free_port, launch

from .agent_fixtures import RangeServer, TinyFleet, classifier_onnx, samples_npz

pytestmark = pytest.mark.network

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5, -1, 2, 0]}]}


def test_edge_gateway_swaps_on_demand_with_zero_failed_requests(tmp_path: Path) -> None:
    fleet = TinyFleet(tmp_path / "fleet-repo")
    (tmp_path / "root.json").write_bytes(fleet.root_bytes)
    fleet.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    with RangeServer(fleet.root) as server:
        device = ModelRepository(tmp_path / "device-repo")
        first = UpdateAgent(  # provisioning: the device starts with version 1
            device, LocalBackend(device),
            AgentSettings(server=server.url, models=("clf",), device_id="e", watch_requests=0),
            state_dir=tmp_path / "fleet-state", trust_root=fleet.root_bytes,
        )  # fmt: skip
        assert first.check()[0].version == 1
        first.close()
        path = tmp_path / "device.yaml"
        path.write_text(
            f"repository: device-repo\nupdates:\n  server: {server.url}\n  root: root.json\n"
            "  models: [clf]\n  device_id: e\n  interval_s: 3600\n  watch_requests: 5\n"
            "root: local\n"
        )
        port = free_port()
        argv = [sys.executable, "-m", "edgecloud.cli", "edge", "-d", str(path), "--port", str(port)]
        gateway = launch(argv, f"http://127.0.0.1:{port}", log=tmp_path / "edge.log")
        seen: list[str] = []
        failed: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    answer = client.post(f"http://127.0.0.1:{port}/v2/models/clf/infer", json=BODY)
                    if answer.status_code == 200:
                        seen.append(answer.json()["model_version"])
                    else:
                        failed.append(answer.text)

        sender = threading.Thread(target=traffic, daemon=True)
        try:
            sender.start()
            while not seen:
                time.sleep(0.05)
            fleet.publish("clf", 2, classifier_onnx(2), samples=samples_npz())
            os.kill(gateway.process.pid, signal.SIGUSR1)  # check now, not in an hour
            deadline = time.monotonic() + 60
            while seen[-1] != "2" and time.monotonic() < deadline:
                time.sleep(0.05)
            while time.monotonic() < deadline and not any(  # telemetry drained after the round
                e["event"] == "swap" and e["version"] == 2 for e in list(server.events.values())
            ):
                time.sleep(0.05)
            stop.set()
            sender.join(timeout=10)
            # The metadata and the versioned routes say what infer answers (read again
            # after the swap), not what the repository's version policy would pick.
            base = f"http://127.0.0.1:{port}/v2/models/clf"
            meta = httpx.get(base, timeout=10).json()
            assert "2" in meta["versions"], meta
            assert httpx.get(f"{base}/versions/2", timeout=10).status_code == 200
            assert httpx.get(f"{base}/versions/2/ready", timeout=10).status_code == 200
            answer = httpx.post(f"{base}/versions/2/infer", json=BODY, timeout=10)
            assert answer.status_code == 200 and answer.json()["model_version"] == "2"
        finally:
            stop.set()
            sender.join(timeout=10)
            gateway.stop()
        assert seen[0] == "1" and seen[-1] == "2", (tmp_path / "edge.log").read_text()[-2000:]
        assert failed == []
        assert seen.index("2") > 0 and "1" not in seen[seen.index("2") :]
        kinds = [e["event"] for e in server.events.values() if e["version"] == 2]
        assert "swap" in kinds


def _device_yaml(tmp_path: Path, server_url: str, wait_s: float) -> Path:
    path = tmp_path / "device.yaml"
    path.write_text(
        f"repository: device-repo\nupdates:\n  server: {server_url}\n  root: root.json\n"
        f"  models: [clf]\n  device_id: fresh\n  interval_s: 3600\n  first_check_s: {wait_s}\n"
        "root: local\n"
    )
    return path


def test_a_fresh_device_installs_before_the_ready_check(tmp_path: Path) -> None:
    fleet = TinyFleet(tmp_path / "fleet-repo")
    (tmp_path / "root.json").write_bytes(fleet.root_bytes)
    fleet.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    (tmp_path / "device-repo").mkdir()  # empty: the device has no model yet
    with RangeServer(fleet.root) as server:
        path = _device_yaml(tmp_path, server.url, 30)
        port = free_port()
        argv = [sys.executable, "-m", "edgecloud.cli", "edge", "-d", str(path), "--port", str(port)]
        gateway = launch(argv, f"http://127.0.0.1:{port}", log=tmp_path / "edge.log")
        try:
            answer = httpx.post(f"http://127.0.0.1:{port}/v2/models/clf/infer", json=BODY)
        finally:
            gateway.stop()
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == "1"
    assert "no version of clf on this device" in (tmp_path / "edge.log").read_text()


def test_a_fresh_device_with_the_server_down_exits_naming_it(tmp_path: Path) -> None:
    fleet = TinyFleet(tmp_path / "fleet-repo")
    (tmp_path / "root.json").write_bytes(fleet.root_bytes)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    path = _device_yaml(tmp_path, down, 0.5)
    argv = [sys.executable, "-m", "edgecloud.cli", "edge", "-d", str(path), "--port", "0"]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "Traceback" not in said
    assert "no model" in said and f"the first update from {down} did not install" in said, said
    assert "ConnectError" in said or "refused" in said.lower(), said
    assert time.monotonic() - started < 60  # bounded by first_check_s, not a hang
