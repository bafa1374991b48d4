"""SQLite mechanics of the outbox: schema and migration, integrity check and
quarantine, and the translation of ``sqlite3`` errors (see :mod:`.outbox` for
the promises these keep)."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sqlite3
import struct
import time
from pathlib import Path

from ..errors import EdgecloudError, UnavailableError
from ..tensors import RequestContext, Sensitivity
from ..wire.fingerprint import binding, request_fingerprint
from ..wire.rest import decode_request

log = logging.getLogger("edgecloud.outbox")

#: 3: items and dead letters are bound by :func:`binding` (with requested outputs).
SCHEMA_VERSION = 3
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
    "privacy_refused", "poisoned", "dead_letters_dropped", "quarantined", "corrupt",
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
#: The write-ahead log is checkpointed when it holds this many pages (SQLite's
#: default is 1000) and cut back to that size after, so a checkpoint never needs
#: more new space in the database file than about this many pages. On a small
#: filesystem, fewer: an eighth of it (at least 16 pages), see :func:`tune`.
WAL_PAGES = 128
#: WAL header magic numbers (https://www.sqlite.org/fileformat.html, "The WAL
#: File Format"): the low bit says the checksums use big-endian words.
WAL_MAGIC = (0x377F0682, 0x377F0683)
WAL_HEADER = 32
FRAME_HEADER = 24
_STRICTNESS = {Sensitivity.PUBLIC: 0, Sensitivity.PERSONAL: 1, Sensitivity.RESTRICTED: 2}


class OutboxStorageError(UnavailableError):
    """The outbox's SQLite file could not be written or read (disk full, I/O
    error, locked, read-only); the transaction was rolled back, nothing is
    half-written, and the operation may be retried once the cause is fixed."""


def disk_full(exc: OutboxStorageError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, sqlite3.Error) and getattr(cause, "sqlite_errorcode", 0) & 0xFF == 13


#: Free bytes under which a disk I/O error is put down to a full filesystem: SQLite
#: reports the failed growth of its WAL index (``-shm``, 32 KiB per step, mmapped, so
#: ENOSPC arrives as SQLITE_IOERR_SHMSIZE) or of the log as a disk I/O error, not as
#: SQLITE_FULL (https://sqlite.org/rescode.html#ioerr_shmsize).
FULL_BELOW_BYTES = 64 * 1024


def storage_error(path: Path, action: str, exc: sqlite3.Error) -> OutboxStorageError:
    code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
    hint = STORAGE_CODES.get(code, "check the storage device and the file")
    if code == 10 and (free := free_bytes(path)) is not None and free < FULL_BELOW_BYTES:
        hint = (
            f"no space left on the filesystem of {path.parent} ({free} bytes free): "
            "free space; nothing was written"
        )
    return OutboxStorageError(f"outbox {path}: could not {action}: {exc} — {hint}")


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``
    (``statvfs``: ``f_bavail * f_frsize``; the nearest existing directory above a
    missing file), or None when it cannot be asked."""
    where = path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        stat = os.statvfs(where)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


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
    target = _aside_name(path, wall)
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


