from __future__ import annotations

import pytest

from edgecloud import ConfigError
from edgecloud.split.planner import ALL_LOCAL, ALL_REMOTE, CutProfile, Link, SplitPlanner

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


def test_profiles_measured_on_a_real_graph(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from edgecloud.split import cut_points
    from edgecloud.split.profile import profile_cuts

    from .test_partition import branched_onnx

    path = branched_onnx(tmp_path / "m.onnx")
    x = np.ones((1, 8), np.float32)
    profiles = profile_cuts(path, cut_points(path), {"x": x}, tmp_path, server_speedup=4.0)
    by_name = {p.name: p for p in profiles}
    assert set(by_name) == {ALL_LOCAL, ALL_REMOTE, "cut0", "cut1", "cut2", "cut3"}
    assert by_name[ALL_REMOTE].bytes_up == x.nbytes and by_name[ALL_REMOTE].bytes_down == 4 * 4
    assert by_name["cut2"].bytes_up == 2 * 8 * 4  # a and b cross
    assert by_name["cut3"].bytes_up == 8 * 4  # s only (8 wide, before the last MatMul)
    assert all(p.head_s >= 0 and p.tail_s >= 0 for p in profiles)
    assert SplitPlanner(profiles).plan(Link(rtt_s=0.5, bandwidth_bps=1e3)).name == ALL_LOCAL
