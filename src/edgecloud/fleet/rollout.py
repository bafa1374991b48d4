"""Staged rollout: the operator's changes to ``MODEL/rollout.json`` and the automatic mode.

Every change is a new signed generation of the model's rollout target in the
update repository (:class:`~edgecloud.fleet.update_repo.UpdateRepository`),
read, changed and signed under the repository's writer lock, so two
``edgecloud fleet rollout`` commands at once never lose one's change (and a
``fleet publish`` at the same time neither). Devices follow the file through
:func:`~edgecloud.fleet.rollout_state.desired_version`.

The transitions are pure functions of the previous state (:func:`start`,
:func:`pause`, :func:`resume`, :func:`abort`, :func:`promote`) and
:func:`auto_step` decides the automatic mode from the fleet's telemetry:

* a stage passes when every device the stage holds (known devices whose
  bucket is below the stage's percentage, in the rollout's groups) reports
  that it runs the candidate and its latest health check on the candidate
  passed — Argo Rollouts' analysis step, with the device's own health check
  (the version's samples) as the metric;
* any rollback away from the candidate aborts the rollout at once (Mender's
  "abort on failure"), so a bad version never reaches the next stage;
* a stage of the hash space that holds no known device is widened to the
  next known device, so a 5 % canary of 20 devices is one device rather than
  none (Mender phases round a batch up to one device the same way).
"""

from __future__ import annotations

import importlib
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ConflictError, ModelNotFoundError
from .rollout_state import Rollout, bucket, in_canary, parse_rollout, rollout_target_path

if TYPE_CHECKING:
    from ..server.fleet_telemetry import DeviceStatus

__all__ = [
    "AutoDecision",
    "RolloutControl",
    "abort",
    "auto_step",
    "parse_percent",
    "parse_stages",
    "pause",
    "promote",
    "published_versions",
    "resume",
    "run_auto",
    "share",
    "stage_devices",
    "start",
]


def parse_percent(text: str, flag: str = "--canary") -> float:
    """``"5%"``, ``"5"`` or ``"0.5%"`` -> 5.0 / 0.5; ConfigError naming ``flag``
    outside (0, 100]."""
    raw = text.strip().removesuffix("%").strip()
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a percentage; use e.g. 5%") from None
    if not 0 < value <= 100:  # also refuses NaN
        raise ConfigError(f"{flag} {text!r} must be above 0% and at most 100%")
    return value


def share(percent: float) -> str:
    """A percentage as an operator reads it: ``5``, ``0.5``, ``57.9`` (a share
    widened to a device's bucket, e.g. 57.862614..., to one decimal)."""
    if percent == round(percent, 2):
        return f"{percent:g}"
    if percent >= 1:
        return f"{min(percent, 99.9):.1f}"  # never "100.0" for a share below 100
    return f"{percent:.2g}"


def parse_stages(text: str, canary: float) -> tuple[float, ...]:
    """``"25,100"`` -> stages after the canary, ascending, ending at 100.

    Raises:
        ConfigError: a stage that is not a percentage in (0, 100] (naming
            ``--stages``), or stages that do not ascend above the canary.
    """
    stages = [canary, *(parse_percent(p, "--stages") for p in text.split(",") if p.strip())]
    if stages[-1] != 100:
        stages.append(100.0)
    if any(b <= a for a, b in itertools.pairwise(stages)):
        raise ConfigError(f"--stages {text!r} must ascend above the canary ({canary:g}%)")
    return tuple(stages)


# -- transitions --------------------------------------------------------------


def _next(r: Rollout, now: float, reason: str, **changes: Any) -> Rollout:
    data = r.model_dump() | changes | {
        "generation": r.generation + 1, "updated_at": now, "reason": reason,
    }  # fmt: skip
    return parse_rollout(data)


def start(
    prev: Rollout | None,
    *,
    model: str,
    version: int,
    percent: float,
    published: Iterable[int],
    groups: Sequence[str] | None = None,
    stages: Sequence[float] = (),
    now: float | None = None,
) -> Rollout:
    """Start (or widen) rolling ``version`` out to ``percent`` of the devices.

    ``stages`` (automatic mode) starts at the first stage's percentage.
    Re-running with the candidate in progress changes its percentage/groups
    (manual promotion). A different candidate may start once the previous
    rollout is complete, aborted, or active at 100 % of every group (which
    then becomes the stable version).

    Raises:
        ModelNotFoundError: ``version`` was never published for ``model``.
        ConflictError: another candidate is in progress, or ``version`` is
            already the stable one.
    """
    now = time.time() if now is None else now
    if version not in set(published):
        raise ModelNotFoundError(
            f"version {version} of {model!r} was never published; "
            f"run: edgecloud fleet publish {model} {version} first"
        )
    auto = bool(stages)
    if auto:
        percent = stages[0]
    fields: dict[str, Any] = {
        "candidate": version, "percent": percent, "state": "active",
        "groups": tuple(groups) if groups else None, "stages": tuple(stages), "auto": auto,
    }  # fmt: skip
    reason = f"rollout of {version} to {percent:g}%"
    if prev is None:
        return parse_rollout({"model": model, "updated_at": now, "reason": reason, **fields})
    stable = prev.stable
    if prev.state in ("active", "paused") and prev.candidate != version:
        if prev.percent < 100 or prev.groups is not None:
            raise ConflictError(
                f"version {prev.candidate} of {model!r} is being rolled out "
                f"({prev.state}, {prev.percent:g}%); abort it or take it to 100% first"
            )
        stable = prev.candidate
    if stable == version:
        raise ConflictError(f"version {version} of {model!r} is already the stable version")
    return _next(prev, now, reason, stable=stable, **fields)


