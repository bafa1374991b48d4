"""Model control: which models and versions the server holds, changed while it runs.

Triton's three modes (``--model-control-mode``), chosen by
``ServerSettings.model_control``:

* ``none`` — every model is loaded at start and never changes (the default);
  the repository index answers, load and unload are refused (400).
* ``poll`` — the repository is rescanned every ``poll_interval_s``: new
  models and versions are loaded, changed ones reloaded, removed ones
  dropped. Load and unload are refused (400), as Triton refuses them while
  it polls.
* ``explicit`` — only ``load_models`` are loaded at start; a client loads,
  reloads and unloads a model with the repository extension.

Promises, in every mode:

* **Load before drop.** A version is opened (files checked against their
  sha256, graph against the config, warmed up) before
  :meth:`LocalBackend.publish` swaps it in; requests already running finish
  on the session they started with (Triton lets in-flight requests of an
  unloaded model finish too: an unload does not wait for them, it only stops
  new ones).
* **A failing version never replaces a working one.** A new or changed
  version that fails to load is recorded with its error in the index
  (``UNAVAILABLE`` and the reason, or ``READY`` with the reason when the
  previous copy of that version still serves); the versions that served
  before stay served. It is retried when its files change (or on an explicit
  load), not on every scan.
* **Nothing half-copied is loaded.** Versions a journaled write has not
  finished are invisible (:meth:`ModelRepository.versions`); a version whose
  files (name, size, mtime) changed since the previous scan waits for one
  more scan before it is loaded (a directory still being copied by hand);
  and a version loads only if its files match its ``version.json``.
* **Changed means a new sha256.** A version is reloaded only when the sha256
  of its model file differs from the one serving (a ``touch`` changes nothing).

What Triton users reported, and what is done here instead: poll mode unloaded
the old version before loading the new one, so a model was down during every
update (triton-inference-server/server#2076: here the new one loads first);
after one failed load, poll mode stopped noticing changes (#6534, #6710: here
a failed version is retried when its files change); an explicit load of a
broken model failed the first time and answered 200 the second (#3802: here
every load of it fails, naming why, with 400 as Triton answers a failed load:
:class:`~edgecloud.errors.ModelLoadFailedError` — for a model that does not
load and for a loaded one whose new copy does not, which keeps serving the
old copy); an explicit load did not pick up a new
version directory without an unload first (#2853: here a load re-reads the
repository). Load and unload while polling are refused with 400, as Triton
answers (``explicit model load / unload is not allowed if polling is enabled``).

The wanted set of ``explicit`` mode belongs to one serve run, never to a file
another server can see (two servers on one repository must not load and
unload each other's models). With one process it lives in memory. With
``--workers N`` it lives in the supervisor's private run directory (a fresh
``mkdtemp``, removed at exit: :mod:`.workers`), ``<run>/control/``:

* ``wanted.json`` = ``{"generation": g, "models": [...], "loads": {model: g}}``
  (replaced atomically under an ``flock``): the worker that receives a load or
  unload bumps the generation and writes it (``loads`` records the generation
  of each model's last load, so a reload of a model already wanted reaches the
  other workers too); a worker (re)starting reads it, so a restarted worker
  rejoins the set.
* ``applied-<worker>.json`` = ``{"pid": p, "generation": g, "failed": {model:
  reason}}``: the generation a worker has applied, written after each apply
  (``-1`` while it starts, before it reads ``wanted.json``).

Every worker checks ``wanted.json`` every :data:`CONTROL_TICK_S` (one ``stat``;
it reads and applies the file only when it changed). The worker that received
the request answers only once every live worker has applied the new
generation (it waits up to ``request_timeout_s``, outside its control lock):
a 200 means every worker serves (or no longer serves) the model. A worker
that did not apply it in time is named in a 503; one whose load failed is
named in the load's 400, with why.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..backends.local import LoadedModel
from ..errors import (
    ConfigError,
    EdgecloudError,
    InvalidRequestError,
    ModelLayoutError,
    ModelLoadError,
    ModelLoadFailedError,
    ModelNotFoundError,
    UnavailableError,
    clip,
)
from ..repository import _write_atomic, sha256_file

if TYPE_CHECKING:
    from .host import ModelHost, ModelState

__all__ = ["CONTROL_TICK_S", "ModelControl", "VersionRecord"]

log = logging.getLogger("edgecloud.server")

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
#: Seconds between a worker's checks of the shared wanted set (one ``stat`` each):
#: how soon the other workers apply a load or unload one of them received.
CONTROL_TICK_S = 0.05
#: Seconds between a control request's checks that the other workers applied it.
ACK_POLL_S = 0.02

Fingerprint = tuple[tuple[str, int, int], ...]
_V = TypeVar("_V")


@dataclass(slots=True)
class VersionRecord:
    """What the index says of one version: Triton's ``state`` and ``reason``."""

    state: str
    reason: str = ""
    fingerprint: Fingerprint = ()
    """(relative path, size, mtime ns) of the version's files and the model's config."""
    sha256: str = ""
    """sha256 of the model file of the copy that serves (or failed)."""
    changing: bool = False
    """It failed while its files were fresh (:meth:`ModelControl._fresh`): perhaps a copy
    still under way, so it is retried once they have been quiet, not only on a change."""


