"""The agent against a real ``edgecloud serve --token --fleet``, real ``fleet publish`` and
``fleet rollout`` (CLI processes): keys -> publish v1 -> the device installs -> publish v2
(xor-zstd delta) -> rollout 100 % -> the device swaps through the delta, its telemetry in
``GET /fleet/status``. Without the token every request is refused with an error naming
the token settings, and the telemetry stays queued (nothing dead-lettered)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgecloud.backends.local import LocalBackend
from edgecloud.errors import UpdateAuthError
from edgecloud.fleet.agent import AgentSettings, UpdateAgent
from edgecloud.fleet.keys import new_signers, write_signers
from edgecloud.fleet.update_repo import UpdateRepository
from edgecloud.repository import ModelRepository
from edgecloud.tensors import InferRequest

from ..server.conftest import Server, start_server
from .agent_fixtures import classifier_config, classifier_onnx, samples_npz

TOKEN = "fleet-secret"


@dataclass
class Served:
    server: Server
    models: ModelRepository
    fleet: Path
    keys: Path
    root: bytes

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "edgecloud.cli", "fleet", *args, "--fleet", str(self.fleet),
             "--keys", str(self.keys)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def publish(self, version: int) -> str:
        return self.cli("publish", "clf", str(version), "--repo", str(self.models.root))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("served")
    signers = new_signers()
    write_signers(tmp / "keys", signers)
    fleet = UpdateRepository.create(tmp / "fleet", signers)
    models = ModelRepository(tmp / "models")
    for version in (1, 2):
        models.add_version(
            "clf", classifier_onnx(version), config=classifier_config(), version=version,
            extra_files={"samples.npz": samples_npz()},
        )  # fmt: skip
    server = start_server(models, tmp, "--fleet", str(fleet.path), token=TOKEN)
    yield Served(server, models, fleet.path, tmp / "keys", fleet.root_bytes())
    server.stop()


def device(served: Served, home: Path, token: str | None) -> UpdateAgent:
    repository = ModelRepository(home / "repo")
    settings = AgentSettings(
        server=served.server.url, models=("clf",), device_id="dev-e2e", watch_requests=0,
        token=token,
    )  # fmt: skip
    agent = UpdateAgent(
        repository, LocalBackend(repository, intra_op_threads=1), settings,
        state_dir=home / "state", trust_root=served.root,
    )  # fmt: skip
    agent.start()
    return agent


def test_without_the_token_every_request_fails_naming_it_and_telemetry_stays_queued(
    served: Served, tmp_path: Path
) -> None:
    served.publish(1)
    agent = device(served, tmp_path, token=None)
    [outcome] = agent.check()
    assert outcome.action == "failed"
    assert "HTTP 401" in outcome.detail and "updates.token_file" in outcome.detail
    assert "EDGECLOUD_FLEET_TOKEN" in outcome.detail
    assert agent.telemetry.outbox.stats()["pending"] == 1
    for _ in range(2):  # each drain is refused, counted, and loses nothing
        with pytest.raises(UpdateAuthError, match="needs a token and none is set"):
            agent.drain_telemetry()
    assert agent.auth_refusals == 2
    after = agent.telemetry.outbox.stats()
    assert after["pending"] == 1 and after["dead_letters"] == 0
    agent.close()
    # The same device with a wrong token: refused, and the message says so.
    wrong = device(served, tmp_path, token="not-it")
    [outcome] = wrong.check()
    assert outcome.action == "failed" and "refused the token" in outcome.detail
    with pytest.raises(UpdateAuthError):
        wrong.drain_telemetry()
    assert wrong.telemetry.outbox.stats()["dead_letters"] == 0
    wrong.close()
    # With the token, the events queued while refused are delivered.
    right = device(served, tmp_path, token=TOKEN)
    assert right.drain_telemetry() >= 2
    assert right.telemetry.outbox.stats()["pending"] == 0
    right.close()


def test_publish_delta_rollout_and_status_end_to_end(served: Served, tmp_path: Path) -> None:
    served.publish(1)
    fresh = device(served, tmp_path / "fresh", token=TOKEN)
    [nothing] = fresh.check()  # published, never rolled out: no device takes it
    assert nothing.action == "current" and nothing.version is None
    assert "no rollout of clf: run `edgecloud fleet rollout clf VERSION" in nothing.detail
    fresh.close()
    served.cli("rollout", "clf", "1", "--canary", "100%")
    agent = device(served, tmp_path, token=TOKEN)
    [first] = agent.check()
    assert first.action == "updated" and first.version == 1, first
    assert "xor-zstd" in served.publish(2)
    served.cli("rollout", "clf", "2", "--canary", "100%")
    [second] = agent.check()
    assert second.action == "updated" and second.version == 2, second
    assert second.downloaded < len(classifier_onnx(2)) / 2  # the delta, not the model
    entry = agent.repository.get("clf", 2, served_only=False)
    assert entry.metadata["fleet"]["via"] == "delta xor-zstd"
    x = np.zeros((1, 4), dtype=np.float32)
    assert agent.backend.infer(InferRequest("clf", {"x": x})).version == "2"
    assert agent.drain_telemetry() > 0
    status = httpx.get(
        f"{served.server.url}/fleet/status?model=clf", headers=served.server.headers(), timeout=10
    )
    assert status.status_code == 200, status.text
    [row] = [d for d in status.json()["devices"] if d["device"] == "dev-e2e"]
    assert row["version"] == 2 and row["last_health_ok"] is True
    agent.close()


def test_fleet_check_takes_the_token_from_the_file_the_env_or_the_flag(
    served: Served, tmp_path: Path
) -> None:
    served.publish(1)
    rolled = subprocess.run(  # refused (nothing to do) when the other test rolled 2 out
        [sys.executable, "-m", "edgecloud.cli", "fleet", "rollout", "clf", "1", "--canary", "100%",
         "--fleet", str(served.fleet), "--keys", str(served.keys)], capture_output=True,
    )  # fmt: skip
    assert "Traceback" not in rolled.stderr.decode()
    (tmp_path / "root.json").write_bytes(served.root)
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "wrong").write_text("not-it\n")
    path = tmp_path / "device.yaml"
    path.write_text(
        f"repository: repo\nupdates:\n  server: {served.server.url}\n  root: root.json\n"
        "  models: [clf]\n  device_id: cli-dev\n  token_file: token\nroot: local\n"
    )
    (tmp_path / "repo").mkdir()

    def check(*extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "edgecloud.cli", "fleet", "check", "-d", str(path), *extra]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
        )

    wrong = check(env={"EDGECLOUD_FLEET_TOKEN": "not-it"})  # the env wins over the file
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "refused the token" in wrong.stdout and "events kept queued" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    flag = check("--token-file", str(tmp_path / "wrong"), env={"EDGECLOUD_FLEET_TOKEN": TOKEN})
    assert flag.returncode == 1  # the flag wins over the env
    ok = check()  # the deployment file's token_file
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "clf: updated (version" in ok.stdout  # 1, or 2 after the rollout test
