"""From a workload to a recommendation: candidates, hard constraints, six factors, flips.

Each way of running the workload (local, remote, and the hybrid patterns that
apply) is a :class:`Candidate` with its latency, cost, accuracy and
availability. Hard constraints (memory, throughput, latency targets, required
availability, privacy, uplink capacity, power, accuracy floor) make a candidate
infeasible with a sentence in the user's numbers; feasible ones are scored on
six factors (0–10, absolute against the user's targets so a score never
depends on what else is on the table, except cost, which is relative to the
cheapest) and the highest weighted score wins. :func:`sensitivity` then moves
every numeric input until the recommendation flips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from .estimate import Costs, Latency, LocalPlan, RemotePlan, local_plan, remote_plan
from .spec import Workload

__all__ = [
    "FACTORS",
    "Candidate",
    "Decision",
    "Flip",
    "Score",
    "candidates",
    "decide",
    "sensitivity",
]

Strategy = Literal["local", "remote", "cascade", "prefer_remote", "filter_then_forward", "split"]
FACTORS = ("latency", "compute", "connectivity", "privacy", "operations", "cost")
FACTOR_TITLES = {
    "latency": "Latency",
    "compute": "Compute & model quality",
    "connectivity": "Connectivity",
    "privacy": "Privacy",
    "operations": "Scalability & maintenance",
    "cost": "Cost",
}
TITLES: dict[str, str] = {
    "local": "local",
    "remote": "remote",
    "cascade": "hybrid: cascade",
    "prefer_remote": "hybrid: prefer remote, local when offline",
    "filter_then_forward": "hybrid: filter on device, forward events",
    "split": "hybrid: split the model (head on device, tail on server)",
}


@dataclass(frozen=True)
class Score:
    value: float
    why: str


@dataclass
class Candidate:
    strategy: Strategy
    summary: str
    latency: Latency
    costs: Costs
    accuracy: float
    availability: float
    remote_share: float
    uplink_gb_month: float
    local: LocalPlan | None = None
    remote: RemotePlan | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    """Why it cannot run at all (memory, throughput, privacy, accuracy, power)."""
    missed: list[str] = field(default_factory=list)
    """Targets it misses under these network conditions (latency, availability, uplink)."""
    notes: list[str] = field(default_factory=list)
    scores: dict[str, Score] = field(default_factory=dict)
    total: float = 0.0

    @property
    def infeasible(self) -> list[str]:
        return self.blocked + self.missed

    @property
    def feasible(self) -> bool:
        return not self.blocked and not self.missed

    @property
    def title(self) -> str:
        return TITLES[self.strategy]


@dataclass
class Decision:
    workload: Workload
    candidates: list[Candidate]
    recommended: Candidate | None
    reasons: list[str]
    """Why, most important first."""

    def candidate(self, strategy: str) -> Candidate:
        for c in self.candidates:
            if c.strategy == strategy:
                return c
        raise KeyError(f"no candidate {strategy!r}; have {[c.strategy for c in self.candidates]}")

    @property
    def strategy(self) -> str:
        return self.recommended.strategy if self.recommended else "none"


# -- candidates ------------------------------------------------------------------------


def _local_for(w: Workload, *, share: float = 1.0) -> LocalPlan:
    """The best model the device can run: the large one if it fits and keeps up, else the
    small variant, else the large one int8-quantized; problems say why none works."""
    m = w.model
    large = local_plan(
        w, name=m.name, memory_mb=m.memory, gflops=m.gflops or 0.0, accuracy=m.accuracy,
        measured_ms=m.measured_local_ms, share=share,
    )  # fmt: skip
    if not large.problems or not m.has_small:
        return large
    return _small(w, share=share)


def _small(w: Workload, *, share: float = 1.0) -> LocalPlan:
    m = w.model
    assert m.small_name and m.small_memory_mb and m.small_gflops and m.small_accuracy
    return local_plan(
        w, name=m.small_name, memory_mb=m.small_memory_mb, gflops=m.small_gflops,
        accuracy=m.small_accuracy, measured_ms=m.measured_small_local_ms, share=share,
    )  # fmt: skip


def candidates(w: Workload) -> list[Candidate]:
    """Every way of running the workload that applies, with hard constraints checked."""
    out = [_local_candidate(w), _remote_candidate(w)]
    if w.model.has_small:
        out.append(_cascade_candidate(w))
    out.append(_prefer_remote_candidate(w))
    if w.hybrid.event_fraction is not None:
        out.append(_filter_candidate(w))
    if w.hybrid.split_cuts:
        out.append(_split_candidate(w))
    for c in out:
        _check_common(w, c)
    return out


def _local_candidate(w: Workload) -> Candidate:
    plan = _local_for(w)
    c = Candidate(
        "local", f"run {plan.model} on every device", plan.latency, plan.costs, plan.accuracy,
        1.0, 0.0, 0.0, local=plan, parameters={"model": plan.model},
    )  # fmt: skip
    c.blocked.extend(plan.problems)
    if plan.compressed:
        c.notes.append(
            f"{plan.model} fits only int8-quantized (≈{plan.memory_mb:,.0f} MB): "
            f"run `edgecloud compress {plan.model} -m int8-dynamic` and check its accuracy"
        )
    if w.network.availability < w.application.availability:
        c.parameters["periodic_sync"] = True
        c.summary += "; results sync through the outbox when the link is up"
    return c


def _remote_candidate(w: Workload) -> Candidate:
    plan = remote_plan(w, share=1.0)
    c = Candidate(
        "remote", f"send every request to {plan.servers or 'a managed'} server(s) running "
        f"{w.model.name}", plan.latency, plan.costs, w.model.accuracy, plan.availability,
        1.0, plan.uplink_gb_month, remote=plan,
    )  # fmt: skip
    c.missed.extend(plan.problems)
    _raw_leaves(w, c)
    return c


def _cascade_candidate(w: Workload) -> Candidate:
    rate = w.hybrid.escalation_rate
    small = _small(w)
    remote = remote_plan(w, share=rate)
    m = w.model
    assert m.small_accuracy is not None
    # bench/cascade.py: a calibrated cascade kept ~83 % of the gap between the models.
    accuracy = m.accuracy - 0.2 * max(0.0, m.accuracy - m.small_accuracy) * (1 - rate)
    escalated_p99 = small.latency.p99_ms + remote.latency.p99_ms
    p99 = escalated_p99 if rate > 0.01 else small.latency.p99_ms
    p50 = small.latency.p50_ms + (remote.latency.p50_ms if rate > 0.5 else 0.0)
    latency = Latency(p50, p99, {**small.latency.parts_ms, "escalated (p99)": escalated_p99})
    c = Candidate(
        "cascade", f"{small.model} on the device answers confident requests; "
        f"{rate:.0%} escalate to {m.name} on the server", latency, small.costs + remote.costs,
        accuracy, 1.0, rate, remote.uplink_gb_month, local=small, remote=remote,
        parameters={"small_model": small.model, "large_model": m.name, "escalation_rate": rate},
    )  # fmt: skip
    c.blocked.extend(small.problems)
    c.missed.extend(remote.problems)
    _raw_leaves(w, c)
    return c


def _prefer_remote_candidate(w: Workload) -> Candidate:
    remote = remote_plan(w, share=1.0)
    outage = 1 - remote.availability
    local = _local_for(w, share=outage)
    accuracy = w.model.accuracy * (1 - outage) + local.accuracy * outage
    c = Candidate(
        "prefer_remote", f"{w.model.name} on the server; {local.model} on the device while "
        "the link or server is down", remote.latency, remote.costs + local.costs, accuracy,
        1.0, 1 - outage, remote.uplink_gb_month, local=local, remote=remote,
        parameters={"fallback_model": local.model},
    )  # fmt: skip
    c.blocked.extend(local.problems)
    c.missed.extend(remote.problems)
    _raw_leaves(w, c)
    return c


def _filter_candidate(w: Workload) -> Candidate:
    h = w.hybrid
    assert h.event_fraction is not None
    trigger = local_plan(
        w, name="trigger", memory_mb=h.trigger_memory_mb, gflops=h.trigger_gflops,
        accuracy=1.0, allow_compression=False,
    )  # fmt: skip
    remote = remote_plan(w, share=h.event_fraction)
    latency = Latency(
        trigger.latency.p50_ms + remote.latency.p50_ms,
        trigger.latency.p99_ms + remote.latency.p99_ms,
        {"trigger": trigger.compute_ms, **remote.latency.parts_ms},
    )
    c = Candidate(
        "filter_then_forward", f"a trigger on the device keeps {h.event_fraction:.1%} of the "
        f"stream (the events) and forwards it to {w.model.name} on the server",
        latency, trigger.costs + remote.costs, w.model.accuracy * h.event_recall,
        1.0 if not w.application.time_sensitive else remote.availability,
        h.event_fraction, remote.uplink_gb_month, local=trigger, remote=remote,
        parameters={"event_fraction": h.event_fraction, "event_recall": h.event_recall},
    )  # fmt: skip
    c.blocked.extend(trigger.problems)
    c.missed.extend(remote.problems)
    c.notes.append("events queue in the outbox while the link is down; nothing is lost")
    _raw_leaves(w, c)
    return c


def _split_candidate(w: Workload) -> Candidate:
    """The fastest of the given cuts whose fidelity holds (cosine >= 0.99)."""
    m = w.model
    faithful = [cut for cut in w.hybrid.split_cuts if cut.cosine >= 0.99]
    options = []
    for cut in faithful or w.hybrid.split_cuts:
        measured = m.measured_local_ms * cut.head_share if m.measured_local_ms else None
        head = local_plan(
            w, name=f"{m.name}.head.{cut.name.split('/')[0]}", memory_mb=m.memory * cut.head_share,
            gflops=(m.gflops or 0.0) * cut.head_share, accuracy=m.accuracy, measured_ms=measured,
        )  # fmt: skip
        remote = remote_plan(
            w, share=1.0, payload_kb=cut.activation_kb, compute_share=1 - cut.head_share
        )
        latency = Latency(
            head.latency.p50_ms + remote.latency.p50_ms,
            head.latency.p99_ms + remote.latency.p99_ms,
            {"head": head.compute_ms, **remote.latency.parts_ms},
        )
        options.append((latency.p50_ms, cut, head, remote, latency))
    _, cut, head, remote, latency = min(options, key=lambda option: option[0])
    c = Candidate(
        "split", f"the first {cut.head_share:.0%} of {m.name} runs on the device; the "
        f"activation at {cut.name} ({cut.activation_kb:,.1f} kB instead of "
        f"{w.application.payload_kb:,.1f} kB) goes to the tail on the server",
        latency, head.costs + remote.costs, m.accuracy, remote.availability, 1.0,
        remote.uplink_gb_month, local=head, remote=remote,
        parameters={"model": m.name, "cut": cut.name, "head_share": cut.head_share,
                    "activation_kb": cut.activation_kb, "cosine": cut.cosine},
    )  # fmt: skip
    c.blocked.extend(head.problems)
    c.missed.extend(remote.problems)
    if not faithful:
        c.notes.append(f"no cut keeps cosine ≥ 0.99; {cut.name} keeps {cut.cosine:.3f}")
    if w.privacy.residency == "device":
        c.blocked.append("the data must stay on the device (privacy.residency: device)")
    elif w.privacy.data_class == "regulated":
        c.notes.append(
            "only the activation at the cut leaves the device, never the raw input (Guard "
            "rule `features`); whether such features count as regulated data is for your "
            "compliance review: activations can leak information about the input"
        )
    c.notes.append(f"`edgecloud split {m.name}` writes and profiles the cuts")
    return c


def _raw_leaves(w: Workload, c: Candidate) -> None:
    p = w.privacy
    if p.data_class == "regulated":
        c.blocked.append(
            "regulated data may not leave the device raw, and this option sends "
            f"{c.remote_share:.0%} of requests' raw payloads to the server "
            "(keep it local, or split the model so only features leave: `edgecloud split`)"
        )
    elif p.residency == "device":
        c.blocked.append("the data must stay on the device (privacy.residency: device)")


def _check_common(w: Workload, c: Candidate) -> None:
    app = w.application
    slow = c.latency.p50_ms > app.latency_p50_ms or c.latency.p99_ms > app.latency_p99_ms
    if app.time_sensitive and slow:
        why = (
            f"latency p50 {c.latency.p50_ms:,.1f} / p99 {c.latency.p99_ms:,.1f} ms misses "
            f"the target {app.latency_p50_ms:g} / {app.latency_p99_ms:g} ms "
            f"({c.latency.describe()} ms)"
        )
        if c.remote is not None and w.network.rtt_ms >= app.latency_p50_ms:
            why += f"; the round trip alone is {w.network.rtt_ms:g} ms"
        c.missed.append(why)
    if c.availability < app.availability:
        c.missed.append(
            f"available {c.availability:.2%} of the time (link {w.network.availability:.2%} × "
            f"server {w.prices.server_availability:.2%}) but the application needs "
            f"{app.availability:.2%}"
        )
    if app.min_accuracy is not None and c.accuracy < app.min_accuracy:
        c.blocked.append(f"accuracy {c.accuracy:.1%} is below the required {app.min_accuracy:.1%}")
    budget = w.device.power_budget_w
    if budget is not None and c.local is not None and c.local.power_w > budget:
        c.blocked.append(
            f"inference draws {c.local.power_w:.2f} W on average, over the "
            f"{budget:g} W power budget"
        )


# -- factors ---------------------------------------------------------------------------


def _clamp(x: float) -> float:
    return max(0.0, min(10.0, x))


def score(w: Workload, cands: list[Candidate]) -> None:
    """Fill every candidate's six factor scores and weighted total."""
    # The cost reference is the cheapest option that can run at all, whatever the network
    # does: so RTT, jitter or link availability never change a cost score.
    runnable = [c for c in cands if not c.blocked] or cands
    reference = min(runnable, key=lambda c: c.costs.average_monthly(w.horizon_months))
    weights = w.weights.model_dump()
    for c in cands:
        c.scores = {
            "latency": _latency_score(w, c),
            "compute": _compute_score(w, c),
            "connectivity": _connectivity_score(w, c),
            "privacy": _privacy_score(w, c),
            "operations": _operations_score(w, c),
            "cost": _cost_score(w, c, reference),
        }
        total_weight = sum(weights.values()) or 1.0
        c.total = sum(weights[f] * c.scores[f].value for f in FACTORS) / total_weight


