"""The device update agent: signed metadata, resumable downloads, health check, hot swap, rollback.

One :meth:`UpdateAgent.check` per model and round (on a schedule, or on
demand), in the order Mender's client and Uptane's primary follow:

1. **check** — refresh the TUF metadata (python-tuf ``Updater`` with the
   device's trusted root: signatures, thresholds, expiry, rollback of
   snapshot/timestamp all refused), read the verified ``targets`` and pick the
   version to run: ``MODEL/rollout.json`` through
   :func:`edgecloud.fleet.rollout_state.desired_version` when the repository
   has one; without one the agent installs nothing for that model (publishing
   is not deploying, as in Mender: an upload reaches devices only through a
   deployment) and says so once. A device that runs the candidate of a
   rollout that no longer gives it the candidate (aborted, narrowed) and has
   no stable version to go to goes back to its own previous version. A
   version this device marked bad is skipped until a newer one is published.
2. **download** — the smallest signed path from the version it runs: a delta
   ``MODEL/deltas/<from>-<to>.<codec>.delta`` (lossless codecs first), else
   the full model; resumable (:mod:`.download`), within the bandwidth budget
   and only on allowed links. A delta that does not apply falls back to the
   full model (Mender's fallback to the full image).
3. **install** — the rebuilt model's sha256 checked against the signed target
   (a lossy delta: its signed ``result_sha256``), then
   ``ModelRepository.add_version`` (journaled, atomic rename). The version's
   signed config is kept in its own directory (``config.json``, hashed with
   its files): the repository's model-level ``config.yaml`` is one per model,
   so before any version is opened (swap, rollback, start) it is rewritten
   atomically from that version's own copy — every version the device keeps
   is self-contained and going back is exact (outputs, labels).
4. **health** — ``LocalBackend.open`` (a failed load is a rollback) and
   :func:`.health.check_health` on the version's samples, against the answers
   the running version serves. Going *back* (to an older version: an abort, a
   narrowed canary) is judged on its own samples only, and a failure there is
   reported ``ok=false`` and never marks the older version bad.
5. **swap** — ``LocalBackend.publish``: new sessions in one step, in-flight
   requests finish on the old ones, zero failed requests. The first
   ``watch_requests`` requests after it are watched (:meth:`observe`); an
   error rate above ``max_error_rate`` swaps the previous version back.

Crash safety. What serves is decided by a small state file (``agent.json``,
replaced atomically and durably: ``active``, ``previous``, ``bad``,
``watching``), written *before* each swap it describes; version directories
appear only by ``add_version``'s rename and vanish by rename to a ``.trash-``
name. At start (:meth:`start`) the agent rolls back interrupted repository
writes, empties the trash, and publishes the state's ``active`` version after
checking every file's sha256 — else ``previous``, else the newest verified
version on disk. So after a SIGKILL anywhere the device serves a whole,
verified version, old or new; an interrupted download continues from its
staging file. Each step is a telemetry event (:mod:`.telemetry`) and a log line.

Every round compares the wanted version with the active one afresh, so every
publish triggers (the second-round update KubeEdge Sedna's users saw never
start), and nothing needs a restart.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    DownloadError,
    EdgecloudError,
    LinkNotAllowedError,
    UpdateAuthError,
    UpdateError,
    UpdateStorageError,
)
from ..repository import (
    CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    ModelConfig,
    ModelRepository,
    _dump_config,
    _write_atomic,
    sha256_file,
)
from .agent_state import AgentState, storage_errors
from .download import (
    MIN_RATE_ALLOWANCE_S,
    MIN_RATE_BYTES_S,
    FetchResult,
    LinkPolicy,
    TokenBucket,
    fetch_target,
)
from .health import HealthPolicy, check_health
from .http_auth import auth_headers, refused, tuf_fetcher
from .telemetry import Telemetry

if TYPE_CHECKING:
    from ..backends.local import LoadedModel, LocalBackend
    from ..tensors import InferRequest, InferResponse

__all__ = ["AgentSettings", "Outcome", "UpdateAgent"]

log = logging.getLogger("edgecloud.fleet")

#: The version's own signed config, kept inside each installed version directory (hashed by
#: its ``version.json``): the model-level ``config.yaml`` is rewritten from it before that
#: version is opened, so a rollback serves exactly the config (outputs, labels) it ran with.
VERSION_CONFIG = "config.json"

#: Delta codecs in order of preference: lossless first (its result is the signed model itself).
LOSSLESS_CODECS = ("xor-zstd",)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """How one device updates (the deployment file's ``updates:`` section)."""

    server: str
    """Base URL of the fleet server: metadata under ``/fleet/metadata/``, targets under
    ``/fleet/targets/``, telemetry to ``/fleet/telemetry``."""
    models: tuple[str, ...]
    device_id: str
    group: str | None = None
    interval_s: float = 300.0
    bandwidth_bytes_s: float | None = None
    """Average download budget, bytes/s (token bucket); None: unlimited."""
    links: LinkPolicy = field(default_factory=LinkPolicy)
    health: HealthPolicy = field(default_factory=HealthPolicy)
    watch_requests: int = 20
    """Requests after a swap whose error rate decides a rollback (0: none watched)."""
    max_error_rate: float = 0.1
    """Fraction of failed requests among the watched ones above which the swap is undone."""
    timeout_s: float = 30.0
    """Per-read timeout of every HTTP request, seconds."""
    min_rate_bytes_s: float | None = MIN_RATE_BYTES_S
    """Slowest average rate a transfer (target or metadata) may keep after
    ``rate_allowance_s`` before it is cut (:class:`.download.RateFloor`); None: no floor.
    With a bandwidth budget the floor is at most half of it."""
    rate_allowance_s: float = MIN_RATE_ALLOWANCE_S
    """Seconds any transfer may take before the rate floor applies."""
    token: str | None = field(default=None, repr=False)
    """Bearer token of the fleet server (``edgecloud serve --token``), sent on every
    metadata, target and telemetry request (:mod:`.http_auth`); None: none sent."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one check of one model did."""

    model: str
    action: str
    """``current`` (nothing to do), ``updated``, ``rolled-back``, ``skipped`` (a bad
    version, a link not allowed) or ``failed`` (the device keeps what it runs)."""
    version: int | None
    from_version: int | None = None
    detail: str = ""
    downloaded: int = 0
    """Bytes received from the server in this check."""
    redownloaded: int = 0
    """Bytes received again because a kept staging prefix was discarded."""
    resumed: int = 0
    """Bytes of staging files kept from an interrupted earlier download."""


class UpdateAgent:
    """Keeps ``settings.models`` of ``repository`` at the version the fleet repository says.

    ``backend`` serves them (its sessions are swapped with ``publish``);
    ``state_dir`` holds the agent's state, the TUF metadata, staging files and
    the telemetry outbox; ``trust_root`` is the fleet's ``root.json`` bytes
    (from ``edgecloud fleet keys``), the device's trust anchor.
    """

    def __init__(
        self,
        repository: ModelRepository,
        backend: LocalBackend,
        settings: AgentSettings,
        *,
        state_dir: Path,
        trust_root: bytes,
        also: Sequence[LocalBackend] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repository = repository
        self.backend = backend
        self.also: list[LocalBackend] = [b for b in also if b is not backend]
        """Other session caches serving the same repository (a deployment's local nodes
        with other thread settings): each gets its own sessions at every swap."""
        self.settings = settings
        self.state_dir = Path(state_dir)
        self.trust_root = trust_root
        self.staging = self.state_dir / "staging"
        with storage_errors(f"the update agent's state directory {self.state_dir}"):
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._store = AgentState(self.state_dir)
            (self.state_dir / "tuf").mkdir(exist_ok=True)
            self.staging.mkdir(exist_ok=True)
        self.telemetry = Telemetry(
            self.state_dir / "telemetry.db",
            device=settings.device_id,
            group=settings.group,
            clock=clock,
        )
        self.bucket = (
            TokenBucket(settings.bandwidth_bytes_s) if settings.bandwidth_bytes_s else None
        )
        self._lock = threading.RLock()
        self._watch: dict[str, list[bool]] = {}
        self._warned_bad: set[tuple[str, int]] = set()
        self._said: dict[str, str] = {}
        """Per model, the last "nothing to do because ..." line reported (once, not per tick)."""
        self._wake = threading.Event()
        self._offline: dict[str, str] = {}
        self.auth_refusals = 0
        self.first_install_failed: str | None = None
        """Why the gateway's first install at start did not succeed (None: it did, or none ran)."""
        """Telemetry drains the server refused for the token (the events stay queued)."""
        """Per model, the metadata error last reported: an outage is one event, not one a tick."""

    # -- state ---------------------------------------------------------------

    def state(self, model: str) -> dict[str, Any]:
        """A copy of ``model``'s state (:mod:`.agent_state`): ``active``, ``previous``,
        ``bad``, ``watching``, ``installing``."""
        return self._store.get(model)

    def active(self, model: str) -> int | None:
        active: int | None = self.state(model)["active"]
        return active

    def _save(self, model: str, **changes: Any) -> None:
        self._store.save(model, **changes)

    def _event(
        self,
        model: str,
        event: str,
        ok: bool,
        version: int | None,
        from_version: int | None,
        detail: str = "",
        nbytes: int = 0,
    ) -> None:
        """One telemetry event (:meth:`.telemetry.Telemetry.record`): queued and logged.
        A full disk loses the event (logged), never the update round."""
        from ..routing.outbox import OutboxStorageError

        try:
            self.telemetry.record(
                model, event, ok=ok, version=version, from_version=from_version, detail=detail,
                nbytes=nbytes,
            )  # fmt: skip
        except (UpdateStorageError, OutboxStorageError) as exc:
            log.warning("fleet: %s %s event not queued: %s", model, event, exc.message)

    # -- start -----------------------------------------------------------------

    def start(self) -> dict[str, int | None]:
        """Recover after a crash and serve each model's active version; returns model -> version.

        Interrupted ``add_version`` writes are rolled back, the trash emptied,
        half-downloaded staging files kept (a later download resumes them), and a
        commit cut between its state write and its discards finished. A
        version whose files fail their sha256 is moved aside and the previous
        one served (reported as an ``error`` event).
        """
        self.repository.recover()
        served: dict[str, int | None] = {}
        with self._lock:
            for model in self.settings.models:
                self._empty_trash(model)
                if self._store.recovered is not None:
                    self._event(model, "error", False, None, None, self._store.recovered)
                served[model] = self._serve_recovered(model)
                try:  # a commit SIGKILLed before its discards: finish it now, not at a check
                    with storage_errors(f"the update of {model}"):
                        self._finish_commit(model)
                except UpdateStorageError as exc:
                    self._event(model, "error", False, None, self.active(model), exc.message)
        return served

    def _serve_recovered(self, model: str) -> int | None:
        st = self.state(model)
        on_disk = self._on_disk(model)
        for key in ("active", "previous"):
            if st[key] is not None and st[key] not in on_disk:  # a stale or hand-edited file
                self._event(
                    model, "error", False, st[key], None,
                    f"{self._store.path}: {key} version {st[key]} is not on disk; "
                    "serving the newest verified version on disk instead",
                )  # fmt: skip
        order = [st["active"], st["previous"], *sorted(on_disk, reverse=True)]
        tried: set[int] = set()
        for version in order:
            if version is None or version in tried or version not in on_disk:
                continue
            if version not in (st["active"], st["previous"]) and (
                version in st["bad"] or version == st["installing"]
            ):
                continue  # never served as a fallback: bad, or installed but never checked
            tried.add(version)
            try:
                loaded = self._open(self.backend, model, version)  # verifies every sha256
            except EdgecloudError as exc:
                self._event(model, "error", False, version, None, f"at start: {exc.message}")
                self._discard(model, version)
                continue
            previous = st["previous"] if version == st["active"] else None
            self._publish(model, {version: loaded})
            if version != st["active"]:
                self._save(model, active=version, previous=previous, watching=None)
            if st["watching"] == version:
                self._watch[model] = []
            return int(version)
        return None

    # -- checking ----------------------------------------------------------------

    def check(self, models: tuple[str, ...] | None = None) -> list[Outcome]:
        """One round for each model (default all): fetch, verify, install, check, swap.

        Never raises for an update that fails (the device keeps what it runs,
        the failure is an event and an ``Outcome``); returns what happened.
        """
        outcomes = []
        with self._lock:
            try:
                targets, consistent = self._refresh()
            except UpdateError as exc:
                for model in models or self.settings.models:
                    if self._offline.get(model) != exc.message:  # once per outage, not per tick
                        self._offline[model] = exc.message
                        self._event(model, "check", False, None, self.active(model), exc.message)
                    outcomes.append(
                        Outcome(model, "failed", self.active(model), detail=exc.message)
                    )
                return outcomes
            self._offline.clear()
            for model in models or self.settings.models:
                outcomes.append(self._check_stored(model, targets, consistent))
        return outcomes

    def _check_stored(self, model: str, targets: Mapping[str, Any], consistent: bool) -> Outcome:
        """:meth:`_check_model` with a storage failure anywhere in it (a state write at the
        swap, a discard) as a failed outcome: the state file was not changed, so the version
        served is still the one it names."""
        try:
            with storage_errors(f"the update of {model}"):
                return self._check_model(model, targets, consistent)
        except UpdateStorageError as exc:
            self._event(model, "error", False, None, self.active(model), exc.message)
            return Outcome(model, "failed", self.active(model), detail=exc.message)

    def _check_model(self, model: str, targets: Mapping[str, Any], consistent: bool) -> Outcome:
        self._finish_commit(model)
        current = self.active(model)
        try:
            wanted, why = self._wanted(model, targets, consistent, current)
        except LinkNotAllowedError as exc:  # even the rollout file waits for an allowed link
            self._event(model, "check", False, None, current, exc.message)
            return Outcome(model, "skipped", current, detail=exc.message)
        except UpdateError as exc:
            self._event(model, "check", False, None, current, exc.message)
            return Outcome(model, "failed", current, detail=exc.message)
        if why and self._said.get(model) != why:
            self._said[model] = why
            self._event(model, "check", True, wanted, current, why)
        elif not why:
            self._said.pop(model, None)
        if wanted is None or wanted == current:
            return Outcome(model, "current", current, detail=why)
        if wanted in self.state(model)["bad"]:
            if (model, wanted) not in self._warned_bad:
                self._warned_bad.add((model, wanted))
                self._event(
                    model,
                    "check",
                    False,
                    wanted,
                    current,
                    "marked bad on this device: not installed again",
                )
            return Outcome(model, "skipped", current, detail=f"version {wanted} is marked bad")
        st = self.state(model)
        back = current is not None and (wanted == st["previous"] or wanted < current)
        said = why or ("going back" if back else "update available")
        self._event(model, "check", True, wanted, current, said)
        return self._update(model, wanted, current, targets, consistent, back=back)

    def _wanted(
        self, model: str, targets: Mapping[str, Any], consistent: bool, current: int | None
    ) -> tuple[int | None, str]:
        """The version to run (None: keep what runs) and, when it is not the rollout's word
        alone, why (one line for the operator)."""
        published = sorted(
            int(info.custom["edgecloud"]["version"])
            for path, info in targets.items()
            if _kind(info) == "model" and path.startswith(f"{model}/")
        )
        rollout = targets.get(f"{model}/rollout.json")
        if not published and rollout is None:
            raise UpdateError(self._unknown_model(model, targets))
        if rollout is None:  # publishing is not deploying (Mender: upload, then deploy)
            return None, (
                f"no rollout of {model}: run `edgecloud fleet rollout {model} VERSION --canary P%`"
            )
        # The rollout part's contract: desired_version(rollout, device_id, group, current).
        desired_version = importlib.import_module("edgecloud.fleet.rollout_state").desired_version
        raw = self._fetch(rollout, f"{model}/rollout.json", consistent).path.read_bytes()
        try:
            state = json.loads(raw)
            wanted = desired_version(state, self.settings.device_id, self.settings.group, current)
        except (ValueError, EdgecloudError) as exc:
            raise UpdateError(f"{model}/rollout.json: {exc}") from exc
        if wanted is not None and wanted not in published:
            raise UpdateError(f"{model}/rollout.json asks for version {wanted}, never published")
        if wanted is None and current is not None and current == state.get("candidate"):
            # The rollout no longer gives this device its candidate (aborted, or the canary
            # narrowed) and names no stable version: back to the device's own previous one.
            previous = self.state(model)["previous"]
            if previous is not None and previous in self._on_disk(model):
                return int(previous), f"candidate {current} withdrawn: back to version {previous}"
            return None, (
                f"candidate {current} withdrawn ({state.get('state')}) and no stable version; "
                "no previous version on this device to go back to: keeps it"
            )
        return (None if wanted is None else int(wanted)), ""

    def _unknown_model(self, model: str, targets: Mapping[str, Any]) -> str:
        """The error for a model the fleet repository does not publish."""
        where = f"updates.models[{self.settings.models.index(model)}]"
        names = sorted(
            {
                str(i.custom["edgecloud"].get("model"))
                for i in targets.values()
                if _kind(i) == "model"
            }
        )
        offer = ", ".join(names) if names else "none yet"
        return f"{where}: {model!r} is not published on the fleet server (published: {offer})"

    # -- updating ----------------------------------------------------------------

    def _update(
        self,
        model: str,
        wanted: int,
        current: int | None,
        targets: Mapping[str, Any],
        consistent: bool,
        *,
        back: bool = False,
    ) -> Outcome:
        stats = _Moved()
        try:
            with storage_errors(f"version {wanted} of {model}"):
                self._install(model, wanted, current, targets, consistent, stats, back=back)
        except LinkNotAllowedError as exc:
            self._event(model, "download", False, wanted, current, exc.message, stats.downloaded)
            return stats.outcome(model, "skipped", current, current, exc.message)
        except UpdateError as exc:
            step = "download" if isinstance(exc, DownloadError) else "install"
            self._event(model, step, False, wanted, current, exc.message, stats.downloaded)
            return stats.outcome(model, "failed", current, current, exc.message)
        return self._try_swap(model, wanted, current, stats, back=back)

    def _install(
        self,
        model: str,
        wanted: int,
        current: int | None,
        targets: Mapping[str, Any],
        consistent: bool,
        stats: _Moved,
        *,
        back: bool = False,
    ) -> None:
        """Put version ``wanted`` on disk, verified (reusing one a crash left installed, or
        going ``back`` to one this device ran, whether or not it is still a signed target)."""
        path = f"{model}/{wanted}/{MODEL_FILE}"
        info = targets.get(path)
        if info is None and back and wanted in self._on_disk(model):
            try:
                self.repository.get(model, wanted, served_only=False, verify=True)
                return
            except EdgecloudError as exc:
                raise UpdateError(f"version {wanted} on this device: {exc.message}") from exc
        if info is None:
            raise UpdateError(f"{path} is not a signed target")
        if self._installed_matches(model, wanted, info, targets):
            return
        self._discard(model, wanted)  # a leftover that does not match what was signed
        onnx, how = self._model_bytes(model, wanted, current, targets, consistent, stats)
        self._event(
            model,
            "download",
            True,
            wanted,
            current,
            f"{how}: resumed {stats.resumed} B, re-downloaded {stats.redownloaded} B",
            stats.downloaded,
        )
        files: dict[str, str | bytes] = {}
        config: ModelConfig | None = None
        for other in info.custom["edgecloud"].get("files", []):
            name = other.removeprefix(f"{model}/{wanted}/")
            other_info = targets.get(other)
            written_here = name in (MODEL_FILE, MANIFEST_FILE)  # add_version writes these
            if other_info is None or written_here or "/" in name or name.startswith("."):
                continue
            data = self._reuse(model, current, name, other_info)
            if data is None:
                data = self._fetch(other_info, other, consistent, stats).path.read_bytes()
            if name in ("config.json", CONFIG_FILE):
                config = _parse_config(data, other)
                files[VERSION_CONFIG] = data  # this version's own config, for going back to it
            else:
                files[name] = data
        self._save(model, installing=wanted)
        try:
            self.repository.add_version(
                model,
                onnx,
                config=config,
                extra_files=files,
                version=wanted,
                metadata={"fleet": {"target": path, "via": how, "result_sha256": _sha(onnx)}},
            )
        except (EdgecloudError, OSError) as exc:  # the journal rolled the write back
            with contextlib.suppress(UpdateStorageError):  # still full: start() copes
                self._save(model, installing=None)
            if isinstance(exc, OSError):
                raise
            raise UpdateError(f"version {wanted} cannot be installed: {exc.message}") from exc
        self._event(model, "install", True, wanted, current, how, len(onnx))
        for file in self.staging.glob("*.part"):
            file.unlink(missing_ok=True)  # installed: the staged pieces are not needed again

    def _reuse(self, model: str, current: int | None, name: str, info: Any) -> bytes | None:
        """File ``name`` of the installed ``current`` version when its bytes are the signed
        target's (sha256 and length, checked on the bytes read): nothing to download."""
        if current is None or current not in self._on_disk(model):
            return None
        path = self.repository.root / model / str(current) / name
        try:
            if path.stat().st_size != int(info.length):
                return None
            data = path.read_bytes()
        except OSError:
            return None
        return data if _sha(data) == info.hashes.get("sha256") else None

    def _installed_matches(
        self, model: str, version: int, info: Any, targets: Mapping[str, Any]
    ) -> bool:
        """Whether ``version`` is on disk, every file intact, its model the signed one: the
        full model's sha256, or the signed ``result_sha256`` of a lossy delta to ``version``
        (what a lossy install wrote before a crash stopped the agent from swapping it in)."""
        if version not in self._on_disk(model):
            return False
        try:
            entry = self.repository.get(model, version, served_only=False, verify=True)
        except EdgecloudError:
            return False
        signed = {info.hashes.get("sha256")}
        for path, delta in targets.items():
            custom = delta.custom["edgecloud"] if _kind(delta) == "delta" else {}
            if path.startswith(f"{model}/deltas/") and custom.get("to") == version:
                signed.add(custom.get("result_sha256"))
        signed.discard(None)
        return entry.files.get(MODEL_FILE) in signed

    def _model_bytes(
        self,
        model: str,
        wanted: int,
        current: int | None,
        targets: Mapping[str, Any],
        consistent: bool,
        stats: _Moved,
    ) -> tuple[bytes, str]:
        """The new model's bytes, verified, and how they came (``delta <codec>`` or ``full``)."""
        path = f"{model}/{wanted}/{MODEL_FILE}"
        info = targets[path]
        same = self._reuse(model, current, MODEL_FILE, info)
        if same is not None:  # a version that changes other files only: 0 bytes moved
            return same, f"reused from version {current}"
        for delta_path, delta_info in self._deltas(model, current, wanted, targets):
            try:
                data = self._apply(model, current, delta_path, delta_info, consistent, stats)
            except (LinkNotAllowedError, UpdateAuthError):
                raise  # the link or the token, not the delta: the full model would fail too
            except UpdateError as exc:  # Mender's rule: a delta that fails falls back to full
                self._event(
                    model,
                    "download",
                    False,
                    wanted,
                    current,
                    f"{delta_path}: {exc.message}; full model instead",
                )
                continue
            signed = info.hashes.get("sha256")
            custom = delta_info.custom["edgecloud"]
            expected = signed if not custom.get("lossy") else custom.get("result_sha256")
            if _sha(data) != expected:  # a published delta that is wrong: the fleet must know
                self._event(
                    model, "download", False, wanted, current,
                    f"{delta_path}: applied, but the result's sha256 {_sha(data)[:16]}… is not "
                    f"the signed {str(expected)[:16]}…; full model instead",
                    stats.downloaded,
                )  # fmt: skip
                continue
            return data, f"delta {custom.get('codec')}"
        data = self._fetch(info, path, consistent, stats).path.read_bytes()
        return data, "full"

    def _deltas(
        self, model: str, current: int | None, wanted: int, targets: Mapping[str, Any]
    ) -> list[tuple[str, Any]]:
        if current is None:
            return []
        prefix = f"{model}/deltas/{current}-{wanted}."
        found = [(p, i) for p, i in targets.items() if p.startswith(prefix) and _kind(i) == "delta"]

        def rank(item: tuple[str, Any]) -> tuple[int, int]:
            codec = item[1].custom["edgecloud"].get("codec")
            return (0 if codec in LOSSLESS_CODECS else 1, int(item[1].length))

        return sorted(found, key=rank)

    def _apply(
        self, model: str, current: int | None, path: str, info: Any, consistent: bool, stats: _Moved
    ) -> bytes:
        try:  # the delta part's contract: apply_delta(old, delta) -> bytes, DeltaError
            apply_delta = importlib.import_module("edgecloud.fleet.delta").apply_delta
        except ImportError as exc:
            raise UpdateError(f"deltas cannot be applied here ({exc})") from exc
        old = self.repository.get(model, current, served_only=False, verify=True)
        if sha256_file(old.model_path) != info.custom["edgecloud"].get("from_sha256"):
            raise UpdateError(f"{path} applies to another file than version {current}'s")
        delta = self._fetch(info, path, consistent, stats).path.read_bytes()
        try:
            result: bytes = apply_delta(old.model_path.read_bytes(), delta)
        except EdgecloudError as exc:
            raise UpdateError(exc.message) from exc
        return result

    def _fetch(
        self, info: Any, path: str, consistent: bool, stats: _Moved | None = None
    ) -> FetchResult:
        """Download one signed target (resuming), verified against ``info`` (a ``TargetFile``)."""
        sha = info.hashes.get("sha256")
        if not sha:
            raise DownloadError(f"{path}: its signed target names no sha256")
        url = self._target_url(path, sha, consistent)
        with self._client() as client:
            result = fetch_target(
                client,
                url,
                self.staging / f"{sha}.part",
                length=int(info.length),
                sha256=sha,
                bucket=self.bucket,
                links=self.settings.links,
                min_rate_bytes_s=self._min_rate(),
                allowance_s=self.settings.rate_allowance_s,
            )
        if stats is not None:
            stats.add(result)
        return result

    def _min_rate(self) -> float | None:
        """The rate floor, at most half the bandwidth budget (a throttled download is
        slow on purpose)."""
        floor, budget = self.settings.min_rate_bytes_s, self.settings.bandwidth_bytes_s
        if floor is None or budget is None:
            return floor
        return min(floor, budget / 2)

    def _target_url(self, path: str, sha: str, consistent: bool) -> str:
        """python-tuf ngclient's naming: ``dir/<sha256>.<name>`` with consistent snapshots."""
        if consistent:
            head, sep, name = path.rpartition("/")
            path = f"{head}{sep}{sha}.{name}"
        return f"{self.settings.server.rstrip('/')}/fleet/targets/{path}"

    def _client(self) -> Any:
        from .._optional import require

        httpx = require("httpx", extra="fleet", feature="fleet updates")
        return httpx.Client(
            timeout=self.settings.timeout_s, headers=auth_headers(self.settings.token)
        )

    # -- swapping and rolling back ---------------------------------------------------

    def _try_swap(
        self, model: str, wanted: int, current: int | None, stats: _Moved, *, back: bool = False
    ) -> Outcome:
        previous = self._served(model, current)
        try:
            loaded = self._open(self.backend, model, wanted)
        except EdgecloudError as exc:
            return self._reject(model, wanted, current, f"load failed: {exc.message}", stats, back)
        # Going back is judged on the older version's own samples: compared with the
        # version being left (withdrawn, maybe the broken one) it would look wrong.
        compare = None if back else previous
        health = check_health(loaded, previous=compare, policy=self.settings.health)
        self._event(model, "health", health.ok, wanted, current, health.detail)
        if not health.ok:
            why = f"health check: {health.detail}"
            return self._reject(model, wanted, current, why, stats, back)
        self._save(model, active=wanted, previous=current, watching=wanted, installing=None)
        table = {wanted: loaded}
        if previous is not None and current is not None:
            table[current] = previous  # still served to requests that name it
        self._publish(model, table, latest=wanted)
        self._watch[model] = []
        if self.settings.watch_requests == 0:  # nothing to watch: committed before it is said
            self._commit(model)
        self._event(model, "swap", True, wanted, current, f"serving {wanted}", stats.downloaded)
        return stats.outcome(model, "updated", wanted, current, health.detail)

    def _publish(
        self, model: str, sessions: dict[int, LoadedModel], latest: int | None = None
    ) -> None:
        """Swap ``sessions`` in on the backend, and the same versions on every other cache
        (opened first, so a failure there changes nothing anywhere)."""
        active = latest if latest is not None else max(sessions)
        try:
            others = [
                (other, {v: self._open(other, model, v) for v in sessions}) for other in self.also
            ]
        finally:
            self._use_config(model, active)  # the model-level config is the served version's
        self.backend.publish(model, sessions, latest=latest)
        for other, opened in others:
            other.publish(model, opened, latest=latest)

    def _open(self, backend: LocalBackend, model: str, version: int) -> LoadedModel:
        """``backend.open`` with the model-level config made ``version``'s own first."""
        self._use_config(model, version)
        return backend.open(model, version)

    def _use_config(self, model: str, version: int) -> None:
        """Rewrite ``MODEL/config.yaml`` (atomic, durable) from ``version``'s own signed config.

        A version installed without one (before versions carried it, or built
        locally) leaves the file as it is; one whose copy fails its
        ``version.json`` sha256 too (the open that follows refuses the version).

        Raises:
            UpdateError: the version's config is not a model config.
        """
        directory = self.repository.root / model / str(version)
        copy = directory / VERSION_CONFIG
        try:
            data = copy.read_bytes()
            manifest = json.loads((directory / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            return
        signed = manifest.get("files", {}) if isinstance(manifest, dict) else {}
        if not isinstance(signed, dict) or signed.get(VERSION_CONFIG) != _sha(data):
            return
        text = _dump_config(_parse_config(data, str(copy))).encode()
        target = self.repository.root / model / CONFIG_FILE
        try:
            if target.read_bytes() == text:
                return
        except OSError:
            pass
        _write_atomic(target, text, durable=True)

    def _served(self, model: str, version: int | None) -> LoadedModel | None:
        if version is None:
            return None
        published = self.backend.published(model) or {}
        if version in published:
            return published[version]
        try:
            return self._open(self.backend, model, version)
        except EdgecloudError:
            return None

    def _reject(
        self,
        model: str,
        wanted: int,
        current: int | None,
        why: str,
        stats: _Moved,
        back: bool = False,
    ) -> Outcome:
        """``wanted`` never served: mark it bad, remove it, keep ``current``.

        Going ``back`` to an older version that fails is not that version's
        verdict (it served here before): reported ``ok=false``, nothing marked
        bad or removed, ``current`` kept and the next round tries again."""
        if current is not None:
            self._use_config(model, current)
        if back:
            self._save(model, installing=None)
            why = f"cannot go back to version {wanted}: {why}"
            self._event(model, "rollback", False, wanted, current, why)
            return stats.outcome(model, "failed", current, wanted, why)
        self._save(model, bad=sorted({*self.state(model)["bad"], wanted}), installing=None)
        self._discard(model, wanted)
        self._event(model, "rollback", True, current, wanted, why)
        return stats.outcome(model, "rolled-back", current, wanted, why)

    def observe(self, model: str, ok: bool) -> bool:
        """Count one request to ``model`` after a swap; rolls back once the watched
        requests' error rate exceeds ``max_error_rate`` (decided after ``watch_requests``).
        Returns True when this request's count swapped the previous version back (what
        the gateway serves changed: its model metadata is read again)."""
        if model not in self._watch:  # the common case, without the lock
            return False
        with self._lock:
            seen = self._watch.get(model)
            if seen is None:
                return False
            seen.append(ok)
            if len(seen) < self.settings.watch_requests:
                return False
            rate = seen.count(False) / len(seen)
            if rate > self.settings.max_error_rate:
                self._roll_back(model, f"error rate {rate:.2f} in the first {len(seen)} requests")
                return True
            self._commit(model)
            return False

    def infer(self, request: InferRequest) -> InferResponse:
        """``backend.infer`` with the result counted by :meth:`observe`."""
        try:
            response = self.backend.infer(request)
        except EdgecloudError:
            self.observe(request.model, False)
            raise
        self.observe(request.model, True)
        return response

    def _commit(self, model: str) -> None:
        """The swap held: stop watching, keep only the active and previous versions."""
        self._watch.pop(model, None)
        st = self.state(model)
        self._save(model, watching=None)
        keep = {st["active"], st["previous"]}
        for version in self.repository.versions(model):
            if version not in keep:
                self._discard(model, version)

    def _finish_commit(self, model: str) -> None:
        """Discard what a commit SIGKILLed between its state write and its discards
        left behind: versions older than the active one that are neither its previous
        nor being installed (a newer one may be the candidate the next step installs,
        so it stays)."""
        st = self.state(model)
        active = st["active"]
        if st.get("watching") is not None and self.settings.watch_requests == 0:
            self._commit(model)  # cut between the swap's state write and its commit
            return
        if st.get("watching") is not None or active is None:
            return
        for version in self.repository.versions(model):
            if version < active and version not in (st["previous"], st.get("installing")):
                self._discard(model, version)

    def _roll_back(self, model: str, why: str) -> None:
        st = self.state(model)
        bad, back = st["active"], st["previous"]
        self._watch.pop(model, None)
        loaded = self._served(model, back)
        if loaded is None:
            self._event(
                model, "rollback", False, back, bad, f"{why}; no previous version to go back to"
            )
            self._save(model, watching=None)
            return
        self._save(model, active=back, previous=None, watching=None, bad=sorted({*st["bad"], bad}))
        self._publish(model, {back: loaded})
        self._discard(model, bad)
        self._event(model, "rollback", True, back, bad, why)

    # -- metadata ---------------------------------------------------------------------

    def _refresh(self) -> tuple[dict[str, Any], bool]:
        """Refresh TUF metadata; the verified top-level targets and whether names carry hashes."""
        from .._optional import require

        feature = "fleet updates"
        errors = require("tuf.api.exceptions", extra="fleet", feature=feature)
        metadata = require("tuf.api.metadata", extra="fleet", feature=feature)
        ngclient = require("tuf.ngclient.updater", extra="fleet", feature=feature)
        require("cryptography", extra="fleet", feature=feature)  # signature checks need it
        base = self.settings.server.rstrip("/") + "/fleet"
        tuf_dir = self.state_dir / "tuf"
        fetcher = tuf_fetcher(
            self.settings.token,
            self.settings.timeout_s,
            min_rate_bytes_s=self._min_rate(),
            allowance_s=self.settings.rate_allowance_s,
        )
        try:
            updater = ngclient.Updater(
                str(tuf_dir),
                f"{base}/metadata/",
                target_base_url=f"{base}/targets/",
                fetcher=fetcher,
                bootstrap=self.trust_root,
            )
            updater.refresh()
            # The files the Updater just verified and persisted (top-level targets only).
            targets = metadata.Metadata.from_file(str(tuf_dir / "targets.json"))
            root = metadata.Metadata.from_file(str(tuf_dir / "root.json"))
        except (errors.RepositoryError, errors.DownloadError, OSError, ValueError) as exc:
            if fetcher.refused is not None:
                raise refused(fetcher.refused, f"{base}/metadata/", self.settings.token) from exc
            if fetcher.slow is not None:
                raise DownloadError(fetcher.slow) from exc
            if fetcher.unreachable is not None:
                raise UpdateError(f"cannot reach {base}/ ({fetcher.unreachable})") from exc
            if isinstance(exc, OSError):  # the metadata directory: a full or read-only disk
                with storage_errors(f"update metadata in {tuf_dir}"):
                    raise exc
            why = str(exc) or type(exc).__name__
            raise UpdateError(f"update metadata refused: {why}") from exc
        finally:
            fetcher.close()
        found: dict[str, Any] = dict(targets.signed.targets)
        return found, bool(root.signed.consistent_snapshot)

    # -- housekeeping ------------------------------------------------------------------

    def _discard(self, model: str, version: int) -> None:
        """Remove a version directory: renamed away first (one step), then deleted."""
        directory = self.repository.root / model / str(version)
        if not directory.exists():
            return
        trash = directory.with_name(f".trash-{version}-{uuid.uuid4().hex}")
        directory.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _on_disk(self, model: str) -> list[int]:
        """Versions of ``model`` in the device's repository (none before its first install)."""
        return self.repository.versions(model) if (self.repository.root / model).is_dir() else []

    def _empty_trash(self, model: str) -> None:
        directory = self.repository.root / model
        if directory.is_dir():
            for trash in directory.glob(".trash-*"):
                shutil.rmtree(trash, ignore_errors=True)

    def drain_telemetry(self) -> int:
        """Send queued events to the server; returns how many were delivered.

        Raises:
            UpdateAuthError: the server refused the token (401/403). The events
                stay queued (the outbox stops at an auth failure, nothing is
                dead-lettered) and :attr:`auth_refusals` counts the refusal.
        """
        from .telemetry import http_sender

        send = http_sender(self.settings.server, token=self.settings.token)
        delivered = self.telemetry.drain(send)
        if send.refused is not None:
            self.auth_refusals += 1
            raise send.refused
        return delivered

    def wake(self) -> None:
        """Check now instead of at the end of the interval (``edgecloud fleet check``, SIGUSR1)."""
        self._wake.set()

    def run(
        self, stop: threading.Event, on_round: Callable[[list[Outcome]], None] | None = None
    ) -> None:
        """Check every ``interval_s`` (first at once, and at each :meth:`wake`) and drain
        telemetry, until ``stop`` is set; ``on_round`` gets each round's outcomes (the
        gateway re-reads which models are ready after an install)."""
        said = ""
        while not stop.is_set():
            self._wake.clear()
            try:
                outcomes = self.check()
                if on_round is not None:
                    on_round(outcomes)
            except Exception:  # one bad round never stops the device's updates
                log.exception("fleet: update round failed")
            try:
                self.drain_telemetry()
            except UpdateAuthError as exc:  # once per distinct refusal, not once a tick
                if exc.message != said:
                    log.error("fleet telemetry: %s (events kept queued)", exc.message)
                said = exc.message
            except EdgecloudError:
                pass  # offline: the outbox keeps the events
            deadline = time.monotonic() + self.settings.interval_s
            while not stop.is_set() and not self._wake.is_set() and time.monotonic() < deadline:
                self._wake.wait(min(0.2, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self.telemetry.close()
        self._store.close()


@dataclass
class _Moved:
    downloaded: int = 0
    redownloaded: int = 0
    resumed: int = 0

    def add(self, result: FetchResult) -> None:
        self.downloaded += result.downloaded
        self.redownloaded += result.redownloaded
        self.resumed += result.resumed_from

    def outcome(
        self, model: str, action: str, version: int | None, other: int | None, detail: str
    ) -> Outcome:
        return Outcome(
            model, action, version, other, detail, self.downloaded, self.redownloaded, self.resumed
        )


def _kind(info: Any) -> str | None:
    custom = getattr(info, "custom", None) or {}
    edge = custom.get("edgecloud") if isinstance(custom, dict) else None
    return edge.get("kind") if isinstance(edge, dict) else None


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _parse_config(data: bytes, where: str) -> ModelConfig:
    import yaml

    try:
        return ModelConfig.model_validate(yaml.safe_load(data))
    except Exception as exc:  # yaml and pydantic errors: the signed config is unusable
        raise UpdateError(
            f"{where}: not a model config: {' '.join(str(exc).split())[:300]}"
        ) from exc