class ModelControl:
    """Load, reload and unload the models of a :class:`ModelHost` (see the module doc).

    Blocking work (opening sessions) runs in a thread; control requests and
    ticks are serialised by one lock, so a load and a scan never interleave.
    """

    def __init__(self, host: ModelHost, run_dir: Path | None = None, worker: int = 0) -> None:
        """``run_dir``: this serve run's private control directory, shared by its workers
        (None: one process, the wanted set in memory); ``worker``: this worker's index.

        ConfigError for ``load_models`` outside ``explicit`` mode (every model loads),
        and for a ``poll_interval_s`` given outside ``poll`` mode (nothing is scanned:
        refused as Triton's ``--repository-poll-secs`` is meaningless there, never
        ignored)."""
        self.host = host
        self.mode = host.settings.model_control
        if host.settings.load_models and self.mode != "explicit":
            raise ConfigError(
                "--load-model (load_models) is for --model-control explicit; in "
                f"{self.mode!r} mode every model is loaded"
            )
        if "poll_interval_s" in host.settings.model_fields_set and self.mode != "poll":
            raise ConfigError(
                "--poll-interval-s (poll_interval_s) is for --model-control poll; in "
                f"{self.mode!r} mode the repository is not scanned"
            )
        self.records: dict[str, dict[int, VersionRecord]] = {}
        """Per model, per version: what the index shows. This table, ``model_errors`` and
        ``host.states`` are written by the control thread and read on the event loop:
        each is replaced whole on a change (copy on write), never changed in place."""
        self.model_errors: dict[str, str] = {}
        self._seen: dict[tuple[str, int], Fingerprint] = {}
        self._run_dir = run_dir if self.mode == "explicit" else None
        self._desired_file = None if self._run_dir is None else self._run_dir / "wanted.json"
        self._worker = worker
        self._wanted: set[str] = set()
        self._failed: dict[str, str] = {}
        """Wanted models whose last load on this worker failed (or kept the old copy): why."""
        self._generation = -1
        self._stamp: tuple[int, int, int] | None = None
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None

    # -- start and background ----------------------------------------------------

    def start(self) -> list[ModelState]:
        """Load what the mode loads at start (blocking, before serving); the states."""
        repository = self.host.repository
        if self.mode == "poll":
            self._scan(settle=False)
        else:
            names = self.host.settings.load_models
            known = repository.model_names()
            wanted = known if "*" in names else list(dict.fromkeys(names))
            unknown = [n for n in wanted if n not in known]
            if unknown:
                raise ConfigError(
                    f"--load-model {', '.join(unknown)}: no such model in {repository.root} "
                    f"(models: {', '.join(known) or 'none'})"
                )
            self._wanted = self._start_wanted(wanted)
            for name in sorted(self._wanted):
                self._load_wanted(name)  # a start-up model that fails is reported
            self._after_start()
        return list(self.host.states.values())

    def begin(self) -> None:
        """Start the background tick on the running loop (poll: scan; explicit: apply
        the wanted-set file)."""
        self._lock = asyncio.Lock()
        if self.mode == "poll" or self._desired_file is not None:
            self._task = asyncio.create_task(self._ticks())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _ticks(self) -> None:
        interval = self.host.settings.poll_interval_s
        if self._desired_file is not None:  # explicit with workers: a stat per short tick
            interval = CONTROL_TICK_S
        while True:
            await asyncio.sleep(interval)
            try:
                if self._desired_file is not None and self._file_stamp() == self._stamp:
                    continue
                await self.tick()
            except Exception:  # a scan that fails is logged; the next one retries
                log.exception("model control tick failed")

    def _file_stamp(self) -> tuple[int, int, int] | None:
        """(inode, size, mtime ns) of the wanted-set file: an atomic replace changes it."""
        assert self._desired_file is not None
        try:
            stat = self._desired_file.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    async def tick(self) -> None:
        """One background step now: a poll scan, or applying the wanted-set file."""
        await self._locked(self._tick)

    def _tick(self) -> None:
        if self.mode == "poll":
            self._scan(settle=True)
        else:
            self._apply_desired()

    async def _locked(self, work: Any, *args: Any) -> Any:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            result = await asyncio.to_thread(work, *args)
            self.host.retire_batchers()
            return result

    # -- the repository extension --------------------------------------------------

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: one entry per version known (``name``,
        ``version``, ``state``, ``reason`` when not empty), ``{"name": m}`` for a
        model that was never loaded; only ``READY`` entries with ``ready_only``."""
        names = set(self.host.repository.model_names()) | set(self.records)
        names |= set(self.host.states)
        entries: list[dict[str, str]] = []
        for name in sorted(names):
            for entry in self._entries(name):
                if not ready_only or entry.get("state") == READY:
                    entries.append(entry)
        return entries

    def _entries(self, name: str) -> list[dict[str, str]]:
        records = self.records.get(name)
        state = self.host.states.get(name)
        if records is None and state is not None and state.ready:  # mode none: start-up states
            records = {v: VersionRecord(READY) for v in state.versions}
        if records:
            return [_entry(name, v, r) for v, r in sorted(records.items())]
        error = self.model_errors.get(name) or (state.error if state is not None else None)
        if error:
            return [_entry(name, None, VersionRecord(UNAVAILABLE, error))]
        return [{"name": name}]

    async def load(self, name: str, parameters: dict[str, Any]) -> None:
        """Load (or reload) ``name`` in explicit mode, on every worker before returning.

        Raises:
            ModelNotFoundError: (404) ``name`` is not in the repository.
            ModelLoadFailedError: (400) a version did not load — nothing of ``name``
                serves, or a new copy failed and the old one serves on — on this
                worker or another (named), with why.
            UnavailableError: (503) a worker did not apply the load within
                ``request_timeout_s`` (named).
        """
        self._check_explicit("load")
        refused = sorted(parameters)
        if refused:
            raise InvalidRequestError(
                f"load of {clip(name)}: parameters {refused} are not supported (a config "
                "override or model files in the request); put the model and its config "
                "in the repository and load it by name"
            )
        if name not in self.host.repository.model_names():
            raise ModelNotFoundError(_unknown(name, self.host.repository.model_names()))
        generation, failure = await self._locked(self._change_wanted, name, True)
        await self._acknowledged(generation, name, "load", failure)

    async def unload(self, name: str, parameters: dict[str, Any]) -> None:
        """Stop serving ``name`` in explicit mode. Requests already running finish on
        their sessions; new ones get 404. ModelNotFoundError (404) for a model that
        is neither in the repository nor loaded."""
        self._check_explicit("unload")
        dependents = parameters.pop("unload_dependents", False)
        if not isinstance(dependents, bool) or parameters:
            raise InvalidRequestError(
                f"unload of {clip(name)}: the one parameter is unload_dependents (a "
                f"boolean); got {sorted(parameters) or dependents!r}"
            )
        known = set(self.host.repository.model_names()) | set(self.host.states)
        if name not in known:
            raise ModelNotFoundError(_unknown(name, sorted(known)))
        generation, _ = await self._locked(self._change_wanted, name, False)
        await self._acknowledged(generation, name, "unload", None)

    async def _acknowledged(
        self, generation: int, name: str, action: str, failure: str | None
    ) -> None:
        """Return once every live worker has applied ``generation`` (see the module doc).

        Waits outside the control lock (another worker may be waiting for this one's
        tick). Raises ModelLoadFailedError with this worker's ``failure``, or another
        worker's, and UnavailableError naming the workers that did not apply it within
        ``request_timeout_s``.
        """
        run_dir = self._run_dir
        lagging: list[str] = []
        failed: list[str] = []
        if run_dir is not None:
            deadline = time.monotonic() + self.host.settings.request_timeout_s
            while True:
                lagging, failed = [], []
                for worker, data in _applied(run_dir):
                    if worker == self._worker or not _alive(data["pid"]):
                        continue  # a dead worker reads the wanted set when it restarts
                    who = f"worker {worker} (pid {data['pid']})"
                    if data["generation"] < generation:
                        lagging.append(who)
                    elif action == "load" and name in data["failed"]:
                        failed.append(f"{who}: {data['failed'][name]}")
                if not lagging or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(ACK_POLL_S)
        if failure is not None:
            raise ModelLoadFailedError(failure)
        if failed:
            raise ModelLoadFailedError(
                f"model {name!r} loaded on worker {self._worker} but not on " + "; ".join(failed)
            )
        if lagging:
            raise UnavailableError(
                f"the {action} of model {name!r} is done on worker {self._worker} but "
                f"{', '.join(lagging)} did not apply it within "
                f"{self.host.settings.request_timeout_s:g} s; they apply it when they "
                "can (see the index), or send the request again"
            )

    def _check_explicit(self, action: str) -> None:
        if self.mode != "explicit":
            why = "it follows the repository" if self.mode == "poll" else "it loads all at start"
            raise InvalidRequestError(
                f"model {action} is not allowed in model control mode {self.mode!r} ({why}); "
                "start the server with --model-control explicit"
            )

    # -- explicit: the wanted set ---------------------------------------------------

    def _change_wanted(self, name: str, wanted: bool) -> tuple[int, str | None]:
        """Add ``name`` to the wanted set (and load it) or drop it; the new generation
        and why the load failed on this worker (None: it loaded, or an unload)."""

        def changed(data: dict[str, Any]) -> dict[str, Any]:
            models = set(data["models"]) | {name} if wanted else set(data["models"]) - {name}
            generation = int(data["generation"]) + 1
            loads = {m: g for m, g in data["loads"].items() if m in models}
            if wanted:
                loads[name] = generation
            return {"generation": generation, "models": sorted(models), "loads": loads}

        if self._desired_file is not None:
            with _flock(self._desired_file):  # the set as the other workers left it
                data = _read_desired(self._desired_file)
                data = changed(data or _fresh_set(self._wanted, self._generation + 1))
                _write_desired(self._desired_file, data)
        else:
            data = changed({"generation": self._generation, "models": sorted(self._wanted),
                            "loads": {}})  # fmt: skip
        self._apply(data)  # what other workers changed since this one's last tick, too
        return int(data["generation"]), self._failed.get(name) if wanted else None

    def _load_wanted(self, name: str) -> str | None:
        """Load (or reload) a wanted model; why it failed, or None. What served before
        a failed reload serves on."""
        try:
            failed = self._sync(name, force=True)
        except EdgecloudError as exc:
            failed = [exc.message]
            why = f"model {name!r} did not load: {exc.message}"
        else:
            serving = self.host.states[name].versions if name in self.host.states else []
            why = f"{'; '.join(failed)}; model {name!r} still serves versions {serving}"
        if not failed:
            self._failed = _without(self._failed, name)
            return None
        log.warning("%s", why)
        self._failed = {**self._failed, name: why}
        return why

    def _start_wanted(self, names: list[str]) -> set[str]:
        """The wanted set at start: ``names``, or, for a worker joining a running set
        (a restart), the set its run holds."""
        if self._desired_file is None:
            return set(names)
        with _flock(self._desired_file):
            self._write_applied()  # generation -1: starting, waited for from now on
            data = _read_desired(self._desired_file)
            if data is None:
                data = _fresh_set(set(names), 0)
                _write_desired(self._desired_file, data)
            self._stamp = self._file_stamp()
            self._generation = int(data["generation"])
        return set(data["models"])

    def _after_start(self) -> None:
        if self._desired_file is not None:
            self._write_applied()

    def _apply_desired(self) -> None:
        """Load and unload what the wanted-set file says, if another worker changed it."""
        if self._desired_file is None:
            return
        stamp = self._file_stamp()
        data = _read_desired(self._desired_file)
        if data is not None and int(data["generation"]) != self._generation:
            self._apply(data)
        self._stamp = stamp

    def _apply(self, data: dict[str, Any]) -> None:
        """Make this worker serve the wanted set ``data`` (a newer generation than its
        own): load what is new or was loaded again since, drop what is no longer in it;
        then record the generation applied."""
        previous, self._generation = self._generation, int(data["generation"])
        wanted = set(data["models"])
        for name in sorted(wanted):
            if name not in self._wanted or int(data["loads"].get(name, -1)) > previous:
                self._wanted.add(name)
                self._load_wanted(name)
        for name in sorted(self._wanted - wanted):
            self._wanted.discard(name)
            self._failed = _without(self._failed, name)
            self._drop(name, "unloaded")
        self._write_applied()

    def _write_applied(self) -> None:
        """Record the generation this worker has applied (see the module doc)."""
        if self._run_dir is None:
            return
        data = {"pid": os.getpid(), "generation": self._generation, "failed": self._failed}
        path = self._run_dir / f"applied-{self._worker}.json"
        _write_atomic(path, json.dumps(data).encode())

    # -- poll ------------------------------------------------------------------------

    def _scan(self, *, settle: bool) -> None:
        """One pass over the repository: every model synced, vanished ones dropped."""
        names = self.host.repository.model_names()
        for name in names:
            try:
                self._sync(name, settle=settle)
            except EdgecloudError as exc:
                log.warning("model %s: %s", name, exc.message)
        for name in {*self.host.states, *self.records, *self.model_errors} - set(names):
            self._drop(name, "removed from the repository")
            self.records = _without(self.records, name)
            self.model_errors = _without(self.model_errors, name)

    # -- one model ---------------------------------------------------------------------

    def _sync(self, name: str, *, settle: bool = False, force: bool = False) -> list[str]:
        """Serve the versions of ``name`` its version policy selects, loading each new or
        changed one before dropping anything, keeping what served when a load fails.

        ``settle``: a version whose files changed since the last scan waits one more.
        ``force``: retry versions that failed even if their files did not change (an
        unchanged version that loaded is not reopened: a reload of it is a no-op).
        Returns why each version that failed did (empty: all loaded).

        Raises:
            ModelLoadError: nothing of ``name`` serves after the sync (the reasons).
            ModelNotFoundError: ``name`` is not in the repository.
        """
        repository = self.host.repository
        local = self.host.local
        current = local.published(name) or {}
        try:
            config = repository.config(name)
            on_disk = repository.versions(name)
            wanted = config.version_policy.select(on_disk)
        except ModelNotFoundError:
            self._drop(name, "removed from the repository")
            raise
        except EdgecloudError as exc:  # a broken config: what served goes on serving
            self.model_errors = {**self.model_errors, name: exc.message}
            if not current:
                self._set_state(name, [], exc.message)
                raise ModelLoadError(f"model {name!r} cannot load: {exc.message}") from exc
            return [exc.message]
        self.model_errors = _without(self.model_errors, name)
        old_records = self.records.get(name, {})
        table: dict[int, LoadedModel] = {}
        records: dict[int, VersionRecord] = {}
        failed: list[str] = []
        for version in wanted:
            record, loaded = self._version(name, version, current, old_records, settle, force)
            records[version] = record
            if loaded is not None:
                table[version] = loaded
            if record.reason:  # not loaded, or a new copy failed and the old one serves
                failed.append(record.reason)
        if any(v not in table for v in wanted):  # keep the working ones that are still on disk
            for version, loaded in current.items():
                if version not in table and version in on_disk:
                    table[version] = loaded
                    records[version] = old_records.get(version) or VersionRecord(READY)
        self.records = {**self.records, name: records}
        if not _same(table, current) or local.published(name) is None:
            local.publish(name, table)
        self._set_state(name, sorted(table), "; ".join(failed) or "no version is loaded")
        if not table and failed:
            raise ModelLoadError(f"model {name!r} cannot load: {'; '.join(failed)}")
        return failed

    def _version(
        self,
        name: str,
        version: int,
        current: dict[int, LoadedModel],
        old_records: dict[int, VersionRecord],
        settle: bool,
        force: bool,
    ) -> tuple[VersionRecord, LoadedModel | None]:
        """The record of one wanted version and the session to serve it (None: none)."""
        old = current.get(version)
        record = old_records.get(version)
        fingerprint = self._fingerprint(name, version)
        seen = self._seen.get((name, version))
        self._seen[(name, version)] = fingerprint
        healthy = record is not None and record.state == READY and not record.reason
        quiet = record is not None and record.changing and not self._fresh(fingerprint)
        unchanged = record is not None and record.fingerprint == fingerprint
        if unchanged and (healthy or not force) and not quiet:
            assert record is not None
            return record, old  # unchanged: what serves (or the recorded failure) stays
        if settle and seen != fingerprint:  # still changing: wait for the next scan
            waiting = "its files changed since the last scan; it loads when they stop changing"
            if old is not None and record is not None:
                return record, old
            return VersionRecord(UNAVAILABLE, waiting), None
        try:
            loaded = self.host.local.open(name, version)
        except EdgecloudError as exc:
            # a directory that is not the version it is named stays so: never "changing"
            changing = not isinstance(exc, ModelLayoutError) and self._fresh(fingerprint)
            why = exc.message
            if changing:  # perhaps a copy still under way: not (yet) called corrupt
                why = (
                    f"incomplete or still changing (its files changed in the last "
                    f"{self._quiet_s():g} s; retried once they stop): {exc.message}"
                )
                log.info("model %s version %s is %s", name, version, why)
            else:
                log.warning("model %s version %s did not load: %s", name, version, why)
            if old is not None and record is not None:
                kept = f"a new copy failed to load, the previous one serves: {why}"
                return VersionRecord(READY, kept, fingerprint, record.sha256, changing), old
            return VersionRecord(UNAVAILABLE, why, fingerprint, "", changing), None
        sha = loaded.entry.files.get(loaded.entry.model_file) or sha256_file(
            loaded.entry.model_path
        )
        if old is not None and record is not None and record.sha256 == sha:
            return VersionRecord(READY, "", fingerprint, sha), old  # same bytes: no swap
        log.info("model %s version %s loaded (sha256 %s)", name, version, sha[:12])
        return VersionRecord(READY, "", fingerprint, sha), loaded

    def _quiet_s(self) -> float:
        """Seconds a version's files must be unchanged before a failure to load it is
        called what it is rather than "incomplete": two scans, at least 10 s (a hand copy
        pausing between chunks)."""
        return max(10.0, 2 * self.host.settings.poll_interval_s)

    def _fresh(self, fingerprint: Fingerprint) -> bool:
        """Whether a file of the version (not the model's config) in ``fingerprint``
        changed within :meth:`_quiet_s` (by the wall clock; an mtime as far in the future
        counts as fresh, one further as not: a clock jump delays the verdict no longer)."""
        mtimes = [mtime for path, _, mtime in fingerprint if os.sep in path]  # the version's
        if not mtimes:
            return False
        return abs(time.time() - max(mtimes) / 1e9) < self._quiet_s()

    def _fingerprint(self, name: str, version: int) -> Fingerprint:
        """(path, size, mtime ns) of the model's own files and of every file of the
        version: cheap to take every scan, and any copy or rewrite changes it."""
        model_dir = self.host.repository.root / name
        found: list[tuple[str, int, int]] = []
        for root, dirs, files in os.walk(model_dir / str(version)):
            dirs.sort()
            for file in sorted(files):
                path = Path(root) / file
                with contextlib.suppress(OSError):
                    stat = path.stat()
                    found.append((str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns))
        with contextlib.suppress(OSError):
            for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
                stat = path.stat()
                found.append((path.name, stat.st_size, stat.st_mtime_ns))
        return tuple(found)

    def _drop(self, name: str, why: str) -> None:
        """Stop serving ``name``: new requests get 404, running ones finish."""
        if self.host.local.published(name) is not None or name in self.host.states:
            self.host.local.publish(name, {})
        self.host.states = _without(self.host.states, name)
        records = self.records.get(name, {})
        unloaded = {v: VersionRecord(UNAVAILABLE, why) for v in records}
        self.records = {**self.records, name: unloaded}
        for key in [k for k in self._seen if k[0] == name]:
            del self._seen[key]

    def _set_state(self, name: str, versions: list[int], error: str) -> None:
        from .host import ModelState

        ready = bool(versions)
        state = ModelState(name, versions, ready, None if ready else error)
        self.host.states = {**self.host.states, name: state}


def _without(table: dict[str, _V], name: str) -> dict[str, _V]:
    """A copy of ``table`` without ``name``: the tables readers on the event loop see are
    replaced whole, never changed in place, so a reader never sees one mid-change."""
    return {k: v for k, v in table.items() if k != name}


def _same(a: dict[int, LoadedModel], b: dict[int, LoadedModel]) -> bool:
    return a.keys() == b.keys() and all(a[v] is b[v] for v in a)


def _entry(name: str, version: int | None, record: VersionRecord) -> dict[str, str]:
    entry = {"name": name}
    if version is not None:
        entry["version"] = str(version)
    entry["state"] = record.state
    if record.reason:
        entry["reason"] = record.reason
    return entry


def _unknown(name: str, known: list[str]) -> str:
    return f"no model {clip(name)} in the repository (models: {', '.join(known) or 'none'})"


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fresh_set(models: set[str], generation: int) -> dict[str, Any]:
    """A wanted-set file's content: a new one, or one rewritten after it was lost
    (``generation`` then goes on from this worker's, never back)."""
    return {"generation": generation, "models": sorted(models), "loads": {}}


def _read_desired(path: Path) -> dict[str, Any] | None:
    """The wanted-set file, or None when it is missing or unreadable (then rewritten)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(data, dict)
        and isinstance(data.get("generation"), int)
        and isinstance(data.get("models"), list)
        and all(isinstance(m, str) for m in data["models"])
        and isinstance(data.get("loads"), dict)
    )
    return data if ok else None


def _applied(run_dir: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(worker index, its ``applied-<worker>.json``) of every worker that wrote one."""
    for path in run_dir.glob("applied-*.json"):
        try:
            worker = int(path.stem.split("-", 1)[1])
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (
            isinstance(data, dict)
            and isinstance(data.get("pid"), int)
            and isinstance(data.get("generation"), int)
            and isinstance(data.get("failed"), dict)
        ):
            yield worker, data


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not Path("/proc").is_dir()
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _write_desired(path: Path, data: dict[str, Any]) -> None:
    _write_atomic(path, json.dumps(data, indent=1).encode(), durable=True)