def _latency_score(w: Workload, c: Candidate) -> Score:
    app = w.application
    headroom = min(app.latency_p99_ms / max(c.latency.p99_ms, 1e-6),
                   app.latency_p50_ms / max(c.latency.p50_ms, 1e-6))  # fmt: skip
    value = _clamp(10 * (headroom - 0.5) / 1.5) if headroom < 2 else 10.0
    return Score(
        value,
        f"p50 {c.latency.p50_ms:,.1f} ms / p99 {c.latency.p99_ms:,.1f} ms against "
        f"{app.latency_p50_ms:g} / {app.latency_p99_ms:g} ms ({c.latency.describe()})",
    )


def _compute_score(w: Workload, c: Candidate) -> Score:
    quality = (c.accuracy / w.model.accuracy) ** 10
    load = 0.0
    detail = "nothing runs on the device"
    if c.local is not None:
        mem = c.local.memory_mb / w.device.memory_mb
        load = min(1.0, max(mem, c.local.utilization))
        detail = (
            f"{c.local.model} uses {mem:.0%} of device memory and keeps it "
            f"{c.local.utilization:.0%} busy"
        )
    value = _clamp(10 * quality * (1 - 0.5 * load))
    return Score(value, f"accuracy {c.accuracy:.1%} (best {w.model.accuracy:.1%}); {detail}")


