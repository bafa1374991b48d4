"""rollout.json schema, the canary bucket and what a device is asked to run."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from edgecloud.errors import ConfigError
from edgecloud.fleet.rollout_state import (
    Rollout,
    bucket,
    desired_version,
    in_canary,
    parse_rollout,
)

IDS = [f"device-{i:05d}" for i in range(10_000)]


def test_bucket_is_in_range_and_stable_across_processes() -> None:
    values = [bucket(d, "digits") for d in IDS[:50]]
    assert all(0.0 <= v < 100.0 for v in values)
    code = (
        "from edgecloud.fleet.rollout_state import bucket;"
        "print([bucket(f'device-{i:05d}', 'digits') for i in range(50)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == repr(values)  # no per-process hash salt


@pytest.mark.parametrize("percent", [1.0, 5.0, 50.0])
def test_canary_share_within_binomial_bounds(percent: float) -> None:
    r = Rollout(model="digits", stable=1, candidate=2, percent=percent)
    hits = sum(in_canary(r, d, None) for d in IDS)
    n, p = len(IDS), percent / 100
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(hits - n * p) < 5 * sigma, (hits, n * p)


def test_canary_is_the_same_devices_every_time_and_growing_only_adds() -> None:
    five = {
        d for d in IDS if in_canary(Rollout(model="m", stable=1, candidate=2, percent=5), d, None)
    }
    again = {
        d for d in IDS if in_canary(Rollout(model="m", stable=1, candidate=3, percent=5), d, None)
    }
    twenty = {
        d for d in IDS if in_canary(Rollout(model="m", stable=1, candidate=2, percent=20), d, None)
    }
    assert five == again
    assert five < twenty


def test_bucket_depends_on_the_model() -> None:
    a = {d for d in IDS if bucket(d, "a") < 5}
    b = {d for d in IDS if bucket(d, "b") < 5}
    assert len(a & b) < len(a) / 4  # independent draws overlap ~5 %


def test_groups_restrict_the_candidate() -> None:
    r = Rollout(model="m", stable=1, candidate=2, percent=100, groups=("lab",))
    assert desired_version(r, "d1", "lab", 1) == 2
    assert desired_version(r, "d1", "field", 1) == 1
    assert desired_version(r, "d1", None, 1) == 1


def _split(percent: float) -> tuple[str, str]:
    r = Rollout(model="m", stable=1, candidate=2, percent=percent)
    inside = next(d for d in IDS if in_canary(r, d, None))
    outside = next(d for d in IDS if not in_canary(r, d, None))
    return inside, outside


def test_active_paused_aborted_complete() -> None:
    inside, outside = _split(10)
    base = {"model": "m", "stable": 1, "candidate": 2, "percent": 10}
    active = {**base, "state": "active"}
    assert desired_version(active, inside, None, 1) == 2
    assert desired_version(active, outside, None, 1) == 1
    paused = {**base, "state": "paused"}
    assert desired_version(paused, inside, None, 2) == 2  # already on it: stays
    assert desired_version(paused, inside, None, 1) == 1  # not started: does not start
    aborted = {**base, "state": "aborted"}
    assert desired_version(aborted, inside, None, 2) == 1  # goes back
    assert desired_version(aborted, outside, None, 1) == 1
    complete = {"model": "m", "stable": 2, "state": "complete", "percent": 100}
    assert desired_version(complete, outside, None, 1) == 2


def test_first_rollout_without_stable_leaves_others_alone() -> None:
    inside, outside = _split(10)
    r = {"model": "m", "candidate": 1, "percent": 10}
    assert desired_version(r, inside, None, None) == 1
    assert desired_version(r, outside, None, None) is None
    assert desired_version({**r, "state": "aborted"}, inside, None, 1) is None
    assert desired_version(None, inside, None, 3) is None


def test_round_trip_bytes() -> None:
    r = Rollout(model="m", stable=1, candidate=2, percent=5, stages=(5, 50, 100), auto=True)
    assert parse_rollout(r.to_bytes()) == r


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"model": "m", "candidate": 2, "percent": "lots"}, "percent"),
        ({"model": "m", "candidate": 2, "percent": 101}, "percent"),
        ({"model": "m", "candidate": 2, "percent": float("nan")}, "percent"),
        ({"model": "m", "candidate": 0}, "candidate"),
        ({"model": "", "candidate": 2}, "model"),
        ({"model": "m", "candidate": 2, "state": "exploded"}, "state"),
        ({"model": "m", "candidate": 2, "colour": "red"}, "colour"),
        ({"model": "m", "state": "active"}, "candidate"),
        ({"model": "m", "stable": 2, "candidate": 2}, "candidate"),
        ({"model": "m", "candidate": 2, "stages": [50, 5]}, "stages"),
        ({"model": "m", "candidate": 2, "groups": []}, "groups"),
    ],
)
def test_bad_documents_name_the_field(doc: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse_rollout(doc)


def test_not_json_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="rollout"):
        parse_rollout(b"{not json")
    with pytest.raises(ConfigError):
        desired_version({"model": "m"} | {"candidate": "two"}, "d", None, 1)
