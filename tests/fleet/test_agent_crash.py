"""SIGKILL of a real ``edgecloud fleet agent`` process at random points of 20 consecutive updates.

After each kill and restart the device serves a whole, verified version, the
old or the new one (never a mix, never a corrupt file), and the update then
completes; an interrupted download resumes from its staging file (the bytes
kept and re-downloaded are reported by the agent's download events).
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.repository import ModelRepository

from .agent_fixtures import RangeServer, TinyFleet, classifier_onnx, samples_npz

pytestmark = [pytest.mark.slow, pytest.mark.network]

ROUNDS = 20
ZYGOTE = Path(__file__).with_name("agent_zygote.py")


class Agents:
    """Starts agent processes through the zygote and reads their merged output."""

    def __init__(self, deployment: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.deployment = deployment
        self.zygote = subprocess.Popen(
            [sys.executable, str(ZYGOTE)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, cwd=deployment.parent,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.expect(r"^ready$", 60)
        self.pid: int | None = None

    def _read(self) -> None:
        assert self.zygote.stdout is not None
        for line in self.zygote.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.log.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        shown = "\n".join(self.log[-60:])
        raise AssertionError(f"no line matching {pattern!r}; last lines:\n{shown}")

    def start(self) -> None:
        assert self.zygote.stdin is not None
        self.zygote.stdin.write("\t".join(["fleet", "agent", "-d", str(self.deployment)]) + "\n")
        self.zygote.stdin.flush()
        self.pid = int(self.expect(r"^pid (\d+)$").group(1))

    def kill(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # gone (reaped): its flock is released
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
        self.pid = None

    def close(self) -> None:
        if self.pid is not None:
            self.kill()
        self.zygote.kill()
        self.zygote.wait()
        for pipe in (self.zygote.stdin, self.zygote.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def device(tmp_path: Path) -> Iterator[tuple[TinyFleet, RangeServer, Agents, Path]]:
    fleet = TinyFleet(tmp_path / "fleet-repo")
    with RangeServer(fleet.root) as server:
        (tmp_path / "root.json").write_bytes(fleet.root_bytes)
        deployment = tmp_path / "device.yaml"
        deployment.write_text(
            "repository: device-repo\n"
            "updates:\n"
            f"  server: {server.url}\n"
            "  root: root.json\n"
            "  models: [clf]\n"
            "  device_id: crash-test\n"
            "  interval_s: 0.05\n"
            "  watch_requests: 0\n"
            "  bandwidth_bytes_s: 250000\n"  # a ~57 KB model takes ~0.2 s: kills land in it
            "root: local\n"
        )
        agents = Agents(deployment)
        try:
            yield fleet, server, agents, tmp_path
        finally:
            agents.close()


def active(tmp_path: Path) -> int | None:
    try:
        state = json.loads((tmp_path / "fleet-state" / "agent.json").read_text())
    except FileNotFoundError:
        return None
    version: int | None = state.get("clf", {}).get("active")
    return version


def phase(tmp_path: Path, version: int, now: int | None) -> str:
    """Where the kill landed, read from the disk: a partial download, an installed version
    not yet serving (install, health check), serving (swap done), or before any of it."""
    if now == version:
        return "swapped"
    if (tmp_path / "device-repo" / "clf" / str(version)).exists():
        return "installed"
    if any((tmp_path / "device-repo" / "clf").glob(".staging-*")):
        return "installing"
    if any((tmp_path / "fleet-state" / "staging").glob("*.part")):
        return "downloading"
    return "checking"


def check_verified(tmp_path: Path, version: int | None, signed: dict[int, str]) -> None:
    """``version`` is on disk, every file matches its manifest, the model is the signed one."""
    if version is None:
        return
    entry = ModelRepository(tmp_path / "device-repo").get("clf", version, served_only=False)
    assert entry.files["model.onnx"] == signed[version]


def test_sigkill_at_random_points_of_20_updates(
    device: tuple[TinyFleet, RangeServer, Agents, Path],
) -> None:
    fleet, _, agents, tmp_path = device
    rng = random.Random(16)
    # Each round is cut after a random step (its log line) plus a random delay, so the
    # kills cover every phase: download, install, health check, swap.
    anchors = [
        (r"fleet check clf v{v}[ :]", 0.3),  # during the download (~0.2 s at 250 KB/s)
        (r"fleet download clf v{v}( \(from v\d+\))?: ok", 0.05),  # during add_version
        (r"fleet install clf v{v}( \(from v\d+\))?: ok", 0.05),  # during open + health check
        (r"fleet health clf v{v}( \(from v\d+\))?: ok", 0.02),  # around the state write and swap
    ]
    signed: dict[int, str] = {}
    phases, resumed, redownloaded = [], 0, 0
    agents.start()
    for version in range(1, ROUNDS + 1):
        signed[version] = fleet.publish(
            "clf", version, classifier_onnx(version), samples=samples_npz()
        )
        anchor, spread = anchors[(version + rng.randrange(4)) % 4]
        agents.expect(anchor.format(v=version))
        time.sleep(rng.uniform(0, spread))
        agents.kill()
        before = active(tmp_path)
        phases.append(phase(tmp_path, version, before))
        assert before in (version - 1 if version > 1 else None, version)
        check_verified(tmp_path, before, signed)
        agents.start()
        served = agents.expect(r"^clf: serving (?:version (\d+)|nothing yet)$").group(1)
        assert served == (None if before is None else str(before))
        check_verified(tmp_path, before, signed)
        if before != version:
            done = agents.expect(rf"fleet swap clf v{version}[ :]")
            download = [ln for ln in agents.log if re.search(rf"download clf v{version}[ :]", ln)]
            if download:
                kept = re.search(r"resumed (\d+) B, re-downloaded (\d+) B", download[-1])
                assert kept is not None
                resumed += int(kept.group(1))
                redownloaded += int(kept.group(2))
            assert done
        assert active(tmp_path) == version
        check_verified(tmp_path, version, signed)
    print(f"\nkill phases: {phases}\nbytes resumed: {resumed}, re-downloaded: {redownloaded}")
    assert {"downloading", "installed", "swapped"} <= set(phases)
    assert resumed > 0  # a cut download continued from its staging file
    versions = ModelRepository(tmp_path / "device-repo").versions("clf")
    assert versions[-1] == ROUNDS and len(versions) <= 3
