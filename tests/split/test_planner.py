from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecloud import ConfigError, ModelRepository
from edgecloud.split import ProfileTailTimer, SplitProfile, split_model
from edgecloud.split.planner import (
    ALL_LOCAL,
    ALL_REMOTE,
    CutProfile,
    Link,
    PowerModel,
    SplitPlanner,
)

# A slow device, a server ten times faster; the mid cut shrinks 600 kB to 100 kB.
PROFILES = [
    CutProfile(ALL_LOCAL, head_s=0.200, tail_s=0.0, bytes_up=0, bytes_down=0),
    CutProfile("cut20", head_s=0.060, tail_s=0.014, bytes_up=100_000, bytes_down=4_000),
    CutProfile(ALL_REMOTE, head_s=0.0, tail_s=0.020, bytes_up=600_000, bytes_down=4_000),
]


def test_all_local_on_a_thin_link_all_remote_on_a_fat_one() -> None:
    planner = SplitPlanner(PROFILES)
    assert planner.plan(Link(rtt_s=0.1, bandwidth_bps=100e3)).name == ALL_LOCAL
    assert SplitPlanner(PROFILES).plan(Link(rtt_s=0.001, bandwidth_bps=10e9)).name == ALL_REMOTE


def test_a_middle_link_picks_the_cut_in_between() -> None:
    # 20 Mbit/s, 10 ms: local 200 ms; cut 60+41.6+10+14 = 126 ms; remote 241.6+10+20 = 272 ms
    ranked = SplitPlanner(PROFILES).rank(Link(rtt_s=0.010, bandwidth_bps=20e6))
    assert [p.name for _, p in ranked] == ["cut20", ALL_LOCAL, ALL_REMOTE]
    assert ranked[0][0] == pytest.approx(0.060 + 104_000 * 8 / 20e6 + 0.010 + 0.014)


def test_hysteresis_keeps_the_plan_until_the_link_really_moves() -> None:
    planner = SplitPlanner(PROFILES, hysteresis=0.2)
    first = planner.plan(Link(rtt_s=0.010, bandwidth_bps=20e6))
    assert planner.plan(Link(rtt_s=0.011, bandwidth_bps=17e6)) is first  # within 20 %
    assert planner.plan(Link(rtt_s=0.001, bandwidth_bps=10e9)).name == ALL_REMOTE


def test_nonsense_is_rejected() -> None:
    with pytest.raises(ConfigError, match="must include"):
        SplitPlanner(PROFILES[1:])
    with pytest.raises(ConfigError, match="bandwidth_bps > 0"):
        Link(rtt_s=0.01, bandwidth_bps=0)


def test_energy_objective_weighs_the_radio_not_the_wait() -> None:
    # 20 Mbit/s, RTT 10 ms. Latency: cut20 wins (126 ms vs 200 ms local).
    # Energy with an expensive radio (8 W): local 0.4 J, cut20 0.12 + 0.042*8.3 + ... > local.
    link = Link(rtt_s=0.010, bandwidth_bps=20e6)
    assert SplitPlanner(PROFILES).plan(link).name == "cut20"
    radio = PowerModel(compute_w=2.0, radio_tx_w=8.0, idle_w=0.3)
    energy = SplitPlanner(PROFILES, objective="energy", power=radio)
    joules = {p.name: cost for cost, p in energy.rank(link)}
    assert joules[ALL_LOCAL] == pytest.approx(2.0 * 0.200)
    assert joules["cut20"] == pytest.approx(
        2.0 * 0.060 + 8.3 * 100_000 * 8 / 20e6 + 0.3 * (0.010 + 0.014 + 4_000 * 8 / 20e6)
    )
    assert energy.plan(link).name == ALL_LOCAL
    # A cheap radio makes offloading the energy winner too.
    frugal = SplitPlanner(PROFILES, objective="energy", power=PowerModel(2.0, 0.5, 0.1))
    assert frugal.plan(link).name == "cut20"
    with pytest.raises(ConfigError, match="latency or energy"):
        SplitPlanner(PROFILES, objective="cost")  # type: ignore[arg-type]


def test_candidates_below_the_fidelity_floor_are_never_planned() -> None:
    lossy = CutProfile("cut20", 0.060, 0.014, 25_000, 4_000, codec="int8", cosine=0.95)
    planner = SplitPlanner([*PROFILES, lossy], min_cosine=0.99)
    assert all(p.key != "cut20/int8" for p in planner.profiles)
    assert SplitPlanner([*PROFILES, lossy]).plan(Link(0.010, 20e6)).key == "cut20/int8"


