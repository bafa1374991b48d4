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
idempotent by event ``id`` (SQLite ``INSERT OR IGNORE`` on the primary key,
WAL, one ``BEGIN IMMEDIATE`` transaction per post): a re-sent event counts
once however many server workers receive it at the same time. A re-sent id
with a different body keeps the first (reported as a duplicate).

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

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from ..errors import InvalidRequestError, UnavailableError
from .idempotency import default_store_path

__all__ = [
    "MAX_EVENTS",
    "DeviceStatus",
    "FleetRoutes",
    "FleetStore",
    "TelemetryEvent",
    "default_fleet_db",
    "parse_events",
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
            where = ".".join(str(p) for p in first["loc"]) or "event"
            raise InvalidRequestError(f"event {index}: {where}: {first['msg']}") from exc
    return events


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
        """Store the events not stored yet (by id); returns how many were new."""
        received = time.time() if now is None else now
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

    def __init__(self, path: Path) -> None:
        self.path = path
        self._store: FleetStore | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> FleetStore:
        with self._lock:
            if self._store is None:
                self._store = FleetStore(self.path)
            return self._store

    async def post(self, body: bytes) -> bytes:
        """``POST /fleet/telemetry`` → ``{"accepted": n, "duplicates": m}``."""
        events = parse_events(body)
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
