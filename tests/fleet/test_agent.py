"""The update agent in process: rounds that each trigger, rollback, bad versions, resumes, links."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgecloud.backends.local import LocalBackend
from edgecloud.errors import ModelNotFoundError
from edgecloud.fleet.agent import AgentSettings, UpdateAgent
from edgecloud.fleet.download import LinkPolicy
from edgecloud.repository import ModelRepository
from edgecloud.tensors import InferRequest

from .agent_fixtures import RangeServer, TinyFleet, classifier_onnx, samples_npz

X = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[TinyFleet, RangeServer]]:
    repo = TinyFleet(tmp_path / "fleet-repo")
    with RangeServer(repo.root) as server:
        yield repo, server


def make_agent(
    tmp_path: Path, fleet: TinyFleet, server: RangeServer, **settings: object
) -> UpdateAgent:
    repository = ModelRepository(tmp_path / "device-repo")
    backend = LocalBackend(repository, intra_op_threads=1)
    options: dict[str, object] = {"watch_requests": 0, **settings}
    agent = UpdateAgent(
        repository,
        backend,
        AgentSettings(server=server.url, models=("clf",), device_id="dev-1", **options),  # type: ignore[arg-type]
        state_dir=tmp_path / "state",
        trust_root=fleet.root_bytes,
    )
    agent.start()
    return agent


def events(agent: UpdateAgent) -> list[dict[str, object]]:
    from edgecloud.fleet.telemetry import event_of

    got: list[dict[str, object]] = []
    agent.telemetry.drain(lambda request: got.append(event_of(request)))
    return got


def test_five_consecutive_rounds_each_trigger_and_swap_without_restart(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    agent = make_agent(tmp_path, repo, server)
    served = []
    for version in range(1, 7):
        sha = repo.publish("clf", version, classifier_onnx(version), samples=samples_npz())
        [outcome] = agent.check()
        assert outcome.action == "updated", outcome
        assert outcome.version == version
        response = agent.backend.infer(InferRequest("clf", {"x": X}))
        served.append(response.version)
        entry = agent.repository.get("clf", version, served_only=False)
        assert entry.files["model.onnx"] == sha
        [again] = agent.check()
        assert again.action == "current"
    assert served == [str(v) for v in range(1, 7)]
    assert agent.repository.versions("clf") == [5, 6]  # active and previous kept
    kinds = [(e["event"], e["version"]) for e in events(agent) if e["ok"]]
    assert kinds.count(("swap", 6)) == 1
    assert sum(1 for k, _ in kinds if k == "swap") == 6


def test_permuted_labels_fail_the_health_check_and_are_never_reinstalled(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    agent = make_agent(tmp_path, repo, server)
    repo.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    assert agent.check()[0].action == "updated"
    repo.publish("clf", 2, classifier_onnx(2, permute=True), samples=samples_npz())
    [bad] = agent.check()
    assert bad.action == "rolled-back" and bad.version == 1
    assert "accuracy" in bad.detail
    assert agent.backend.infer(InferRequest("clf", {"x": X})).version == "1"
    assert 2 not in agent.repository.versions("clf")
    sent = server.sent
    [skip] = agent.check()
    assert skip.action == "skipped" and server.sent - sent < 4096  # metadata only, no model
    repo.publish("clf", 3, classifier_onnx(3), samples=samples_npz())
    assert agent.check()[0].action == "updated"
    assert agent.state("clf")["bad"] == [2]


def test_nan_output_and_unloadable_model_roll_back(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    agent = make_agent(tmp_path, repo, server)
    repo.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    agent.check()
    repo.publish("clf", 2, classifier_onnx(2, nan=True), samples=samples_npz())
    [nan] = agent.check()
    assert nan.action == "rolled-back" and "NaN" in nan.detail
    repo.publish("clf", 3, b"not an onnx model at all", samples=samples_npz())
    [broken] = agent.check()
    assert broken.action in ("rolled-back", "failed") and broken.version == 1
    assert agent.backend.infer(InferRequest("clf", {"x": X})).version == "1"


def test_error_rate_after_the_swap_rolls_back(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    agent = make_agent(tmp_path, repo, server, watch_requests=10, max_error_rate=0.2)
    repo.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    agent.check()
    for _ in range(10):
        agent.infer(InferRequest("clf", {"x": X}))
    assert agent.state("clf")["watching"] is None  # v1 held
    repo.publish("clf", 2, classifier_onnx(2), samples=samples_npz())
    assert agent.check()[0].action == "updated"
    for i in range(10):  # requests the new version fails (e.g. inputs it no longer takes)
        if i % 2:
            agent.observe("clf", False)
        else:
            agent.infer(InferRequest("clf", {"x": X}))
    st = agent.state("clf")
    assert st["active"] == 1 and st["bad"] == [2]
    assert agent.backend.infer(InferRequest("clf", {"x": X})).version == "1"
    with pytest.raises(ModelNotFoundError):
        agent.backend.infer(InferRequest("clf", {"x": X}, version="2"))
    rollbacks = [e for e in events(agent) if e["event"] == "rollback"]
    assert rollbacks[-1]["from_version"] == 2 and "error rate" in str(rollbacks[-1]["detail"])


def test_interrupted_download_resumes_and_reports_bytes(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    agent = make_agent(tmp_path, repo, server)
    model = classifier_onnx(1)
    repo.publish("clf", 1, model, samples=samples_npz())
    server.fail_after = 40_000  # every target body is cut after 40 KB
    [cut] = agent.check()
    assert cut.action == "failed"
    staged = agent.staging / f"{hashlib.sha256(model).hexdigest()}.part"
    rollout = {f"{t.hashes['sha256']}.part" for p, t in repo.targets_md.signed.targets.items()
               if p.endswith("rollout.json")}  # fmt: skip
    parts = {p.name for p in agent.staging.glob("*.part")}
    assert staged.stat().st_size == 40_000 and parts - rollout == {staged.name}
    server.fail_after = None
    server.refuse = 503  # a server in trouble: the staged prefix is kept for later
    assert agent.check()[0].action == "failed"
    assert staged.stat().st_size == 40_000
    server.refuse = None
    sent = server.sent
    [done] = agent.check()
    assert done.action == "updated"
    assert done.resumed == 40_000 and done.redownloaded == 0
    others = sum(
        t.length
        for p, t in repo.targets_md.signed.targets.items()
        if not p.endswith((".onnx", "rollout.json"))  # the rollout file was read in round 1
    )
    assert done.downloaded == len(model) - 40_000 + others  # the model's rest, config, samples
    assert server.sent - sent > done.downloaded  # plus the metadata
    assert not list(agent.staging.glob("*.part"))


def test_a_corrupt_or_overlong_staging_file_is_not_trusted(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    agent = make_agent(tmp_path, repo, server)
    model = classifier_onnx(1)
    sha = repo.publish("clf", 1, model, samples=samples_npz())
    (agent.staging / f"{sha}.part").write_bytes(b"\xff" * 1000)  # a wrong prefix
    [done] = agent.check()
    assert done.action == "updated" and done.redownloaded == 1000
    assert agent.repository.get("clf", 1).files["model.onnx"] == sha
    repo.publish("clf", 2, classifier_onnx(2), samples=samples_npz())
    sha2 = repo.targets_md.signed.targets["clf/2/model.onnx"].hashes["sha256"]
    (agent.staging / f"{sha2}.part").write_bytes(
        b"\0" * (len(model) + 10)
    )  # longer than the target
    [again] = agent.check()
    assert again.action == "updated" and again.redownloaded == len(model) + 10


def test_metered_link_waits_and_bandwidth_is_capped(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    repo, server = fleet
    link = ["cellular"]
    agent = make_agent(
        tmp_path,
        repo,
        server,
        links=LinkPolicy(metered_ok=False, link=lambda: link[0]),
        bandwidth_bytes_s=400_000.0,
    )
    model = classifier_onnx(1)
    repo.publish("clf", 1, model, samples=samples_npz())
    [wait] = agent.check()
    assert wait.action == "skipped" and "metered" in wait.detail and wait.downloaded == 0
    link[0] = "wifi"
    start = time.monotonic()
    [done] = agent.check()
    took = time.monotonic() - start
    assert done.action == "updated"
    assert took >= (len(model) - 40_000) / 400_000 * 0.9  # the bucket's burst: 0.1 s of rate


def test_tampered_target_is_refused(tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]) -> None:
    repo, server = fleet
    agent = make_agent(tmp_path, repo, server)
    sha = repo.publish("clf", 1, classifier_onnx(1), samples=samples_npz())
    stored = repo.root / "targets" / "clf" / "1" / f"{sha}.model.onnx"
    data = bytearray(stored.read_bytes())
    data[-10] ^= 0xFF
    stored.write_bytes(bytes(data))
    [refused] = agent.check()
    assert refused.action == "failed" and "sha256" in refused.detail
    assert not (agent.repository.root / "clf").exists()


def test_restart_serves_the_state_version_and_discards_a_corrupt_one(
    tmp_path: Path, fleet: tuple[TinyFleet, RangeServer]
) -> None:
    repo, server = fleet
    agent = make_agent(tmp_path, repo, server)
    for version in (1, 2):
        repo.publish("clf", version, classifier_onnx(version), samples=samples_npz())
        agent.check()
    agent.close()
    model = tmp_path / "device-repo" / "clf" / "2" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-5] ^= 1
    model.write_bytes(bytes(data))  # a torn write the sha256 catches
    again = make_agent(tmp_path, repo, server)
    assert again.backend.infer(InferRequest("clf", {"x": X})).version == "1"
    assert json.loads((tmp_path / "state" / "agent.json").read_text())["clf"]["active"] == 1
    [back] = again.check()  # v2 is still the newest published: reinstalled, verified
    assert back.action == "updated" and back.version == 2
