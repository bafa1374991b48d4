"""Staged rollout: transitions, the automatic mode, and signed changes under a lock."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edgecloud.errors import ConfigError, ConflictError, ModelNotFoundError
from edgecloud.fleet.rollout import (
    abort,
    auto_step,
    parse_percent,
    parse_stages,
    pause,
    promote,
    resume,
    share,
    stage_devices,
    start,
)
from edgecloud.fleet.rollout_state import Rollout, bucket, desired_version
from edgecloud.server.fleet_telemetry import DeviceStatus

DEVICES = [f"dev-{i:02d}" for i in range(20)]


def device(name: str, version: int | None, health: bool | None = None, **over: Any) -> DeviceStatus:
    fields: dict[str, Any] = {
        "device": name, "group": None, "model": "m", "version": version, "last_contact": 1.0,
        "last_health_at": 1.0 if health is not None else None, "last_health_ok": health,
        "last_health_version": version if health is not None else None,
        "last_health_detail": "", "rollbacks": 0, "last_rollback_from": None, "errors": 0,
    }  # fmt: skip
    return DeviceStatus(**(fields | over))


def test_parse_percent_and_stages() -> None:
    assert parse_percent("5%") == 5.0 and parse_percent(" 0.5 ") == 0.5
    for bad in ("0%", "101", "nan", "five", "-3%", ""):
        with pytest.raises(ConfigError, match="canary"):
            parse_percent(bad)
    assert parse_stages("25,50", 5) == (5, 25, 50, 100)
    assert parse_stages("", 5) == (5, 100)
    with pytest.raises(ConfigError, match="ascend"):
        parse_stages("3", 5)


def test_unpublished_version_is_refused() -> None:
    with pytest.raises(ModelNotFoundError, match="never published"):
        start(None, model="m", version=3, percent=5, published={1, 2})


def test_lifecycle_and_generations() -> None:
    r = start(None, model="m", version=1, percent=100, published={1}, now=1)
    assert (r.stable, r.candidate, r.generation) == (None, 1, 1)
    r = start(r, model="m", version=2, percent=5, published={1, 2}, now=2)
    assert (r.stable, r.candidate, r.state, r.generation) == (1, 2, "active", 2)
    with pytest.raises(ConflictError, match="being rolled out"):
        start(r, model="m", version=3, percent=5, published={1, 2, 3})
    wider = start(r, model="m", version=2, percent=25, published={1, 2})
    assert (wider.percent, wider.generation) == (25, 3)
    paused = pause(wider, "m")
    assert paused.state == "paused" and pause(paused, "m") is paused
    assert resume(paused, "m").state == "active"
    aborted = abort(paused, "m")
    assert aborted.state == "aborted" and abort(aborted, "m") is aborted
    with pytest.raises(ConflictError, match="aborted"):
        resume(aborted, "m")
    again = start(aborted, model="m", version=2, percent=5, published={1, 2})
    assert (again.stable, again.candidate, again.state) == (1, 2, "active")
    with pytest.raises(ConflictError, match="already the stable"):
        start(aborted, model="m", version=1, percent=5, published={1, 2})
    with pytest.raises(ModelNotFoundError, match="no rollout"):
        pause(None, "m")


def test_abort_sends_canary_devices_back() -> None:
    r = start(None, model="m", version=1, percent=100, published={1})
    r = start(r, model="m", version=2, percent=30, published={1, 2})
    canary = [d for d in DEVICES if desired_version(r, d, None, 1) == 2]
    assert canary
    aborted = abort(r, "m", "bad")
    assert {desired_version(aborted, d, None, 2) for d in canary} == {1}


def test_pause_starts_no_new_device() -> None:
    r = start(None, model="m", version=1, percent=100, published={1})
    r = pause(start(r, model="m", version=2, percent=50, published={1, 2}), "m")
    inside = [d for d in DEVICES if bucket(d, "m") < 50]
    assert {desired_version(r, d, None, 1) for d in inside} == {1}
    assert {desired_version(r, d, None, 2) for d in inside} == {2}


def _auto(percent: float = 5) -> Rollout:
    r = start(None, model="m", version=1, percent=100, published={1})
    return start(
        r, model="m", version=2, percent=percent, published={1, 2}, stages=(percent, 50, 100)
    )


def test_auto_widens_an_empty_canary_to_one_device() -> None:
    r = _auto(0.0001)
    fleet = [device(d, 1) for d in DEVICES]
    decision = auto_step(r, fleet, [])
    assert decision.action == "promote"
    held = stage_devices(decision.rollout, fleet)
    assert [d.device for d in held] == [min(DEVICES, key=lambda d: bucket(d, "m"))]
    widened = decision.rollout.percent
    assert f"widened to {share(widened)}% to reach one device" in decision.detail
    healthy = [device(d.device, 2, health=True) for d in held]
    step = auto_step(decision.rollout, healthy, [])
    assert f"at {share(widened)}% (the share widened to reach one device)" in step.detail


def test_share_reads_as_a_percentage() -> None:
    assert [share(p) for p in (5, 0.5, 100, 57.862614, 99.97, 99.974, 0.0041234)] == [
        "5", "0.5", "100", "57.9", "99.97", "99.9", "0.0041",
    ]  # fmt: skip


def test_auto_promotes_only_when_every_stage_device_is_healthy() -> None:
    r = _auto(30)
    held = {d for d in DEVICES if bucket(d, "m") < 30}
    assert len(held) >= 2
    first = sorted(held)[0]
    fleet = [
        device(d, 2 if d == first else 1, health=True if d == first else None) for d in DEVICES
    ]
    assert auto_step(r, fleet, []).action == "wait"
    fleet = [device(d, 2, health=True) if d in held else device(d, 1) for d in DEVICES]
    unhealthy = [
        device(d, 2, health=False) if d == first else x for d, x in zip(DEVICES, fleet, strict=True)
    ]
    assert auto_step(r, unhealthy, []).action == "wait"
    step = auto_step(r, fleet, [])
    assert (step.action, step.rollout.percent) == ("promote", 50)
    done = auto_step(step.rollout, [device(d, 2, health=True) for d in DEVICES], [])
    assert (done.action, done.rollout.state, done.rollout.stable) == ("promote", "complete", 2)
    assert auto_step(done.rollout, [], []).action == "done"


def test_auto_aborts_on_any_rollback() -> None:
    step = auto_step(_auto(30), [device(d, 1) for d in DEVICES], ["dev-03"])
    assert step.action == "abort" and step.rollout.state == "aborted"
    assert "dev-03" in step.rollout.reason
    # the CLI prints "{action}: {detail}": no detail repeats its action
    assert not step.detail.startswith("abort")
    for r in (_auto(30), step.rollout):
        for decision in (auto_step(r, [device(d, 1) for d in DEVICES], []),):
            assert not decision.detail.startswith(f"{decision.action}:")


def test_promote_manual_rollout_stays_active_at_100() -> None:
    r = start(None, model="m", version=1, percent=100, published={1})
    r = promote(start(r, model="m", version=2, percent=5, published={1, 2}), 100)
    assert (r.state, r.percent) == ("active", 100)
    nxt = start(r, model="m", version=3, percent=5, published={1, 2, 3})
    assert (nxt.stable, nxt.candidate) == (2, 3)  # 100 % of everyone became stable


# -- against a real signed update repository (the tuf part) ----------------------


@pytest.fixture
def control(tmp_path: Path) -> Any:
    update_repo = pytest.importorskip("edgecloud.fleet.update_repo")
    keys = pytest.importorskip("edgecloud.fleet.keys")
    from edgecloud.fleet.rollout import RolloutControl

    signers = keys.new_signers()
    repo = update_repo.UpdateRepository.create(tmp_path / "fleet", signers)
    for v in (1, 2):
        custom = {"edgecloud": {"kind": "model", "model": "m", "version": v, "files": []}}
        repo.put_target(f"m/{v}/model.onnx", f"model {v}".encode(), custom)
    repo.sign()
    return lambda: RolloutControl(tmp_path / "fleet", signers)


def test_signed_rollout_round_trip(control: Any) -> None:
    ctl = control()
    assert ctl.current("m") is None
    r = ctl.change(
        "m", lambda prev, pub: start(prev, model="m", version=2, percent=5, published=pub)
    )
    assert control().current("m") == r
    with pytest.raises(ModelNotFoundError, match="never published"):
        ctl.change(
            "m", lambda prev, pub: start(prev, model="m", version=9, percent=5, published=pub)
        )
    assert control().current("m") == r


def test_concurrent_changes_lose_nothing(control: Any) -> None:
    control().change("m", lambda p, pub: start(p, model="m", version=2, percent=1, published=pub))
    barrier = threading.Barrier(6)

    def widen(k: int) -> None:
        ctl = control()
        barrier.wait()

        def bump(prev: Rollout | None, pub: set[int]) -> Rollout:
            assert prev is not None
            return start(prev, model="m", version=2, percent=prev.percent + 1, published=pub)

        ctl.change("m", bump)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(widen, range(6)))
    final = control().current("m")
    assert (final.percent, final.generation) == (7, 7)


def test_auto_limited_to_groups_ends_at_100_without_rewriting() -> None:
    r = start(None, model="m", version=1, percent=100, published={1})
    r = start(r, model="m", version=2, percent=100, published={1, 2}, groups=["lab"], stages=(100,))
    fleet = [device(d, 2, health=True, group="lab") for d in DEVICES[:3]]
    step = auto_step(r, [*fleet, device("field-1", 1, group="field")], [])
    assert step.action == "done" and step.rollout is r