def _connectivity_score(w: Workload, c: Candidate) -> Score:
    allowed = max(1e-9, 1 - w.application.availability)
    missing = 1 - c.availability
    link = c.remote.link_utilization if c.remote else 0.0
    value = _clamp(10 * (1 - missing / allowed) - 5 * link)
    if c.remote_share == 0:
        why = "works with no network at all"
    else:
        why = (
            f"answers {c.availability:.3%} of the time (needed {w.application.availability:.3%});"
            f" {c.remote_share:.0%} of requests cross a link that is up "
            f"{w.network.availability:.2%}, uplink {link:.0%} used"
        )
    return Score(value, why)


def _privacy_score(w: Workload, c: Candidate) -> Score:
    leaves = c.remote_share if c.remote is not None else 0.0
    cls = w.privacy.data_class
    if leaves == 0:
        return Score(10.0, f"{cls} data never leaves the device")
    if c.strategy == "split":
        penalty = {"public": 0.5, "personal": 3.0, "regulated": 5.0}[cls]
        return Score(10 - penalty, f"{cls} data: only features (the activation) leave the device")
    if cls == "regulated":
        return Score(0.0, f"regulated data: {leaves:.0%} of raw payloads would leave")
    penalty = {"public": 1.0, "personal": 6.0}[cls] * leaves
    if w.privacy.residency == "region":
        penalty += 1.0
    return Score(_clamp(10 - penalty), f"{cls} data: {leaves:.0%} of payloads leave the device")


