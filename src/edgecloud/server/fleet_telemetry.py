"""Fleet telemetry: what device agents report, stored once, and each device's state.

Routes (mounted by :class:`~.http.HttpApp`, bearer token as every route):

* ``POST /fleet/telemetry`` — one event (a JSON object), a JSON list of
  events, or ``{"events": [...]}``; at most :data:`MAX_EVENTS` per post.
  Answers ``{"accepted": n, "duplicates": m}``. The whole post is checked
  before anything is stored: one bad event is a 400 naming its index and
  field, and stores nothing.
* ``GET /fleet/status?model=M`` — ``{"devices": [DeviceStatus, ...]}`` (every
  model without ``model``).

Event schema (the agent's :mod:`edgecloud.fleet.telemetry` sends it)::

    {"id": "<device>:<seq>", "device": str, "group": str|null, "model": str,
     "event": "check|download|install|health|swap|rollback|error",
     "version": int|null, "from_version": int|null, "ok": bool,
     "detail": str, "bytes": int, "at": unix seconds (device clock)}

``version`` is the version the event is about: for ``swap``/``rollback`` the
version served after it (a rollback's ``from_version`` is the version it
left); for ``check`` the version wanted, ``from_version`` the one running.

Delivery promise: the agent's outbox is at-least-once, so this store is
idempotent by event ``id`` (SQLite primary key, WAL, one ``BEGIN IMMEDIATE``
transaction per post): a re-sent event counts once however many server
workers receive it at the same time. The key is bound to its owner and its
content, as an ``Idempotency-Key`` is (IETF httpapi draft, section 2.6):

* ``id`` must be ``<device>:<seq>`` of the event's own ``device`` (``seq``
  the canonical decimal of an int64: no sign, no leading zero, so ``d:01``
  and ``d:1`` cannot be two ids of one event), else 400 — one device cannot
  take another's ids and so hide its reports;
* a known ``id`` with other content (any field) is 422
  (:class:`~edgecloud.errors.IdempotencyKeyReuseError`) and the whole post is
  refused; the same content again is a duplicate (200, counted).

With a served update repository (``serve --fleet``) an event must name a
model the signed targets hold (400 naming ``model``), and a ``download``,
``install``, ``health`` or ``swap`` event a version published for it (400
naming ``version``): those four are only ever about versions the device got
from the repository. ``check`` and ``rollback`` events may name a version the
device had before it followed the fleet (installed locally), so their
versions are not checked.

A device's state is derived from its events at read time (events may arrive
late and out of order after an outage): its version is the one its latest
``check``/``swap``/``rollback`` says it runs (:func:`_running`), in the order
of the sequence number in its event ids (its clock may jump), its last
contact the latest time the server received anything from it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)

from ..errors import (
    IdempotencyKeyReuseError,
    InvalidRequestError,
    PayloadTooLargeError,
    UnavailableError,
)
from .idempotency import default_store_path

__all__ = [
    "MAX_EVENTS",
    "DeviceStatus",
    "FleetRoutes",
    "FleetStore",
    "TelemetryEvent",
    "check_published",
    "default_fleet_db",
    "parse_events",
    "published_models",
    "telemetry_too_large",
]

#: Most events one POST may carry (the agent's outbox drains in batches well below).
MAX_EVENTS = 1000

EventKind = Literal["check", "download", "install", "health", "swap", "rollback", "error"]


class TelemetryEvent(BaseModel):
    """One device event (module docstring); strict types, extra keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=256)
    """Unique per event: ``<device>:<sequence number>``."""
    device: str = Field(min_length=1, max_length=256)
    group: str | None = Field(default=None, max_length=256)
    model: str = Field(min_length=1, max_length=256)
    event: EventKind
    version: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    from_version: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    ok: StrictBool
    detail: str = Field(default="", max_length=65536)
    """Free text (an error message); a longer one is a 400, not truncated."""
    bytes: StrictInt = Field(default=0, ge=0, le=2**62)
    at: float = Field(ge=0, allow_inf_nan=False)
    """Unix seconds on the device's clock."""

    @model_validator(mode="after")
    def _id_is_the_devices(self) -> TelemetryEvent:
        owner, colon, seq = self.id.rpartition(":")
        if not colon or owner != self.device or not _canonical_seq(seq):
            raise ValueError(
                f"{self.id!r} must be '<device>:<seq>' of this event's own device "
                f"and a decimal sequence number without leading zeros, at most {MAX_SEQ} "
                f"(one spelling per event), e.g. '{self.device}:1'"
            )
        return self