def test_profiles_measured_on_a_real_graph(branched_repo: ModelRepository) -> None:
    result = split_model(branched_repo, "branched", codecs=("fp32", "int8"), cuts=["cut2", "cut3"],
                         inputs={"x": np.ones((1, 8), np.float32)})  # fmt: skip
    by_key = {p.key: p for p in result.profile.candidates}
    assert set(by_key) == {ALL_LOCAL, ALL_REMOTE, "cut2", "cut3", "cut2/int8", "cut3/int8"}
    assert by_key[ALL_REMOTE].bytes_up == 8 * 4 and by_key[ALL_REMOTE].bytes_down == 4 * 4
    assert by_key["cut2"].bytes_up == 2 * 8 * 4  # a and b cross
    assert by_key["cut3"].bytes_up == 8 * 4  # s only (8 wide, before the last MatMul)
    assert by_key["cut3/int8"].bytes_up == 8 + 2 * 4  # uint8 values, scale and offset
    assert all(p.head_s >= 0 and p.tail_s >= 0 for p in result.profile.candidates)
    assert by_key["cut3/int8"].cosine > 0.99 and by_key["cut3"].cosine == pytest.approx(1.0)
    assert result.profile.tensors == {"cut2": ["a", "b"], "cut3": ["s"]}
    planner = result.profile.planner()
    assert planner.plan(Link(rtt_s=0.5, bandwidth_bps=1e3)).name == ALL_LOCAL


def test_only_cuts_that_can_win_are_written(branched_repo: ModelRepository) -> None:
    # x is 32 bytes; a cut is kept only if it sends fewer bytes than x and every earlier one.
    result = split_model(branched_repo, "branched", codecs=("fp32", "int8"))
    # fp32: no cut sends < 32 bytes; int8: cut2 sends 16 + 16 (not < 32), cut3 8 + 8.
    assert [(p.cut.name, p.codec) for p in result.pairs] == [("cut3", "int8")]
    assert result.cuts_considered == 4


def test_tail_times_from_a_profile_recorded_on_the_server(
    branched_repo: ModelRepository, tmp_path: Path
) -> None:
    # On the server: time the tails there and keep the profile ...
    server_side = split_model(branched_repo, "branched", codecs=("fp32", "int8"), cuts=["cut3"])
    recorded = server_side.profile.save(tmp_path / "server-profile.json")
    # ... on the device: head times measured here, tail times read from that file.
    timer = ProfileTailTimer(SplitProfile.load(recorded))
    device_side = split_model(branched_repo, "branched", codecs=("fp32", "int8"), cuts=["cut3"],
                              tail_timer=timer)  # fmt: skip
    assert "server-profile.json" in device_side.profile.tail_source
    for candidate in device_side.profile.candidates:
        if candidate.name != ALL_LOCAL:
            assert candidate.tail_s == server_side.profile.candidate(candidate.key).tail_s
    with pytest.raises(ConfigError, match="has no time for 'branched.tail.cut2'"):
        split_model(branched_repo, "branched", cuts=["cut2"], tail_timer=timer)


def test_a_split_of_another_parent_is_never_reused(
    branched_repo: ModelRepository, tmp_path: Path
) -> None:
    import shutil

    from edgecloud.repository import config_from_onnx

    from ..sample_data import random_samples
    from .test_partition import branched_onnx

    split_model(branched_repo, "branched", cuts=["cut3"])
    again = split_model(branched_repo, "branched", cuts=["cut3"])  # same parent: reused
    assert (
        again.pairs[0].tail.metadata["parent_sha256"]
        == branched_repo.get("branched").files["model.onnx"]
    )
    shutil.rmtree(branched_repo.root / "branched" / "1")  # retrained weights, same version
    path = branched_onnx(tmp_path / "retrained.onnx")
    config = config_from_onnx(path, "branched", max_batch_size=16)
    samples = random_samples(tmp_path / "retrained.npz", config)
    branched_repo.add_version("branched", path, config=config, version=1, samples=samples)
    with pytest.raises(ConfigError, match="was split from another branched version 1; remove it"):
        split_model(branched_repo, "branched", cuts=["cut3"])
