"""The agent as a device runs it: the deployment file, the CLI, telemetry across an outage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgecloud.backends.local import LocalBackend
from edgecloud.deployment import load
from edgecloud.errors import ConfigError
from edgecloud.fleet.agent import AgentSettings, UpdateAgent
from edgecloud.fleet.device import agent_for
from edgecloud.repository import ModelRepository

from .agent_fixtures import RangeServer, TinyFleet, classifier_onnx, samples_npz


def deployment(tmp_path: Path, server: str, **extra: str) -> Path:
    lines = [
        "repository: device-repo",
        "updates:",
        f"  server: {server}",
        "  root: root.json",
        "  models: [clf]",
        "  device_id: dev-7",
        *(f"  {k}: {v}" for k, v in extra.items()),
        "root: local",
    ]
    path = tmp_path / "device.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fleet_check_installs_from_the_deployment_file_and_reports(tmp_path: Path) -> None:
    fleet = TinyFleet(tmp_path / "fleet-repo")
    (tmp_path / "root.json").write_bytes(fleet.root_bytes)
    fleet.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    with RangeServer(fleet.root) as server:
        path = deployment(tmp_path, server.url)
        done = subprocess.run(
            [sys.executable, "-m", "edgecloud.cli", "fleet", "check", "-d", str(path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "clf: updated (version 1)" in done.stdout
        kinds = [e["event"] for e in server.events.values()]
        assert kinds == ["check", "download", "install", "health", "swap"]
        assert all(e["device"] == "dev-7" for e in server.events.values())
    assert ModelRepository(tmp_path / "device-repo").get("clf").version == 1


def test_telemetry_waits_in_the_outbox_while_offline_and_is_sent_once(tmp_path: Path) -> None:
    fleet = TinyFleet(tmp_path / "fleet-repo")
    fleet.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    repository = ModelRepository(tmp_path / "device-repo")

    def agent(url: str) -> UpdateAgent:
        return UpdateAgent(
            repository, LocalBackend(repository),
            AgentSettings(server=url, models=("clf",), device_id="dev-8", watch_requests=0),
            state_dir=tmp_path / "state", trust_root=fleet.root_bytes,
        )  # fmt: skip

    with RangeServer(fleet.root) as server:
        first = agent(server.url)
        first.check()
        url = server.url
    assert first.drain_telemetry() == 0  # the server is gone: nothing lost, nothing sent
    first.check()  # offline: a failed check is one more event
    first.close()
    with RangeServer(fleet.root) as back:  # the link returns (another port, same device)
        again = agent(back.url)
        assert again.drain_telemetry() == 6
        assert again.drain_telemetry() == 0
        ids = sorted(back.events, key=lambda i: int(i.split(":")[1]))
        first_seq = int(ids[0].rsplit(":", 1)[1])  # a new device starts past the clock
        assert ids == [f"dev-8:{n}" for n in range(first_seq, first_seq + 6)]
        last = back.events[ids[-1]]
        assert last["event"] == "check" and not last["ok"]
        assert url != back.url
        again.close()


def test_one_agent_per_state_directory(tmp_path: Path) -> None:
    fleet = TinyFleet(tmp_path / "fleet-repo")
    repository = ModelRepository(tmp_path / "device-repo")
    settings = AgentSettings(server="http://127.0.0.1:9", models=("clf",), device_id="d")
    first = UpdateAgent(repository, LocalBackend(repository), settings,
                        state_dir=tmp_path / "s", trust_root=fleet.root_bytes)  # fmt: skip
    with pytest.raises(ConfigError, match="kill -USR1"):
        UpdateAgent(repository, LocalBackend(repository), settings,
                    state_dir=tmp_path / "s", trust_root=fleet.root_bytes)  # fmt: skip
    first.close()


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"server": "ftp://x"}, "server"),
        ({"interval_s": "0"}, "interval_s"),
        ({"max_error_rate": "1.5"}, "max_error_rate"),
        ({"bandwidth_bytes_s": "-1"}, "bandwidth_bytes_s"),
        ({"bandwidth_bytes_s": ".nan"}, "bandwidth_bytes_s"),
        ({"models": "[]"}, "models"),
        ({"metered": "no"}, "metered"),
    ],
)
def test_bad_updates_settings_are_refused_by_name(
    tmp_path: Path, extra: dict[str, str], problem: str
) -> None:
    server = extra.pop("server", "http://127.0.0.1:8000")
    with pytest.raises(ConfigError, match=problem):
        load(deployment(tmp_path, server, **extra))


def test_a_missing_root_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"updates.root: .*root.json"):
        agent_for(load(deployment(tmp_path, "http://127.0.0.1:8000")))