def _operations_score(w: Workload, c: Candidate) -> Score:
    n = w.device.count
    updates = w.operations.model_updates_per_year
    local_ops = _clamp(10 - 1.5 * math.log10(n) - 0.5 * math.sqrt(updates))
    remote_ops = 9.0
    if c.remote is None:
        return Score(local_ops, f"{updates:g} model updates a year pushed to {n:,} device(s)")
    if c.local is None or c.strategy == "filter_then_forward":
        return Score(remote_ops, "one server deployment to update; scales by adding servers")
    return Score(
        (local_ops + remote_ops) / 2 - 1,
        f"two tiers to keep in step: {updates:g} updates a year to {n:,} device(s) and servers",
    )


def _cost_score(w: Workload, c: Candidate, reference: Candidate) -> Score:
    """10 for the cheapest runnable option, 2.5 points less per doubling of cost."""
    months = w.horizon_months
    own = c.costs.average_monthly(months)
    cheapest = reference.costs.average_monthly(months)
    value = (
        10.0
        if own <= cheapest or own <= 0
        else _clamp(10 - 2.5 * math.log2(own / max(cheapest, 1e-9)))
    )
    against = (
        "the cheapest option"
        if c is reference
        else (
            f"{own / max(cheapest, 1e-9):,.1f}× the cheapest, {reference.strategy} "
            f"(${cheapest:,.0f})"
        )
    )
    return Score(value, f"${own:,.0f}/month averaged over {months} months, {against}")