def _expect(r: Rollout | None, model: str, states: tuple[str, ...], verb: str) -> Rollout:
    if r is None:
        raise ModelNotFoundError(f"{model!r} has no rollout to {verb}")
    if r.state not in states:
        raise ConflictError(f"cannot {verb} the rollout of {model!r}: it is {r.state}")
    return r


def pause(r: Rollout | None, model: str, *, now: float | None = None) -> Rollout:
    """Active -> paused: no new device starts the candidate (ConflictError otherwise)."""
    r = _expect(r, model, ("active", "paused"), "pause")
    if r.state == "paused":
        return r
    return _next(r, time.time() if now is None else now, "paused", state="paused")


def resume(r: Rollout | None, model: str, *, now: float | None = None) -> Rollout:
    """Paused -> active."""
    r = _expect(r, model, ("active", "paused"), "resume")
    if r.state == "active":
        return r
    return _next(r, time.time() if now is None else now, "resumed", state="active")


def abort(
    r: Rollout | None, model: str, reason: str = "aborted", *, now: float | None = None
) -> Rollout:
    """Active/paused -> aborted: every device goes back to the stable version."""
    r = _expect(r, model, ("active", "paused", "aborted"), "abort")
    if r.state == "aborted":
        return r
    return _next(r, time.time() if now is None else now, reason, state="aborted")


def promote(r: Rollout, percent: float, *, now: float | None = None, reason: str = "") -> Rollout:
    """Widen an active rollout to ``percent``; at 100 % of an automatic rollout, complete."""
    r = _expect(r, r.model, ("active",), "promote")
    now = time.time() if now is None else now
    why = reason or f"promoted to {percent:g}%"
    if percent >= 100 and r.auto and r.groups is None:
        return _next(r, now, why, state="complete", stable=r.candidate, candidate=None, percent=100)
    return _next(r, now, why, percent=percent)


# -- automatic mode -------------------------------------------------------------


@dataclass(frozen=True)
class AutoDecision:
    """What :func:`auto_step` decided: ``action`` is wait | promote | abort | done."""

    action: str
    rollout: Rollout
    detail: str


def stage_devices(r: Rollout, devices: Iterable[DeviceStatus]) -> list[DeviceStatus]:
    """The known devices the rollout's current percentage holds."""
    return [d for d in devices if in_canary(r, d.device, d.group)]


def _widen_to_one(r: Rollout, devices: Sequence[DeviceStatus], now: float) -> Rollout:
    """A stage that holds no known device grows to the next device in bucket order."""
    eligible = [d for d in devices if r.groups is None or d.group in r.groups]
    above = sorted(b for d in eligible if (b := bucket(d.device, r.model)) >= r.percent)
    if stage_devices(r, eligible) or not above:
        return r
    widened = min(100.0, above[0] + 1e-9)
    why = (
        f"stage {share(r.percent)}% held no device: "
        f"widened to {share(widened)}% to reach one device"
    )
    return _next(r, now, why, percent=widened)


def auto_step(
    r: Rollout,
    devices: Sequence[DeviceStatus],
    rollbacks: Iterable[str],
    *,
    now: float | None = None,
) -> AutoDecision:
    """One decision of the automatic mode.

    Args:
        r: the rollout now (auto, active or paused).
        devices: every device's state for the model (``GET /fleet/status``).
        rollbacks: devices that reported a rollback away from the candidate
            since the rollout started (any one aborts).
    """
    now = time.time() if now is None else now
    if r.state != "active" or r.candidate is None:
        return AutoDecision("done" if r.state in ("complete", "aborted") else "wait", r, r.state)
    bad = sorted(set(rollbacks))
    if bad:
        why = f"{len(bad)} device(s) rolled back {r.candidate}: {', '.join(bad[:5])}"
        return AutoDecision("abort", abort(r, r.model, why, now=now), why)
    widened = _widen_to_one(r, devices, now)
    if widened is not r:
        return AutoDecision("promote", widened, widened.reason)
    held = stage_devices(r, devices)
    waiting = [d.device for d in held if not _healthy_on(d, r.candidate)]
    if not held or waiting:
        return AutoDecision("wait", r, f"waiting for {len(waiting) or 'any'} device(s)")
    following = [s for s in r.stages if s > r.percent]
    target = following[0] if following else 100.0
    if r.percent >= 100:  # only a group-limited rollout stays active at 100 %
        why = f"every device of groups {', '.join(r.groups or ())} runs {r.candidate}"
        return AutoDecision("done", r, why)
    at = share(r.percent) + (
        "% (the share widened to reach one device)" if r.percent not in r.stages else "%"
    )
    why = f"{len(held)} device(s) healthy on {r.candidate} at {at}: to {share(target)}%"
    return AutoDecision("promote", promote(r, target, now=now, reason=why), why)


