"""Choosing where to cut: the split that minimises expected end-to-end latency right now.

For each candidate — the two trivial ones (everything on the device, everything
on the server) and every profiled cut — the expected latency is

    head compute + (bytes up + bytes down) × 8 / bandwidth + RTT + tail compute

(the Neurosurgeon model). The planner keeps its choice until the link estimate
moves outside a hysteresis band, so a jittery link does not flip the split on
every request.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["ALL_LOCAL", "ALL_REMOTE", "CutProfile", "Link", "SplitPlanner"]

ALL_LOCAL = "all-local"
ALL_REMOTE = "all-remote"


@dataclass(frozen=True, slots=True)
class CutProfile:
    """Measured costs of one way to split a request."""

    name: str
    head_s: float
    """Device compute before the cut (the whole model for all-local)."""
    tail_s: float
    """Server compute after the cut (the whole model for all-remote)."""
    bytes_up: int
    """What crosses the link to the server (the input itself for all-remote)."""
    bytes_down: int
    """What comes back (the outputs), 0 for all-local."""


@dataclass(frozen=True, slots=True)
class Link:
    rtt_s: float
    bandwidth_bps: float

    def __post_init__(self) -> None:
        if self.rtt_s < 0 or self.bandwidth_bps <= 0:
            raise ConfigError("a link needs rtt_s >= 0 and bandwidth_bps > 0")


def expected_seconds(profile: CutProfile, link: Link) -> float:
    if profile.name == ALL_LOCAL:
        return profile.head_s
    transfer = (profile.bytes_up + profile.bytes_down) * 8 / link.bandwidth_bps
    return profile.head_s + transfer + link.rtt_s + profile.tail_s


class SplitPlanner:
    """Pick the fastest split for the current link; re-plan past a hysteresis band."""

    def __init__(self, profiles: list[CutProfile], *, hysteresis: float = 0.2) -> None:
        names = {p.name for p in profiles}
        if not {ALL_LOCAL, ALL_REMOTE} <= names:
            raise ConfigError(f"profiles must include {ALL_LOCAL!r} and {ALL_REMOTE!r}")
        if not 0 <= hysteresis < 1:
            raise ConfigError("hysteresis must be within [0, 1)")
        self.profiles = profiles
        self.hysteresis = hysteresis
        self.choice: CutProfile | None = None
        self._planned_for: Link | None = None

    def rank(self, link: Link) -> list[tuple[float, CutProfile]]:
        """Every candidate with its expected seconds, fastest first."""
        return sorted(((expected_seconds(p, link), p) for p in self.profiles),
                      key=lambda pair: pair[0])  # fmt: skip

    def plan(self, link: Link) -> CutProfile:
        """The split to use now; unchanged while the link stays within the band."""
        if self.choice is not None and self._planned_for is not None and self._within_band(link):
            return self.choice
        self.choice = self.rank(link)[0][1]
        self._planned_for = link
        return self.choice

    def _within_band(self, link: Link) -> bool:
        assert self._planned_for is not None
        before, band = self._planned_for, self.hysteresis

        def close(a: float, b: float) -> bool:
            return abs(a - b) <= band * max(abs(b), 1e-9)

        return close(link.bandwidth_bps, before.bandwidth_bps) and close(link.rtt_s, before.rtt_s)
