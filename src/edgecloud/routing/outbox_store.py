"""SQLite mechanics of the outbox: schema and migration, integrity check and
quarantine, and the translation of ``sqlite3`` errors (see :mod:`.outbox` for
the promises these keep)."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from ..errors import EdgecloudError, UnavailableError
from ..tensors import RequestContext, Sensitivity
from ..wire.fingerprint import request_fingerprint
from ..wire.rest import decode_request

log = logging.getLogger("edgecloud.outbox")

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT,
    sensitivity TEXT NOT NULL DEFAULT 'public',
    local_only INTEGER NOT NULL DEFAULT 0,
    features_only INTEGER NOT NULL DEFAULT 0,
    header_length INTEGER NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    enqueued REAL NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY, key TEXT, kind TEXT, model TEXT, body BLOB, header_length INTEGER,
    error TEXT, failed_at REAL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS clock (
    id INTEGER PRIMARY KEY CHECK (id = 0), observed_s REAL NOT NULL, wall_s REAL NOT NULL,
    boot_id TEXT, monotonic_s REAL
);
CREATE TABLE IF NOT EXISTS quarantines (at REAL NOT NULL, path TEXT NOT NULL, error TEXT);
"""
#: Columns schema 2 added to tables schema 1 already had: (table, column, declaration).
ADDED_COLUMNS = (
    ("items", "fingerprint", "TEXT NOT NULL DEFAULT ''"),
    ("items", "sensitivity", "TEXT NOT NULL DEFAULT 'public'"),
    ("items", "local_only", "INTEGER NOT NULL DEFAULT 0"),
    ("items", "features_only", "INTEGER NOT NULL DEFAULT 0"),
    ("items", "enqueued", "REAL NOT NULL DEFAULT 0"),
    ("items", "next_try", "REAL NOT NULL DEFAULT 0"),
    ("dead_letters", "item_seq", "INTEGER"),
    ("dead_letters", "fingerprint", "TEXT"),
    ("dead_letters", "version", "TEXT"),
    ("dead_letters", "sensitivity", "TEXT"),
    ("dead_letters", "local_only", "INTEGER"),
    ("dead_letters", "features_only", "INTEGER"),
    ("dead_letters", "reason", "TEXT"),
    ("dead_letters", "attempts", "INTEGER"),
)
COUNTERS = (
    "delivered", "dropped", "rejected", "expired", "dead_lettered", "duplicates", "key_reuse",
    "privacy_refused", "poisoned", "dead_letters_dropped", "quarantined",
)  # fmt: skip
#: sqlite3 primary result codes (https://sqlite.org/rescode.html) and what to do about them.
STORAGE_CODES = {
    3: "permission denied: let this process write the file and its directory",
    5: "the database is locked by another process: retry",
    6: "the database is locked: retry",
    8: "the file is read-only: make it and its directory writable",
    10: "disk I/O error: check the storage device",
    11: "the file is corrupt: reopen the outbox to quarantine it",
    13: "the disk is full: free space; nothing was written",
    14: "cannot open the file: check the path and its directory",
    26: "the file is not a database: reopen the outbox to quarantine it",
}
CORRUPT_CODES = (11, 26)
_STRICTNESS = {Sensitivity.PUBLIC: 0, Sensitivity.PERSONAL: 1, Sensitivity.RESTRICTED: 2}


class OutboxStorageError(UnavailableError):
    """The outbox's SQLite file could not be written or read (disk full, I/O
    error, locked, read-only); the transaction was rolled back, nothing is
    half-written, and the operation may be retried once the cause is fixed."""


def disk_full(exc: OutboxStorageError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, sqlite3.Error) and getattr(cause, "sqlite_errorcode", 0) & 0xFF == 13


def storage_error(path: Path, action: str, exc: sqlite3.Error) -> OutboxStorageError:
    code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
    hint = STORAGE_CODES.get(code, "check the storage device and the file")
    return OutboxStorageError(f"outbox {path}: could not {action}: {exc} — {hint}")


