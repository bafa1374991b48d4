"""The signed rollout state of one model (``MODEL/rollout.json``) and what it asks of a device.

The operator's ``edgecloud fleet rollout`` writes this file into the update
repository as a TUF target, so a device reads it with the same guarantees as
a model (signed, fresh, never replayed); the device agent calls
:func:`desired_version` on it at every check. Nothing here does I/O: the edge
path imports this module (pydantic only, no tuf/httpx).

Semantics, after Kubernetes canaries / Argo Rollouts, Mender phased
deployments and Uptane's director (the repository says which version each
device should run, the device decides nothing on its own):

* ``stable`` is the version every device runs outside the canary (None: no
  version was ever rolled out fully — devices outside the canary keep what they
  run, except the candidate: a device running it goes back to its own
  previous version).
* ``candidate`` goes to the devices whose :func:`bucket` is below ``percent``
  and, when ``groups`` is set, whose group is one of them. The bucket is a
  stable hash of (model, device id), so a canary is the same devices every
  time and growing the percentage only adds devices (never swaps them).
* ``state``:

  - ``active``: as above;
  - ``paused``: no new device starts the candidate; a device already running
    it stays on it (``kubectl rollout pause``);
  - ``aborted``: every device goes back to ``stable``, devices on the
    candidate included (Argo's abort; Mender's rollback); without a stable
    version, a device on the candidate goes back to its own previous one;
  - ``complete``: the candidate was promoted; ``stable`` is it and
    ``candidate`` is None.

* ``generation`` grows by one with every change, so a device (and a test)
  can tell two states apart; TUF's own versioning already refuses a replayed
  older file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError

__all__ = [
    "ROLLOUT_FILE",
    "Rollout",
    "RolloutStateName",
    "bucket",
    "desired_version",
    "in_canary",
    "parse_rollout",
    "rollout_target_path",
]

#: File name of the rollout state inside a model's target directory.
ROLLOUT_FILE = "rollout.json"

RolloutStateName = Literal["active", "paused", "aborted", "complete"]


def rollout_target_path(model: str) -> str:
    """TUF target path of a model's rollout state: ``MODEL/rollout.json``."""
    return f"{model}/{ROLLOUT_FILE}"


class Rollout(BaseModel):
    """The content of ``MODEL/rollout.json`` (JSON object, extra keys refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    """Model name the rollout is for."""
    stable: int | None = Field(default=None, ge=1)
    """Version every device outside the canary runs; None before the first full rollout."""
    candidate: int | None = Field(default=None, ge=1)
    """Version being rolled out; None once complete (or never started)."""
    percent: float = Field(default=0.0, ge=0.0, le=100.0, allow_inf_nan=False)
    """Share of devices (by :func:`bucket`, in percent 0..100) that run the candidate."""
    groups: tuple[str, ...] | None = None
    """Only devices of these groups take the candidate (None: every group)."""
    state: RolloutStateName = "active"
    """active | paused | aborted | complete (module docstring)."""
    stages: tuple[float, ...] = ()
    """Automatic mode: the percentages to promote through, ascending, ending at 100."""
    auto: bool = False
    """True when ``edgecloud fleet rollout --auto`` promotes stage by stage."""
    generation: int = Field(default=1, ge=1)
    """Grows by one with every change of this file."""
    updated_at: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    """Unix seconds of the change that wrote this generation (operator's clock)."""
    reason: str = ""
    """Why the last change was made (``abort: rollback reported by dev-3``)."""

    @model_validator(mode="after")
    def _consistent(self) -> Rollout:
        if self.state in ("active", "paused") and self.candidate is None:
            raise ValueError(f"state {self.state!r} needs a candidate version")
        if self.state == "complete" and (self.candidate is not None or self.stable is None):
            raise ValueError("state 'complete' needs a stable version and no candidate")
        if self.candidate is not None and self.candidate == self.stable:
            raise ValueError(f"candidate {self.candidate} is already the stable version")
        if list(self.stages) != sorted(self.stages) or any(not 0 < s <= 100 for s in self.stages):
            raise ValueError(f"stages must ascend within (0, 100], got {list(self.stages)}")
        if self.groups is not None and (not self.groups or not all(self.groups)):
            raise ValueError("groups must be None or a list of non-empty names")
        return self

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys), as stored in the update repository."""
        return (self.model_dump_json(indent=None) + "\n").encode()


def parse_rollout(data: bytes | str | Mapping[str, Any]) -> Rollout:
    """Validate a rollout state from its JSON bytes or a decoded mapping.

    Raises:
        ConfigError: not JSON, or a field missing/of the wrong type/inconsistent;
            the message names the field.
    """
    try:
        if isinstance(data, Mapping):
            return Rollout.model_validate(dict(data))
        return Rollout.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "rollout"
        raise ConfigError(f"invalid rollout.json: {where}: {first['msg']}") from exc


def bucket(device_id: str, model: str) -> float:
    """The device's stable position in [0, 100) for ``model``'s rollouts.

    sha256 of ``"<model>\\0<device_id>"`` (UTF-8), its first 8 bytes as a big
    endian integer scaled to [0, 100). The model is part of the key so one
    unlucky device is not the canary of every model. Uniform to 2**-64, and
    the same on every machine and Python (no ``hash()`` salt).
    """
    digest = hashlib.sha256(f"{model}\0{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") * 100.0 / 2**64


def in_canary(rollout: Rollout, device_id: str, group: str | None) -> bool:
    """True when the device falls in the rollout's candidate share and groups."""
    if rollout.groups is not None and group not in rollout.groups:
        return False
    return bucket(device_id, rollout.model) < rollout.percent


def desired_version(
    rollout: Rollout | Mapping[str, Any] | None,
    device_id: str,
    group: str | None,
    current: int | None,
) -> int | None:
    """The version this device should run, or None for "no version is named for you".

    None when an aborted, paused or narrowed rollout has no stable version.
    The agent then keeps what it runs *unless* that is this rollout's
    ``candidate`` (the rollout no longer gives it to this device): it goes
    back to its own previous version, and keeps the candidate (saying so)
    only when it has none (:meth:`edgecloud.fleet.agent.UpdateAgent` ``_wanted``).
    Without a rollout file a device installs nothing (publishing is not
    deploying).

    Args:
        rollout: the parsed ``MODEL/rollout.json`` (a :class:`Rollout` or the
            decoded JSON object); None when the model has no rollout file.
        device_id: the device's id (as in its telemetry).
        group: the device's group, or None.
        current: the version it runs now, None when it runs none.

    Raises:
        ConfigError: the mapping is not a valid rollout state.
    """
    if rollout is None:
        return None
    r = rollout if isinstance(rollout, Rollout) else parse_rollout(rollout)
    if r.state == "complete":
        return r.stable
    if r.state == "aborted":
        return r.stable
    if r.state == "paused":
        if current is not None and current == r.candidate:
            return current
        return r.stable
    return r.candidate if in_canary(r, device_id, group) else r.stable
