"""The agent against the real update repository, publish, deltas and rollout state.

Skipped until the tuf, delta and rollout parts are merged beside the agent:
``UpdateRepository`` signs, ``publish`` builds xor-zstd deltas, ``RolloutControl``
writes ``MODEL/rollout.json``; the agent takes the delta, applies it, checks
the result's sha256 against the signed model, and follows the rollout's canary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecloud.backends.local import LocalBackend
from edgecloud.fleet import agent as agent_mod
from edgecloud.fleet.agent import AgentSettings, UpdateAgent
from edgecloud.repository import ModelRepository
from edgecloud.tensors import InferRequest

from .agent_fixtures import RangeServer, classifier_config, classifier_onnx, samples_npz

update_repo = pytest.importorskip("edgecloud.fleet.update_repo")
publish_mod = pytest.importorskip("edgecloud.fleet.publish")
keys_mod = pytest.importorskip("edgecloud.fleet.keys")
rollout_mod = pytest.importorskip("edgecloud.fleet.rollout")
pytest.importorskip("edgecloud.fleet.delta")


def roll_out(tmp_path: Path, version: int, percent: float = 100.0) -> None:
    """``edgecloud fleet rollout clf VERSION --canary PERCENT%`` through the Python API."""
    control = rollout_mod.RolloutControl(tmp_path / "fleet", tmp_path / "keys")
    control.change("clf", lambda prev, published: rollout_mod.start(
        prev, model="clf", version=version, percent=percent, published=published))  # fmt: skip


def test_agent_takes_signed_deltas_and_follows_the_rollout(tmp_path: Path) -> None:
    signers = keys_mod.new_signers()
    keys_mod.write_signers(tmp_path / "keys", signers)
    fleet = update_repo.UpdateRepository.create(tmp_path / "fleet", signers)
    root = fleet.root_bytes()
    models = ModelRepository(tmp_path / "models")
    for version in (1, 2, 3):
        models.add_version(
            "clf", classifier_onnx(version), config=classifier_config(), version=version,
            extra_files={"samples.npz": samples_npz()},
        )  # fmt: skip

    def publish(version: int) -> None:
        repo = update_repo.UpdateRepository(tmp_path / "fleet", tmp_path / "keys")
        publish_mod.publish(models, "clf", version, repo)
        if version < 3:  # publishing alone deploys nothing: roll 1 and 2 out to every device
            roll_out(tmp_path, version)

    device = ModelRepository(tmp_path / "device")
    with RangeServer(tmp_path / "fleet") as server:
        agent = UpdateAgent(
            device, LocalBackend(device, intra_op_threads=1),
            AgentSettings(server=server.url, models=("clf",), device_id="d-1", watch_requests=0),
            state_dir=tmp_path / "state", trust_root=root,
        )  # fmt: skip
        agent.start()
        publish(1)
        [first] = agent.check()
        assert first.action == "updated" and first.version == 1
        publish(2)
        [second] = agent.check()
        assert second.action == "updated" and second.version == 2
        assert second.downloaded < len(classifier_onnx(2)) / 2  # the delta, not the model
        entry = device.get("clf", 2, served_only=False)
        assert (
            entry.files["model.onnx"] == models.get("clf", 2, served_only=False).files["model.onnx"]
        )
        assert entry.metadata["fleet"]["via"].startswith("delta")

        publish(3)
        control = rollout_mod.RolloutControl(tmp_path / "fleet", tmp_path / "keys")
        control.change("clf", lambda prev, published: rollout_mod.start(
            prev, model="clf", version=3, percent=0.0, published=published))  # fmt: skip
        [held] = agent.check()  # a 0 % canary: this device stays on the stable version
        assert held.action == "current" and held.version == 2
        control.change("clf", lambda prev, published: rollout_mod.start(
            prev, model="clf", version=3, percent=100.0, published=published))  # fmt: skip
        [third] = agent.check()
        assert third.action == "updated" and third.version == 3
        x = np.zeros((1, 4), dtype=np.float32)
        assert agent.backend.infer(InferRequest("clf", {"x": x})).version == "3"
        agent.close()


def test_a_lossy_install_a_crash_left_unswapped_is_not_downloaded_again(tmp_path: Path) -> None:
    """The state a SIGKILL between ``add_version`` and the swap leaves: version 2 on disk,
    rebuilt from an int8 delta (its sha256 is the delta's signed result_sha256, not the
    full model's). After the restart the agent recognises it and swaps without a byte."""
    signers = keys_mod.new_signers()
    keys_mod.write_signers(tmp_path / "keys", signers)
    fleet = update_repo.UpdateRepository.create(tmp_path / "fleet", signers)
    models = ModelRepository(tmp_path / "models")
    for version in (1, 2):
        models.add_version(
            "clf", classifier_onnx(version), config=classifier_config(), version=version,
            extra_files={"samples.npz": samples_npz()},
        )  # fmt: skip

    def publish(version: int) -> None:
        repo = update_repo.UpdateRepository(tmp_path / "fleet", tmp_path / "keys")
        publish_mod.publish(models, "clf", version, repo, codecs=("int8",))
        roll_out(tmp_path, version)

    device = ModelRepository(tmp_path / "device")
    with RangeServer(tmp_path / "fleet") as server:
        settings = AgentSettings(
            server=server.url, models=("clf",), device_id="d-1", watch_requests=0
        )

        def agent() -> UpdateAgent:
            made = UpdateAgent(
                device, LocalBackend(device, intra_op_threads=1), settings,
                state_dir=tmp_path / "state", trust_root=fleet.root_bytes(),
            )  # fmt: skip
            made.start()
            return made

        publish(1)
        first = agent()
        [one] = first.check(("clf",))
        assert one.version == 1
        first.close()
        publish(2)
        # Version 2 installed from the lossy delta, then the process "dies" before the swap.
        crashed = agent()
        targets, consistent = crashed._refresh()
        crashed._install("clf", 2, 1, targets, consistent, agent_mod._Moved())
        entry = device.get("clf", 2, served_only=False)
        assert entry.metadata["fleet"]["via"] == "delta int8"
        full_sha = models.get("clf", 2, served_only=False).files["model.onnx"]
        assert entry.files["model.onnx"] != full_sha  # lossy: not the full model's bytes
        crashed.close()
        restarted = agent()
        assert restarted.active("clf") == 1
        [two] = restarted.check(("clf",))
        assert two.action == "updated" and two.version == 2, two
        assert two.downloaded == 0 and two.resumed == 0  # recognised, not fetched again
        restarted.close()