def open_checked(path: Path) -> tuple[str | None, sqlite3.Connection | None]:
    """A connection to ``path`` after ``PRAGMA quick_check``; or what is wrong with it."""
    db: sqlite3.Connection | None = None
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        report = [str(r[0]) for r in db.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        if db is not None:
            db.close()
        if getattr(exc, "sqlite_errorcode", -1) & 0xFF in CORRUPT_CODES:
            return str(exc), None
        raise storage_error(path, "open", exc) from exc
    if report != ["ok"]:
        db.close()
        return "quick_check: " + "; ".join(report)[:500], None
    return None, db


def quarantine(path: Path, problem: str, wall: float) -> Path:
    """Move ``path`` and its ``-wal``/``-shm`` aside; returns the new path of the file."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{path}{suffix}")
            if source.exists():
                os.replace(source, f"{target}{suffix}")
    except OSError as exc:
        raise OutboxStorageError(
            f"outbox {path} is corrupt ({problem}) and could not be moved aside: {exc}; "
            "move or delete it"
        ) from exc
    log.error(
        "outbox %s is corrupt (%s): moved to %s, starting a fresh outbox", path, problem, target
    )
    return target


def migrate(db: sqlite3.Connection) -> None:
    """Create the tables, or bring a schema-1 file to schema 2 in place.

    A file already at schema 2 is left untouched: opening writes nothing, so
    an outbox opens (and can be read and drained) on a full disk."""
    if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    for table, column, declaration in ADDED_COLUMNS:
        present = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    if "expires" in {r[1] for r in db.execute("PRAGMA table_info(items)")}:
        db.execute("ALTER TABLE items DROP COLUMN expires")  # schema 1 aged by wall clock
    for name in COUNTERS:
        db.execute("INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", (name,))
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def backfill(db: sqlite3.Connection, now: float, wall: float, credit: float) -> None:
    """Fingerprint, context and outbox-time age of items migrated from schema 1."""
    rows = db.execute(
        "SELECT seq, model, version, header_length, body, created FROM items WHERE fingerprint = ''"
    ).fetchall()
    for seq, model, version, length, body, created in rows:
        age = min(max(0.0, wall - created), credit)
        try:
            request = decode_request(body, length or None, model, version).request
            values = (request_fingerprint(request), request.context.sensitivity.value)
        except EdgecloudError:
            values = ("undecodable", Sensitivity.PUBLIC.value)  # dead-lettered at drain
        db.execute(
            "UPDATE items SET fingerprint = ?, sensitivity = ?, enqueued = ? WHERE seq = ?",
            (*values, now - age, seq),
        )


def bound_fingerprint(db: sqlite3.Connection, key: str) -> str | None:
    for table in ("items", "dead_letters"):
        row = db.execute(f"SELECT fingerprint FROM {table} WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return str(row[0] or "")
    return None


def tighten(db: sqlite3.Connection, key: str, context: RequestContext) -> None:
    """Keep the stricter of the stored and the new context for a duplicate put."""
    row = db.execute(
        "SELECT sensitivity, local_only, features_only FROM items WHERE key = ?", (key,)
    ).fetchone()
    if row is None:
        return
    stored = listed(row[0])
    strictest = max(stored, context.sensitivity, key=_STRICTNESS.__getitem__)
    db.execute(
        "UPDATE items SET sensitivity = ?, local_only = ?, features_only = ? WHERE key = ?",
        (strictest.value, max(row[1], int(context.local_only)),
         max(row[2], int(context.features_only)), key),
    )  # fmt: skip


def drop_oldest(db: sqlite3.Connection, excess: int) -> None:
    db.execute(
        "DELETE FROM items WHERE seq IN (SELECT seq FROM items ORDER BY seq LIMIT ?)", (excess,)
    )
    bump(db, "dropped", excess)


def count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])


def bump(db: sqlite3.Connection, name: str, by: int = 1) -> None:
    db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))


def listed(value: str) -> Sensitivity:
    """A stored sensitivity for listings; a damaged value reads as the strictest."""
    try:
        return Sensitivity(value)
    except ValueError:
        return Sensitivity.RESTRICTED
