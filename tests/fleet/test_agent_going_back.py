"""Going back is exact: each kept version carries its own config; aborts and narrowed canaries.

Against the real update repository (``UpdateRepository``, ``publish``,
``RolloutControl`` as ``edgecloud fleet publish/rollout/abort`` call them) and
a real HTTP server: a version that changes its config (an output renamed,
class names permuted) and its rollback, an aborted first rollout (no stable
version) on a device with and without a previous version of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgecloud.backends.local import LocalBackend
from edgecloud.fleet.agent import AgentSettings, UpdateAgent
from edgecloud.repository import ModelRepository
from edgecloud.tensors import InferRequest

from .agent_fixtures import RangeServer, classifier_config, classifier_onnx, samples_npz

update_repo = pytest.importorskip("edgecloud.fleet.update_repo")
publish_mod = pytest.importorskip("edgecloud.fleet.publish")
keys_mod = pytest.importorskip("edgecloud.fleet.keys")
rollout_mod = pytest.importorskip("edgecloud.fleet.rollout")

NAMES = ["ant", "bee", "cat"]
X = np.zeros((1, 4), dtype=np.float32)


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        keys_mod.write_signers(tmp / "keys", (signers := keys_mod.new_signers()))
        self.root = update_repo.UpdateRepository.create(tmp / "fleet", signers).root_bytes()
        self.models = ModelRepository(tmp / "models")
        self.control = rollout_mod.RolloutControl(tmp / "fleet", tmp / "keys")

    def publish(self, version: int, model: bytes, *, output: str = "scores",
                labels: list[str] = NAMES) -> None:  # fmt: skip
        outputs = [classifier_config().outputs[0].model_copy(update={"name": output})]
        config = classifier_config().model_copy(update={"outputs": outputs, "labels": labels})
        self.models.add_version(
            "clf", model, config=config, version=version, extra_files={"samples.npz": samples_npz()}
        )
        repo = update_repo.UpdateRepository(self.tmp / "fleet", self.tmp / "keys")
        publish_mod.publish(self.models, "clf", version, repo)

    def roll_out(self, version: int, percent: float = 100.0) -> None:
        self.control.change("clf", lambda prev, published: rollout_mod.start(
            prev, model="clf", version=version, percent=percent, published=published))  # fmt: skip

    def abort(self) -> None:
        self.control.change("clf", lambda prev, _: rollout_mod.abort(prev, "clf"))

    def agent(self, server: RangeServer, name: str) -> UpdateAgent:
        device = ModelRepository(self.tmp / name / "repo")
        made = UpdateAgent(
            device, LocalBackend(device, intra_op_threads=1),
            AgentSettings(server=server.url, models=("clf",), device_id=name, watch_requests=0),
            state_dir=self.tmp / name / "state", trust_root=self.root,
        )  # fmt: skip
        made.start()
        return made


def renamed_output(model: bytes, name: str) -> bytes:
    proto = onnx.load_from_string(model)
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
    proto.graph.output[0].name = name
    return proto.SerializeToString()


def served_config(agent: UpdateAgent) -> dict[str, object]:
    import yaml

    loaded: dict[str, object] = yaml.safe_load(
        (agent.repository.root / "clf/config.yaml").read_text()
    )
    return loaded


def test_abort_after_a_config_change_goes_back_exactly(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    with RangeServer(tmp_path / "fleet") as server:
        fleet.publish(1, classifier_onnx(1))
        fleet.roll_out(1)
        agent = fleet.agent(server, "dev-1")
        assert agent.check()[0].version == 1
        fleet.publish(2, renamed_output(classifier_onnx(2), "probs"), output="probs")
        fleet.roll_out(2)
        [two] = agent.check()
        assert two.action == "updated" and two.version == 2, two
        assert "probs" in agent.backend.infer(InferRequest("clf", {"x": X})).outputs
        fleet.abort()
        [back] = agent.check()
        assert back.action == "updated" and back.version == 1, back
        assert agent.state("clf")["bad"] == [] and agent.active("clf") == 1
        assert "scores" in agent.backend.infer(InferRequest("clf", {"x": X})).outputs
        assert served_config(agent)["outputs"][0]["name"] == "scores"  # type: ignore[index]
        fresh = LocalBackend(agent.repository)  # what a restarted gateway opens
        assert fresh.open("clf", 1).entry.config.outputs[0].name == "scores"
        agent.close()
        restarted = fleet.agent(server, "dev-1")  # start() serves 1 with its own config
        assert restarted.active("clf") == 1
        assert "scores" in restarted.backend.infer(InferRequest("clf", {"x": X})).outputs
        restarted.close()


def test_permuted_class_names_fail_the_health_check_and_rollback_keeps_the_names(
    tmp_path: Path,
) -> None:
    fleet = Fleet(tmp_path)
    with RangeServer(tmp_path / "fleet") as server:
        fleet.publish(1, classifier_onnx(1))
        fleet.roll_out(1)
        agent = fleet.agent(server, "dev-1")
        assert agent.check()[0].version == 1
        for version, labels in ((2, NAMES[1:] + NAMES[:1]), (3, [NAMES[1], NAMES[0], NAMES[2]])):
            fleet.publish(version, classifier_onnx(version), labels=labels)  # same model
            fleet.roll_out(version)
            [out] = agent.check()
            assert out.action == "rolled-back" and out.version == 1, out
            assert "served class names agree" in out.detail
            assert served_config(agent)["labels"] == NAMES
            fleet.abort()  # the operator's answer; stable is 1, the next version may start
        assert agent.state("clf")["bad"] == [2, 3]
        fleet.publish(4, classifier_onnx(4), labels=["x", "y", "z"])  # every class renamed
        fleet.roll_out(4)
        [renamed] = agent.check()  # clients would get other names on every row
        assert renamed.action == "rolled-back" and renamed.version == 1, renamed
        assert "on 0.0000 of the samples (< min_agreement 0.9)" in renamed.detail
        agent.close()


def test_aborting_a_first_rollout_takes_the_candidate_away(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    with RangeServer(tmp_path / "fleet") as server:
        fleet.publish(1, classifier_onnx(1))
        fleet.publish(2, classifier_onnx(2))
        nothing = fleet.agent(server, "dev-new")
        [none] = nothing.check()  # published, never rolled out: nothing installed
        assert none.version is None and "no rollout of clf" in none.detail
        # A device that shipped with version 1 (no rollout ever made it stable).
        shipped = ModelRepository(tmp_path / "dev-old" / "repo")
        v1 = fleet.models.get("clf", 1, served_only=False)
        shipped.add_version("clf", v1.model_path, config=v1.config, version=1)
        old = fleet.agent(server, "dev-old")
        assert old.active("clf") == 1
        fleet.roll_out(2)  # the first rollout: stable None
        assert json.loads(rollout_state(tmp_path))["stable"] is None
        assert old.check()[0].version == 2 and nothing.check()[0].version == 2
        fleet.abort()
        [back] = old.check()
        assert back.action == "updated" and back.version == 1, back
        assert old.backend.infer(InferRequest("clf", {"x": X})).version == "1"
        assert old.state("clf")["bad"] == []
        [kept] = nothing.check()
        assert kept.action == "current" and kept.version == 2
        assert "no previous version on this device" in kept.detail
        assert old.check()[0].action == "current"  # and it stays back
        old.close()
        nothing.close()


def test_a_narrowed_canary_takes_the_candidate_away(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    with RangeServer(tmp_path / "fleet") as server:
        fleet.publish(1, classifier_onnx(1))
        fleet.roll_out(1)
        agent = fleet.agent(server, "dev-1")
        assert agent.check()[0].version == 1
        fleet.publish(2, classifier_onnx(2))
        fleet.roll_out(2)
        assert agent.check()[0].version == 2
        fleet.roll_out(2, percent=0.0)  # stable is 1 now: the device goes back to it
        [back] = agent.check()
        assert back.action == "updated" and back.version == 1, back
        agent.close()


def rollout_state(tmp: Path) -> str:
    found = sorted((tmp / "fleet" / "targets" / "clf").glob("*.rollout.json"))
    texts = [p.read_text() for p in found]
    return max(texts, key=lambda t: json.loads(t)["generation"])


def test_a_crash_after_installing_a_new_config_restarts_on_the_old_versions_own(
    tmp_path: Path,
) -> None:
    """SIGKILL's state between ``add_version`` (which rewrote ``config.yaml``) and the swap:
    the restart serves the active version with its own config, not the new one's."""
    from edgecloud.fleet import agent as agent_mod

    fleet = Fleet(tmp_path)
    with RangeServer(tmp_path / "fleet") as server:
        fleet.publish(1, classifier_onnx(1))
        fleet.roll_out(1)
        agent = fleet.agent(server, "dev-1")
        assert agent.check()[0].version == 1
        fleet.publish(2, renamed_output(classifier_onnx(2), "probs"), output="probs")
        targets, consistent = agent._refresh()
        agent._install("clf", 2, 1, targets, consistent, agent_mod._Moved())
        assert served_config(agent)["outputs"][0]["name"] == "probs"  # type: ignore[index]
        agent.close()  # "killed" before the swap
        restarted = fleet.agent(server, "dev-1")
        assert restarted.active("clf") == 1
        assert served_config(restarted)["outputs"][0]["name"] == "scores"  # type: ignore[index]
        assert "scores" in restarted.backend.infer(InferRequest("clf", {"x": X})).outputs
        restarted.close()
