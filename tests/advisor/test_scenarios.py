"""The built-in scenarios get the decisions a practitioner would defend, for the right
reasons and with the figures computed from their numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgecloud import ConfigError
from edgecloud.advisor import (
    SCENARIOS,
    advise,
    load_workload,
    scenario,
    scenario_names,
    sensitivity,
)
from edgecloud.advisor.decide import with_value
from edgecloud.advisor.spec import SECONDS_PER_MONTH


def test_every_scenario_is_shipped() -> None:
    assert set(scenario_names()) >= {
        "surveillance-cameras", "mobile-assistant", "industrial-iot", "camera-fleet",
        "regulated-health",
    }  # fmt: skip


def test_real_time_cameras_run_locally_because_the_uplink_is_too_slow() -> None:
    d = advise(scenario("surveillance-cameras"))
    assert d.strategy == "local"
    remote = d.candidate("remote")
    # 100 kB at 20 Mbps = 40 ms, on a link 60 % busy with 15 fps × 100 kB: 40 / 0.4 = 100 ms
    assert remote.latency.parts_ms["upload"] == pytest.approx(100.0)
    assert remote.latency.p50_ms == pytest.approx(30 + 100 + 0.4 + 8.7 / 20, rel=1e-3)
    assert any("misses the target 50 / 100 ms" in why for why in remote.missed)
    local = d.candidate("local")
    assert local.latency.p50_ms == pytest.approx(8.7, rel=0.05)  # 8.7 GFLOPs at 1 TFLOP/s
    # the server stays the place for analytics that can wait
    assert any("not time-sensitive" in note for note in local.notes)
    # 50 cameras × 15 fps × 100 kB for a month
    assert remote.uplink_gb_month == pytest.approx(50 * 15 * 100 * SECONDS_PER_MONTH / 1e6)


def test_the_assistant_is_a_cascade_local_for_common_commands() -> None:
    d = advise(scenario("mobile-assistant"))
    assert d.strategy == "cascade"
    assert d.recommended is not None
    assert d.recommended.parameters == {
        "small_model": "intent-small", "large_model": "assistant-llm", "escalation_rate": 0.25,
    }  # fmt: skip
    # on-device only: the small model is not accurate enough; the LLM does not fit a phone
    assert any(
        "accuracy 85.0% is below the required 90.0%" in w for w in d.candidate("local").blocked
    )
    # remote only: offline 3 % of the time, the app needs 99.9 %
    assert any("available 96.90%" in w for w in d.candidate("remote").missed)
    cascade, prefer = d.candidate("cascade"), d.candidate("prefer_remote")
    assert cascade.uplink_gb_month == pytest.approx(prefer.uplink_gb_month * 0.25)
    assert cascade.costs.average_monthly(24) < prefer.costs.average_monthly(24) / 3
    assert cascade.latency.p50_ms < 10  # most requests never leave the phone


def test_industrial_iot_runs_locally_and_syncs_when_the_link_is_up() -> None:
    d = advise(scenario("industrial-iot"))
    assert d.strategy == "local"
    assert d.recommended is not None and d.recommended.parameters["periodic_sync"] is True
    remote = d.candidate("remote")
    assert any("the round trip alone is 80 ms" in w for w in remote.missed)
    assert any("available 89.91%" in w for w in remote.missed)


def test_a_thousand_cameras_filter_then_forward_events() -> None:
    d = advise(scenario("camera-fleet"))
    assert d.strategy == "filter_then_forward"
    remote, filt = d.candidate("remote"), d.candidate("filter_then_forward")
    # 1,000 cameras × 2 Mbps = 250 MB/s ≈ 648 TB a month of raw video
    raw_gb = 1000 * 2e6 / 8 * SECONDS_PER_MONTH / 1e9
    assert raw_gb == pytest.approx(648_000)
    assert remote.uplink_gb_month == pytest.approx(raw_gb)
    assert filt.uplink_gb_month == pytest.approx(raw_gb * 0.02)
    down_gb = 1000 * 10 * 0.5 * SECONDS_PER_MONTH / 1e6
    transfer = raw_gb * 0.05 + down_gb * (0.05 + 0.09)
    assert remote.costs.monthly_usd["data transfer"] == pytest.approx(transfer)
    # 500 TFLOP/s of analytics at 60 % of 20 TFLOP/s per server: 42 servers
    assert remote.remote is not None and remote.remote.servers == 42
    assert remote.costs.monthly_usd["cloud compute"] == pytest.approx(42 * 720)
    assert filt.costs.average_monthly(36) < remote.costs.average_monthly(36) / 20
    # the cameras cannot run the analytics themselves
    assert any("needs 2,000 MB" in w for w in d.candidate("local").blocked)


def test_regulated_health_data_stays_local() -> None:
    d = advise(scenario("regulated-health"))
    assert d.strategy == "local"
    for c in d.candidates:
        if c.remote is not None:
            assert not c.feasible
            assert any("regulated data may not leave the device raw" in w for w in c.blocked)
    # even though the cloud would be cheaper to run
    assert d.candidate("remote").costs.average_monthly(36) < d.candidate(
        "local"
    ).costs.average_monthly(36)


def test_store_cameras_split_the_model_so_only_features_leave() -> None:
    d = advise(scenario("store-cameras"))
    assert d.strategy == "split"
    split = d.candidate("split")
    # the earliest int8 cut: 8 % of the model here, 200.7 kB instead of the 602 kB frame
    assert split.parameters["cut"] == "cut2/int8"
    assert split.latency.p50_ms < 250 < d.candidate("local").latency.p50_ms
    assert d.candidate("remote").latency.p50_ms > 250  # 602 kB on a 20 Mbit/s uplink
    assert any("misses the target" in why for why in d.candidate("local").missed)
    assert split.scores["privacy"].value > d.candidate("remote").scores["privacy"].value
    assert split.uplink_gb_month == pytest.approx(d.candidate("remote").uplink_gb_month / 3, 0.01)


def test_split_cuts_come_from_a_profile_edgecloud_split_wrote(tmp_path: Path) -> None:
    from edgecloud.split import CutProfile, SplitProfile

    candidates = [
        CutProfile("all-local", 0.5, 0.0, 0, 0),
        CutProfile("all-remote", 0.0, 0.02, 600_000, 4000),
        CutProfile("cut9", 0.1, 0.015, 150_000, 4000, codec="int8", cosine=0.999),
        CutProfile("cut30", 0.4, 0.005, 20_000, 4000, codec="int8", cosine=0.95),
    ]
    SplitProfile("resnet18-like", 1, 1, "test", candidates).save(tmp_path / "profile.json")
    raw = yaml.safe_load((SCENARIOS / "store-cameras.yaml").read_text())
    raw["hybrid"] = {"split_profile": "profile.json"}
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(raw))
    w = load_workload(tmp_path / "w.yaml")
    cuts = {c.name: c for c in w.hybrid.split_cuts}
    assert cuts["cut9/int8"].head_share == pytest.approx(0.2)
    assert cuts["cut9/int8"].activation_kb == pytest.approx(150.0)
    d = advise(w)
    assert d.candidate("split").parameters["cut"] == "cut9/int8"  # cut30 loses fidelity
    raw["hybrid"] = {"split_profile": "missing.json"}
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"hybrid.split_profile: no split profile at"):
        load_workload(tmp_path / "w.yaml")


@pytest.mark.parametrize("name", ["mobile-assistant", "camera-fleet", "industrial-iot"])
def test_every_reported_flip_really_flips_the_decision(name: str) -> None:
    w = scenario(name)
    base = advise(w).strategy
    flips = [f for f in sensitivity(w) if f.flips]
    assert flips, "every scenario has an input that would change its decision"
    for f in flips:
        for at, to in ((f.down, f.down_to), (f.up, f.up_to)):
            if at is None:
                continue
            assert advise(with_value(w, f.path, at)).strategy == to != base, f.path


def test_the_assistant_flips_where_a_practitioner_expects() -> None:
    flips = {f.path: f for f in sensitivity(scenario("mobile-assistant"))}
    # a small model as accurate as required makes it local-only
    assert flips["model.small_accuracy"].up == pytest.approx(0.90, abs=1e-3)
    assert flips["model.small_accuracy"].up_to == "local"
    # asking for more accuracy than the cascade's estimate (93.5 %) needs the LLM every time
    assert flips["application.min_accuracy"].up == pytest.approx(0.935, abs=1e-3)
    assert flips["application.min_accuracy"].up_to == "prefer_remote"
    # a p99 target below an escalated request's p99 leaves nothing feasible
    cascade = advise(scenario("mobile-assistant")).candidate("cascade")
    assert flips["application.latency_p99_ms"].down == pytest.approx(
        cascade.latency.p99_ms, rel=1e-3
    )