def run_auto(
    control: RolloutControl,
    model: str,
    fetch: Callable[[], Sequence[DeviceStatus]],
    *,
    interval_s: float = 2.0,
    timeout_s: float = 3600.0,
    on_step: Callable[[AutoDecision], None] = lambda d: None,
    sleep: Callable[[float], None] = time.sleep,
) -> Rollout:
    """Drive an automatic rollout until it completes or aborts (or ``timeout_s``);
    a rollout limited to groups ends active at 100 % of them.

    ``fetch`` returns every device's state for ``model`` (``GET /fleet/status``).
    A rollback counts when a device's rollback count grows past what it was
    when this loop began and its latest rollback left the candidate — no
    clocks compared across machines. Each decision is applied with
    :meth:`RolloutControl.change`, which re-reads the state under the lock:
    an operator's ``pause`` or ``abort`` in between wins.

    Raises:
        DeadlineExceededError: not finished within ``timeout_s`` (the rollout
            stays where it is; re-run to continue, or abort it).
    """
    from ..errors import DeadlineExceededError

    baseline = {d.device: d.rollbacks for d in fetch()}
    deadline = time.monotonic() + timeout_s
    actions: list[str] = []

    def step(decision: AutoDecision) -> None:
        actions.append(decision.action)
        on_step(decision)

    while True:
        decide = _decider(model, list(fetch()), baseline, step)
        r = control.change(model, decide)
        if r.state in ("complete", "aborted") or actions[-1:] == ["done"]:
            return r
        if time.monotonic() > deadline:
            raise DeadlineExceededError(
                f"rollout of {model!r} not finished in {timeout_s:g} s ({r.state}, "
                f"{r.percent:g}%); run it again to continue, or abort it"
            )
        sleep(interval_s)


def _decider(
    model: str,
    devices: list[DeviceStatus],
    baseline: dict[str, int],
    on_step: Callable[[AutoDecision], None],
) -> Callable[[Rollout | None, set[int]], Rollout]:
    def decide(prev: Rollout | None, published: set[int]) -> Rollout:
        r = _expect(prev, model, ("active", "paused", "complete", "aborted"), "drive")
        bad = [
            d.device
            for d in devices
            if d.rollbacks > baseline.get(d.device, 0) and d.last_rollback_from == r.candidate
        ]
        decision = auto_step(r, devices, bad)
        on_step(decision)
        return decision.rollout

    return decide


def _healthy_on(d: DeviceStatus, version: int) -> bool:
    return d.version == version and d.last_health_ok is True and d.last_health_version == version


# -- the repository side ----------------------------------------------------------


def published_versions(targets: dict[str, Any], model: str) -> set[int]:
    """Versions of ``model`` with a signed model target (custom kind ``model``)."""
    versions = set()
    for target in targets.values():
        custom = target.unrecognized_fields.get("custom", {}).get("edgecloud", {})
        if custom.get("kind") == "model" and custom.get("model") == model:
            versions.add(int(custom["version"]))
    return versions


class RolloutControl:
    """Read and change the rollout state of the models of an update repository.

    Args:
        fleet: the update repository directory (``edgecloud fleet keys``).
        keys: the keys directory (or role -> signer); targets, snapshot and
            timestamp keys sign.
    """

    def __init__(self, fleet: Path, keys: Any) -> None:
        # imported by name: the tuf part's module (fleet/update_repo.py), lazily
        update_repo = importlib.import_module("edgecloud.fleet.update_repo")
        self.repo: Any = update_repo.UpdateRepository(fleet, keys)

    def current(self, model: str) -> Rollout | None:
        """The signed rollout state of ``model``, None when it has none."""
        return self._current(model, self.repo.targets())

    def _current(self, model: str, targets: dict[str, Any]) -> Rollout | None:
        path = rollout_target_path(model)
        if path not in targets:
            return None
        return parse_rollout(self.repo.read_target(path))

    def change(self, model: str, change: Callable[[Rollout | None, set[int]], Rollout]) -> Rollout:
        """Apply ``change(current, published versions)`` and sign it, under the
        repository's writer lock (read, change, write as one step)."""
        with self.repo.locked():
            targets = self.repo.targets()
            before = self._current(model, targets)
            after = change(before, published_versions(targets, model))
            if after is not before:
                custom = {
                    "edgecloud": {"kind": "rollout", "model": model, "generation": after.generation}
                }
                self.repo.put_target(rollout_target_path(model), after.to_bytes(), custom)
                self.repo.sign()
            return after