# -- decision --------------------------------------------------------------------------


def decide(w: Workload) -> Decision:
    """Score every candidate and recommend the best feasible one, with ranked reasons."""
    cands = candidates(w)
    score(w, cands)
    feasible = sorted((c for c in cands if c.feasible), key=lambda c: -c.total)
    if not feasible:
        return Decision(w, cands, None, [f"{c.title}: {c.infeasible[0]}" for c in cands])
    best = feasible[0]
    reasons: list[str] = []
    for other in cands:
        if not other.feasible:
            reasons.append(f"{other.title} is ruled out: {other.infeasible[0]}")
    if len(feasible) > 1:
        runner = feasible[1]
        weights = w.weights.model_dump()
        gains = sorted(
            FACTORS,
            key=lambda f: -(weights[f] * (best.scores[f].value - runner.scores[f].value)),
        )
        for f in gains:
            gap = best.scores[f].value - runner.scores[f].value
            if gap > 0.05:
                reasons.append(
                    f"{FACTOR_TITLES[f].lower()} ({gap:+.1f} vs {runner.title}): "
                    f"{best.scores[f].why}"
                )
        reasons.append(f"overall {best.total:.2f} vs {runner.total:.2f} for {runner.title}")
    else:
        reasons.append(f"it is the only feasible option (score {best.total:.2f})")
    if best.strategy == "local":
        remote = next(c for c in cands if c.strategy == "remote")
        if any("latency" in why for why in remote.infeasible):
            best.notes.append(
                "the server remains the place for work that is not time-sensitive (analytics "
                "on stored events, retraining): only the latency target rules it out"
            )
    return Decision(w, cands, best, reasons)