MAX_SEQ = 2**63 - 1
"""Largest sequence number of an event id (SQLite INTEGER, int64); the agent's
start past the clock in milliseconds (~1.8e12) leaves ~5e6 years of events."""


def _canonical_seq(seq: str) -> bool:
    """``seq`` is the one decimal spelling of an integer in [0, :data:`MAX_SEQ`]: ASCII
    digits, no sign, no leading zero (``01`` and ``1`` would be two ids of one event)."""
    if not (seq.isascii() and seq.isdigit()) or (len(seq) > 1 and seq[0] == "0"):
        return False
    return len(seq) <= 19 and int(seq) <= MAX_SEQ


class DeviceStatus(BaseModel):
    """One row of ``fleet status``: a device's state for one model."""

    device: str
    group: str | None
    model: str
    version: int | None
    """Version it runs (latest ok check/swap/rollback), None before any."""
    last_contact: float
    """Server time (unix seconds) of the latest event received from it."""
    last_health_at: float | None
    last_health_ok: bool | None
    last_health_version: int | None
    last_health_detail: str
    rollbacks: int
    """Rollback events it reported for this model."""
    last_rollback_from: int | None
    """The version it left at its latest rollback."""
    errors: int


def parse_events(body: bytes) -> list[TelemetryEvent]:
    """Decode a POST body into events; all or nothing.

    Raises:
        InvalidRequestError: not JSON, not an event / list / ``{"events": []}``,
            more than :data:`MAX_EVENTS`, or an event with a missing or wrong
            field (the message names the event's index and the field).
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"telemetry body is not JSON: {exc}") from exc
    if isinstance(doc, dict) and set(doc) == {"events"}:
        doc = doc["events"]
    items = doc if isinstance(doc, list) else [doc]
    if len(items) > MAX_EVENTS:
        raise InvalidRequestError(f"{len(items)} events in one post; send at most {MAX_EVENTS}")
    events = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequestError(f"event {index}: expected a JSON object")
        try:
            events.append(TelemetryEvent.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "id"
            raise InvalidRequestError(f"event {index}: {where}: {_plain(first)}") from exc
    return events


def _plain(error: Any) -> str:
    """One pydantic error (``ErrorDetails``) as a plain phrase about the field it names."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "empty; give a non-empty string"
    if kind == "string_too_long":
        return f"longer than {ctx.get('max_length')} characters"
    if kind == "missing":
        return "missing (every event has id, device, model, event, ok and at)"
    if kind == "extra_forbidden":
        return "not a field of a telemetry event"
    return str(error["msg"]).removeprefix("Value error, ")


def telemetry_too_large(limit: int) -> PayloadTooLargeError:
    """The 413 of ``POST /fleet/telemetry``: names the limit and how to split."""
    return PayloadTooLargeError(
        f"telemetry post exceeds the server's limit of {limit} bytes "
        f"(max_json_request_bytes); send the events in smaller batches "
        f"(at most {MAX_EVENTS} events, under {limit} bytes per post)"
    )


def published_models(fleet: Path) -> dict[str, set[int]]:
    """Model -> versions with a signed model target in the update repository ``fleet``.

    Raises:
        UnavailableError: the repository's signed metadata cannot be read.
    """
    from ..fleet.rollout import published_versions
    from ..fleet.update_repo import UpdateRepository

    try:
        targets = UpdateRepository(fleet, None).targets()
    except Exception as exc:  # a repository mid-publish or broken: not the device's mistake
        raise UnavailableError(f"update repository {fleet}: cannot read targets: {exc}") from exc
    models = {
        str(custom["model"])
        for t in targets.values()
        if isinstance(custom := t.unrecognized_fields.get("custom", {}).get("edgecloud"), dict)
        and "model" in custom
    }
    return {m: published_versions(targets, m) for m in models}


#: Events whose ``version`` always comes from the update repository.
_FROM_REPOSITORY = frozenset({"download", "install", "health", "swap"})


def check_published(events: list[TelemetryEvent], published: dict[str, set[int]]) -> None:
    """InvalidRequestError (400) for an event about a model the repository does not
    hold, or a download/install/health/swap of a version never published."""
    for index, e in enumerate(events):
        if e.model not in published:
            raise InvalidRequestError(
                f"event {index}: model: {e.model!r} is not in this server's update repository"
            )
        known = published[e.model]
        if e.event in _FROM_REPOSITORY and e.version is not None and e.version not in known:
            raise InvalidRequestError(
                f"event {index}: version: {e.model!r} version {e.version} was never "
                "published in this server's update repository"
            )


