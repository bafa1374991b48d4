"""Choosing where to cut: the split that minimises expected end-to-end latency right now.

For each candidate — the two trivial ones (everything on the device, everything
on the server) and every profiled cut — the expected latency is

    head compute + (bytes up + bytes down) × 8 / bandwidth + RTT + tail compute

(the Neurosurgeon model). With a :class:`PowerModel` the objective can be the
device's energy per request instead: compute power × head time, radio power ×
upload time, idle power × the wait for the server. The planner keeps its
choice until the link estimate moves outside a hysteresis band, so a jittery
link does not flip the split on every request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

__all__ = ["ALL_LOCAL", "ALL_REMOTE", "CutProfile", "Link", "PowerModel", "SplitPlanner"]

Objective = Literal["latency", "energy"]

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
    codec: str = "fp32"
    """How the activation crosses the link (see :mod:`edgecloud.split.codec`)."""
    cosine: float = 1.0
    """Fidelity of this split's outputs to the full model's (1.0: identical)."""

    @property
    def key(self) -> str:
        """``cut17`` or ``cut17/int8``: unique among a plan's candidates."""
        return self.name if self.codec == "fp32" else f"{self.name}/{self.codec}"

    @property
    def trivial(self) -> bool:
        return self.name in (ALL_LOCAL, ALL_REMOTE)


@dataclass(frozen=True, slots=True)
class Link:
    rtt_s: float
    bandwidth_bps: float

    def __post_init__(self) -> None:
        if self.rtt_s < 0 or self.bandwidth_bps <= 0:
            raise ConfigError("a link needs rtt_s >= 0 and bandwidth_bps > 0")


@dataclass(frozen=True, slots=True)
class PowerModel:
    """The device's power draw in each phase of a request, in watts."""

    compute_w: float = 2.0
    """While the device computes (the head, or the whole model)."""
    radio_tx_w: float = 1.2
    """While it transmits (upload), on top of idle."""
    idle_w: float = 0.3
    """While it waits for the server (RTT, tail, download)."""

    def __post_init__(self) -> None:
        if min(self.compute_w, self.radio_tx_w, self.idle_w) < 0:
            raise ConfigError("power figures must be >= 0 watts")


def expected_seconds(profile: CutProfile, link: Link) -> float:
    if profile.name == ALL_LOCAL:
        return profile.head_s
    transfer = (profile.bytes_up + profile.bytes_down) * 8 / link.bandwidth_bps
    return profile.head_s + transfer + link.rtt_s + profile.tail_s


def expected_joules(profile: CutProfile, link: Link, power: PowerModel) -> float:
    """Device energy for one request split this way."""
    compute = power.compute_w * profile.head_s
    if profile.name == ALL_LOCAL:
        return compute
    upload = profile.bytes_up * 8 / link.bandwidth_bps
    waiting = link.rtt_s + profile.tail_s + profile.bytes_down * 8 / link.bandwidth_bps
    return compute + (power.radio_tx_w + power.idle_w) * upload + power.idle_w * waiting


class SplitPlanner:
    """Pick the fastest split for the current link; re-plan past a hysteresis band."""

    def __init__(
        self,
        profiles: list[CutProfile],
        *,
        hysteresis: float = 0.2,
        objective: Objective = "latency",
        power: PowerModel | None = None,
        min_cosine: float = 0.0,
    ) -> None:
        names = {p.name for p in profiles}
        if not {ALL_LOCAL, ALL_REMOTE} <= names:
            raise ConfigError(f"profiles must include {ALL_LOCAL!r} and {ALL_REMOTE!r}")
        if not 0 <= hysteresis < 1:
            raise ConfigError("hysteresis must be within [0, 1)")
        if objective not in ("latency", "energy"):
            raise ConfigError(f"objective must be latency or energy, not {objective!r}")
        self.profiles = [p for p in profiles if p.trivial or p.cosine >= min_cosine]
        self.hysteresis = hysteresis
        self.objective = objective
        self.power = power or PowerModel()
        self.choice: CutProfile | None = None
        self._planned_for: Link | None = None

    def cost(self, profile: CutProfile, link: Link) -> float:
        """Expected seconds (or joules, for the energy objective) of one candidate."""
        if self.objective == "energy":
            return expected_joules(profile, link, self.power)
        return expected_seconds(profile, link)

    def rank(self, link: Link) -> list[tuple[float, CutProfile]]:
        """Every candidate with its expected cost, cheapest first."""
        return sorted(((self.cost(p, link), p) for p in self.profiles),
                      key=lambda pair: pair[0])  # fmt: skip

    def exclude(self, candidate: CutProfile) -> None:
        """Stop planning with ``candidate`` (e.g. its tail is not on the server); re-plan."""
        if candidate.name == ALL_LOCAL:
            raise ConfigError("all-local is always a candidate")
        self.profiles = [p for p in self.profiles if p is not candidate]
        self.choice, self._planned_for = None, None

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