def tune(db: sqlite3.Connection, path: Path) -> tuple[int, int]:
    """Bound the write-ahead log (``wal_autocheckpoint``, ``journal_size_limit``) to
    :data:`WAL_PAGES` pages, or an eighth of a smaller filesystem; returns the
    size of the reserve that lets a checkpoint of such a log and the deletes of
    a drain proceed on a full disk (bytes: the log's pages plus a quarter more,
    at least 8 pages), and the page size."""
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    page_size = int(page_size)
    try:
        stat = os.statvfs(path.parent)
        pages = max(16, min(WAL_PAGES, stat.f_blocks * stat.f_frsize // 8 // page_size))
    except OSError:
        pages = WAL_PAGES
    db.execute(f"PRAGMA wal_autocheckpoint={pages}")
    db.execute(f"PRAGMA journal_size_limit={pages * page_size}")
    return (pages + max(8, pages // 4)) * page_size, page_size


def lock_file(path: Path) -> tuple[int | None, bool]:
    """A descriptor holding a shared ``flock`` on ``<name>-lock`` for as long as
    the outbox is open, and whether this opener is alone (nobody else has the
    file open, so its write-ahead log is at rest and may be checked).

    ``flock`` (not ``fcntl``) locks, on a file of their own: closing another
    descriptor of the database would drop SQLite's POSIX locks. ``(None,
    False)`` when the lock file cannot be made (the open then reports why)."""
    try:
        fd = os.open(f"{path}-lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None, False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        alone = True
    except OSError:
        fcntl.flock(fd, fcntl.LOCK_SH)
        alone = False
    return fd, alone


def share(fd: int) -> None:
    """Let other processes open the outbox too (after the checks at open)."""
    fcntl.flock(fd, fcntl.LOCK_SH)


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def wal_damage(path: Path) -> str | None:
    """What is wrong with the outbox's write-ahead log at rest, or None.

    SQLite replays a ``-wal`` only up to the first frame whose checksum fails
    and ignores a log whose header is bad, by design and silently, so damage
    there loses committed, acknowledged items. Checked here (format and
    checksums: https://www.sqlite.org/fileformat.html, "The WAL File Format"):
    the header (magic, page size, checksum); every frame that carries the
    header's salts (the frames of the current log; frames with other salts are
    left over from before the last checkpoint), in order, against the
    cumulative checksum; a trailing partial frame that was a commit; and a
    database file that is empty while a log exists. Costs about 60 ms per MB
    of log (pure Python; the log is cut back to :data:`WAL_PAGES` pages after
    each checkpoint, but one large item makes it larger), and runs only when a
    log was left behind (a crash).
    """
    try:
        wal = Path(f"{path}-wal").read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"the write-ahead log cannot be read: {exc}"
    if not wal:
        return None
    try:
        db_size = path.stat().st_size
    except FileNotFoundError:
        db_size = 0
    if db_size == 0:
        return f"the database file is empty or missing, its write-ahead log holds {len(wal)} bytes"
    if len(wal) < WAL_HEADER:
        return f"the write-ahead log is {len(wal)} bytes, shorter than its {WAL_HEADER}-byte header"
    magic, _version, page_size, _seq = struct.unpack(">4I", wal[:16])
    if magic not in WAL_MAGIC:
        return f"the write-ahead log's header is damaged (magic {magic:#010x})"
    order = ">" if magic & 1 else "<"
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return f"the write-ahead log's header is damaged (page size {page_size})"
    sums = _wal_checksum(wal[:24], order, 0, 0)
    if sums != struct.unpack(">2I", wal[24:32]):
        return "the write-ahead log's header fails its checksum"
    return _wal_frames_damage(wal, page_size, order, sums)


def _wal_frames_damage(wal: bytes, page_size: int, order: str, sums: tuple[int, int]) -> str | None:
    """The current log ends at the first frame with other salts (left from before
    a checkpoint: SQLite gives each new log new salts, so no frame after the end
    can carry the current ones) or at the first that fails its checksum."""
    salts = wal[16:24]
    frame = FRAME_HEADER + page_size
    count, rest = divmod(len(wal) - WAL_HEADER, frame)
    end: int | None = None  # the first frame not in the log as SQLite replays it
    failed = False
    for i in range(count):
        at = WAL_HEADER + i * frame
        header = wal[at : at + FRAME_HEADER]
        current = header[8:16] == salts
        if end is None:
            if current:
                body = header[:8] + wal[at + FRAME_HEADER : at + frame]
                sums = _wal_checksum(body, order, *sums)
                if sums == struct.unpack(">2I", header[16:24]):
                    continue
                failed = True
            end = i
        elif current:
            what = "fails its checksum" if failed else "has damaged salts"
            return (
                f"write-ahead log frame {end + 1} {what}: frame {i + 1} and any others "
                "written after it in the same log would be lost"
            )
    at = WAL_HEADER + count * frame
    tail = wal[at : at + FRAME_HEADER] if rest >= FRAME_HEADER else b""
    if failed:
        return (
            f"write-ahead log frame {end + 1 if end is not None else 0} fails its checksum: "
            "damage, or a crash while the log's last transaction was written"
        )
    if end is None and tail[8:16] == salts and tail[4:8] != bytes(4):
        return (
            f"the write-ahead log ends {rest} bytes into a commit frame: truncated, or a "
            "crash during that commit's write"
        )
    return None


def _wal_checksum(data: bytes, order: str, s0: int, s1: int) -> tuple[int, int]:
    """SQLite's WAL checksum over ``data`` (a multiple of 8 bytes), continuing ``(s0, s1)``:
    for each pair of 32-bit words x0, x1: s0 += x0 + s1; s1 += x1 + s0 (mod 2**32)."""
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    mask = 0xFFFFFFFF
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & mask
        s1 = (s1 + words[i + 1] + s0) & mask
    return s0, s1


def copy_aside(path: Path, problem: str, wall: float) -> str:
    """Copy the database and its ``-wal``/``-shm`` to ``<name>.corrupt-<UTC time>`` (the
    originals stay, for SQLite to recover what it can); returns where, or why not."""
    target = _aside_name(path, wall)
    try:
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{path}{suffix}")
            if source.exists():
                shutil.copyfile(source, f"{target}{suffix}")
    except OSError as exc:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        log.error("outbox %s is damaged (%s) and could not be copied aside: %s", path, problem, exc)
        return f"(not copied: {exc})"
    log.error(
        "outbox %s is damaged (%s): copied to %s, opening what remains", path, problem, target
    )
    return str(target)


def _aside_name(path: Path, wall: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    return target


def reserve_path(path: Path) -> Path:
    return Path(f"{path}-reserve")


def make_reserve(path: Path, size: int) -> bool:
    """Keep ``size`` bytes of disk beside the database (best effort: not when the
    space is not there). Released on a full disk so that a drain can checkpoint
    the log and delete what it delivered."""
    reserve = reserve_path(path)
    try:
        if reserve.stat().st_size >= size:
            return True
    except OSError:
        pass
    try:
        fd = os.open(reserve, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError:
        reserve.unlink(missing_ok=True)
        return False
    return True


def release_reserve(path: Path) -> bool:
    """Give the reserve's space back to the filesystem; whether there was one."""
    try:
        reserve_path(path).unlink()
    except OSError:
        return False
    log.warning("outbox %s: the disk is full; released its reserve to let a drain proceed", path)
    return True


def migrate(db: sqlite3.Connection) -> None:
    """Create the tables, or bring a schema-1 or -2 file to schema 3 in place.

    A file already at schema 3 is left untouched (but for a counter added
    since): opening writes nothing, so an outbox opens (and can be read and
    drained) on a full disk."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        missing = set(COUNTERS) - {r[0] for r in db.execute("SELECT name FROM counters")}
        for name in sorted(missing):  # a counter added since the file was made
            db.execute("INSERT INTO counters(name, value) VALUES (?, 0)", (name,))
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
    if version == 2:
        rebind(db)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def rebind(db: sqlite3.Connection) -> None:
    """Schema 2 bound a key to :func:`request_fingerprint` alone; schema 3 to
    :func:`binding`, which differs for a request that names its outputs. Such a
    row gets its binding if its body still matches its fingerprint (else it
    keeps the old one, and the drain dead-letters it as ``corrupt``)."""
    for table in ("items", "dead_letters"):
        rows = db.execute(
            f"SELECT seq, model, version, header_length, body, fingerprint FROM {table} "
            "WHERE fingerprint IS NOT NULL AND fingerprint != ''"
        ).fetchall()
        for seq, model, version, length, body, fingerprint in rows:
            try:
                request = decode_request(body, length or None, model, version).request
                matches = request_fingerprint(request) == fingerprint
            except Exception:  # a damaged row: left for the drain to dead-letter
                continue
            if matches and request.outputs is not None:
                db.execute(
                    f"UPDATE {table} SET fingerprint = ? WHERE seq = ?", (binding(request), seq)
                )


def backfill(db: sqlite3.Connection, now: float, wall: float, credit: float) -> None:
    """Fingerprint, context and outbox-time age of items migrated from schema 1."""
    rows = db.execute(
        "SELECT seq, model, version, header_length, body, created FROM items WHERE fingerprint = ''"
    ).fetchall()
    for seq, model, version, length, body, created in rows:
        age = min(max(0.0, wall - created), credit)
        try:
            request = decode_request(body, length or None, model, version).request
            values = (binding(request), request.context.sensitivity.value)
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


def stats(db: sqlite3.Connection) -> dict[str, int]:
    """Pending items, dead letters held, and the counters (``COUNTERS``) of what happened;
    shared by :meth:`Outbox.stats` and the read-only ``edgecloud outbox`` report."""
    counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    dead = int(db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])
    return {"pending": count(db), "dead_letters": dead} | {
        k: int(counters.get(k, 0)) for k in COUNTERS
    }


def quarantines(db: sqlite3.Connection) -> list[tuple[float, str, str]]:
    """Damaged files moved or copied aside: (wall time, path, what was wrong), oldest first."""
    rows = db.execute("SELECT at, path, error FROM quarantines ORDER BY at").fetchall()
    return [(float(at), str(path), str(error)) for at, path, error in rows]


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