def default_fleet_db(serving: Path) -> Path:
    """``<state dir>/fleet/<name>-<hash>.db`` for a server of ``serving`` (the
    idempotency store's naming, in a ``fleet`` directory beside it)."""
    store = default_store_path(serving)
    return store.parent.parent / "fleet" / store.name


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    grp TEXT,
    model TEXT NOT NULL,
    event TEXT NOT NULL,
    version INTEGER,
    from_version INTEGER,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    at REAL NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_model_device ON events (model, device);
"""


class FleetStore:
    """SQLite store of telemetry events (WAL; safe across threads and processes).

    Raises UnavailableError (503) when the database cannot be opened or written.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._local = threading.local()
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._connect().executescript(_SCHEMA)  # idempotent; commits itself
        except sqlite3.Error as exc:
            raise UnavailableError(f"fleet store {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise UnavailableError(f"fleet store {self.path}: {exc}") from exc
            self._local.db = db
        return db

    def _write(self) -> _Transaction:
        return _Transaction(self._connect(), str(self.path))

    def record(self, events: Iterable[TelemetryEvent], *, now: float | None = None) -> int:
        """Store the events not stored yet (by id); returns how many were new.

        All or nothing, in one transaction (so concurrent posts of one id are
        decided one after the other).

        Raises:
            IdempotencyKeyReuseError: an id already stored (or earlier in
                ``events``) with other content; nothing of the post is stored.
        """
        received = time.time() if now is None else now
        events = list(events)
        seen: dict[str, TelemetryEvent] = {}
        for e in events:
            if seen.setdefault(e.id, e) != e:
                raise _reused(e.id)
        rows = [
            (
                e.id,
                e.device,
                e.group,
                e.model,
                e.event,
                e.version,
                e.from_version,
                int(e.ok),
                e.detail,
                e.bytes,
                e.at,
                received,
            )
            for e in events
        ]
        with self._write() as db:
            ids = list(seen)
            for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
                stored = db.execute(
                    "SELECT id, device, grp, model, event, version, from_version, ok, detail,"
                    f" bytes, at FROM events WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                for row in stored:
                    if _event(row) != seen[row[0]]:
                        raise _reused(row[0])
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            return db.total_changes - before

    def count(self, model: str | None = None) -> int:
        """Stored events (of ``model``)."""
        where, args = ("WHERE model = ?", (model,)) if model else ("", ())
        row = self._connect().execute(f"SELECT count(*) FROM events {where}", args).fetchone()
        return int(row[0])

    def events(self, model: str, *, since: float = 0.0) -> list[TelemetryEvent]:
        """``model``'s events received at or after ``since`` (server time), oldest first."""
        rows = self._connect().execute(
            "SELECT id, device, grp, model, event, version, from_version, ok, detail, bytes, at"
            " FROM events WHERE model = ? AND received_at >= ? ORDER BY at, rowid",
            (model, since),
        )
        return [_event(row) for row in rows]

    def devices(self, model: str | None = None) -> list[DeviceStatus]:
        """Each device's state for ``model`` (every model when None), sorted by device."""
        where, args = ("WHERE model = ?", (model,)) if model else ("", ())
        rows = self._connect().execute(
            "SELECT id, device, grp, model, event, version, from_version, ok, detail, bytes, at,"
            f" received_at FROM events {where} ORDER BY rowid",
            args,
        )
        events = sorted(((_event(row[:11]), float(row[11])) for row in rows), key=_order)
        states: dict[tuple[str, str], dict[str, Any]] = {}
        for event, received in events:
            _fold(states, event, received)
        return [DeviceStatus(**states[key]) for key in sorted(states)]

    def close(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error), sqlite errors as 503."""

    def __init__(self, db: sqlite3.Connection, where: str) -> None:
        self.db, self.where = db, where

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise UnavailableError(f"fleet store {self.where}: {exc}") from exc
        return self.db

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as err:
                self.db.execute("ROLLBACK")
                raise UnavailableError(f"fleet store {self.where}: {err}") from err
        self.db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise UnavailableError(f"fleet store {self.where}: {exc}") from exc


def _reused(event_id: str) -> IdempotencyKeyReuseError:
    return IdempotencyKeyReuseError(
        f"event id {event_id!r} is already stored with other content; "
        "a device gives each new event a new sequence number"
    )


def _event(row: tuple[Any, ...]) -> TelemetryEvent:
    keys = ("id", "device", "group", "model", "event", "version", "from_version", "ok")
    values = dict(zip(keys, row[:8], strict=True))
    values["ok"] = bool(values["ok"])
    return TelemetryEvent(**values, detail=row[8], bytes=row[9], at=row[10])


def _order(item: tuple[TelemetryEvent, float]) -> tuple[str, int, float]:
    """A device's events in the order it made them: by the sequence number of
    its ``<device>:<seq>`` id (durable on the device, immune to clock jumps),
    else by its clock."""
    e = item[0]
    _, _, seq = e.id.rpartition(":")
    return (e.device, int(seq) if seq.isdigit() and len(seq) < 19 else -1, e.at)


def _running(e: TelemetryEvent) -> int | None:
    """The version an event says the device runs, or None when it says nothing.

    ``swap`` / ``rollback`` (ok): ``version``, the one now served. ``check``:
    ``from_version``, the one it runs while it checks (``version`` is the one
    it wants); a failed check without ``from_version`` carries the running
    one in ``version``.
    """
    if e.event in ("swap", "rollback"):
        return e.version if e.ok else None
    if e.event == "check":
        if e.from_version is not None:
            return e.from_version
        return None if e.ok else e.version
    return None


def _fold(
    states: dict[tuple[str, str], dict[str, Any]], e: TelemetryEvent, received: float
) -> None:
    """Apply one event (in device-time order) to its device's state."""
    s = states.setdefault(
        (e.device, e.model),
        {
            "device": e.device,
            "group": e.group,
            "model": e.model,
            "version": None,
            "last_contact": received,
            "last_health_at": None,
            "last_health_ok": None,
            "last_health_version": None,
            "last_health_detail": "",
            "rollbacks": 0,
            "last_rollback_from": None,
            "errors": 0,
        },
    )
    s["last_contact"] = max(s["last_contact"], received)
    s["group"] = e.group if e.group is not None else s["group"]
    running = _running(e)
    if running is not None:
        s["version"] = running
    if e.event == "health":
        s.update(
            last_health_at=e.at,
            last_health_ok=e.ok,
            last_health_version=e.version,
            last_health_detail=e.detail,
        )
    if e.event == "rollback":
        s["rollbacks"] += 1
        s["last_rollback_from"] = e.from_version
    if e.event == "error" or (not e.ok and e.event != "health"):
        s["errors"] += 1


class FleetRoutes:
    """The HTTP side of the store: opened at the first fleet request (a server
    no device reports to never creates the file); blocking SQLite off the loop."""

    def __init__(self, path: Path, fleet: Path | None = None) -> None:
        self.path = path
        self.fleet = fleet
        """The served update repository: events are checked against its targets."""
        self._store: FleetStore | None = None
        self._lock = threading.Lock()
        self._published: tuple[tuple[int, int], dict[str, set[int]]] | None = None

    def _published_now(self) -> dict[str, set[int]] | None:
        """The repository's published models, re-read when timestamp.json changes
        (every sign and every timestamp refresh writes it)."""
        if self.fleet is None:
            return None
        try:
            info = (self.fleet / "metadata" / "timestamp.json").stat()
        except OSError as exc:
            raise UnavailableError(f"update repository {self.fleet}: {exc.strerror}") from exc
        key = (info.st_mtime_ns, info.st_size)
        cached = self._published
        if cached is None or cached[0] != key:
            cached = (key, published_models(self.fleet))
            self._published = cached
        return cached[1]

    @property
    def store(self) -> FleetStore:
        with self._lock:
            if self._store is None:
                self._store = FleetStore(self.path)
            return self._store

    async def post(self, body: bytes) -> bytes:
        """``POST /fleet/telemetry`` → ``{"accepted": n, "duplicates": m}``."""
        events = parse_events(body)
        published = await asyncio.to_thread(self._published_now)
        if published is not None:
            check_published(events, published)
        new = await asyncio.to_thread(self.store.record, events)
        return json.dumps({"accepted": new, "duplicates": len(events) - new}).encode()

    async def status(self, query_string: bytes) -> bytes:
        """``GET /fleet/status[?model=M]`` → ``{"devices": [...]}``."""
        query = parse_qs(query_string.decode("latin-1"))
        unknown = sorted(set(query) - {"model"})
        if unknown:
            raise InvalidRequestError(f"unknown query parameter {unknown[0]!r}; use model=NAME")
        model = query.get("model", [None])[-1]
        devices = await asyncio.to_thread(self.store.devices, model)
        return json.dumps({"devices": [d.model_dump() for d in devices]}).encode()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