# -- sensitivity -----------------------------------------------------------------------


@dataclass(frozen=True)
class Flip:
    """A numeric input and the values at which the recommendation changes."""

    path: str
    value: float
    down: float | None
    down_to: str | None
    up: float | None
    up_to: str | None

    @property
    def flips(self) -> bool:
        return self.down is not None or self.up is not None


SKIP = {"weights", "horizon_months"}


def numeric_inputs(w: Workload) -> list[tuple[str, float, float | None, float | None]]:
    """(path, value, lower bound, upper bound) of every numeric input that is set."""
    out = []
    for section_name, section in w:
        if section_name in SKIP or not isinstance(section, BaseModel):
            continue
        for name, info in type(section).model_fields.items():
            value = getattr(section, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            lo: float | None = None
            hi: float | None = None
            for meta in info.metadata:
                lo = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else lo
                lo = getattr(meta, "gt", None) if getattr(meta, "gt", None) is not None else lo
                hi = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else hi
                hi = getattr(meta, "lt", None) if getattr(meta, "lt", None) is not None else hi
            out.append((f"{section_name}.{name}", float(value), lo, hi))
    return out


def with_value(w: Workload, path: str, value: float) -> Workload:
    section_name, name = path.split(".")
    section = getattr(w, section_name)
    if isinstance(getattr(section, name), int):
        value = max(1, round(value))
    new_section = section.model_copy(update={name: value})
    return w.model_copy(update={section_name: new_section})


def _strategy_at(w: Workload, path: str, value: float) -> str:
    return decide(with_value(w, path, value)).strategy


def _search(
    w: Workload, path: str, value: float, lo: float | None, hi: float | None, up: bool
) -> tuple[float | None, str | None]:
    """The nearest value in one direction where the recommendation changes (to ~1 %)."""
    base = decide(w).strategy
    if hi is not None and hi <= 1 and (lo is None or lo >= 0):  # a fraction: linear
        end = hi if up else (lo or 0.0)
        end = end - 1e-6 if up and hi is not None else end + 1e-6
        grid = [value + (end - value) * k / 24 for k in range(1, 25)]
    else:
        factors = [10 ** (k / 8) for k in range(1, 17)]  # up to 100x
        if value == 0:
            grid = [1e-3 * f for f in factors] if up else []
        else:
            grid = [value * f for f in factors] if up else [value / f for f in factors]
        if lo is not None:
            grid = [g for g in grid if g > lo]
        if hi is not None:
            grid = [g for g in grid if g < hi]
    previous = value
    for g in grid:
        changed = _strategy_at(w, path, g)
        if changed != base:
            a, b = previous, g
            for _ in range(14):
                mid = (a + b) / 2
                if _strategy_at(w, path, mid) == base:
                    a = mid
                else:
                    b = mid
            return b, _strategy_at(w, path, b)
        previous = g
    return None, None


def sensitivity(w: Workload) -> list[Flip]:
    """For every numeric input: the values (down to 1/100, up to 100×, or the field's
    bounds) at which the recommendation flips, and to what."""
    flips = []
    for path, value, lo, hi in numeric_inputs(w):
        down, down_to = _search(w, path, value, lo, hi, up=False)
        up, up_to = _search(w, path, value, lo, hi, up=True)
        flips.append(Flip(path, value, down, down_to, up, up_to))
    return flips
