"""Reading an outbox file for ``edgecloud outbox``, strictly read-only.

An inspection command must never change what it inspects: opening the file
through :class:`~edgecloud.routing.outbox.Outbox` would migrate it, start its
clock, and move a file that is not an outbox aside (quarantine). Here the
file is first checked to be an SQLite database (its 16-byte header is
``SQLite format 3\\0``, https://www.sqlite.org/fileformat.html#the_database_header),
then opened with ``mode=ro`` and checked to hold the outbox's tables; only
then are the counters read (as ``immutable`` when no ``-wal`` file shows a
writer, so not even ``-wal``/``-shm`` files appear). Anything else is a ConfigError and the file is
left as it was.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ._config_files import checked_path, path_error
from .errors import ConfigError
from .routing import outbox_store as store

__all__ = ["OutboxReport", "read_outbox"]

SQLITE_HEADER = b"SQLite format 3\x00"
#: Tables every outbox file has (schema 1 and 2).
TABLES = frozenset({"items", "dead_letters", "counters"})


@dataclass
class OutboxReport:
    """What an outbox file holds: counters, dead letters by reason, quarantines."""

    stats: dict[str, int]
    dead_reasons: dict[str, int] = field(default_factory=dict)
    quarantines: list[tuple[float, str, str]] = field(default_factory=list)


def read_outbox(path: Path) -> OutboxReport:
    """The report for the outbox at ``path``; ConfigError (file untouched) if it is not one."""
    checked_path(path, "file", "outbox file")
    try:
        with path.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise path_error(path, "file", "outbox file", exc) from exc
    if header != SQLITE_HEADER:
        raise ConfigError(f"{path} is not an outbox: not an SQLite database; left untouched")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    if not path.with_name(path.name + "-wal").exists():
        # No process has it open in WAL mode: read it as immutable, so that SQLite
        # does not create -wal/-shm files beside it (mode=ro alone would).
        uri += "&immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            return _report(db, path)
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: cannot read it as an outbox: {exc}; left untouched") from exc


def _report(db: sqlite3.Connection, path: Path) -> OutboxReport:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables >= TABLES:
        raise ConfigError(
            f"{path} is an SQLite database but not an outbox (it lacks the tables "
            f"{', '.join(sorted(TABLES - tables))}); left untouched"
        )
    problem = db.execute("PRAGMA quick_check").fetchone()[0]
    if problem != "ok":
        raise ConfigError(
            f"outbox {path} is corrupt ({problem}); opening it from the app moves it aside"
        )
    stats = store.stats(db)
    columns = {r[1] for r in db.execute("PRAGMA table_info(dead_letters)")}
    reason = "coalesce(reason, 'rejected')" if "reason" in columns else "'rejected'"
    reasons = dict(db.execute(f"SELECT {reason}, COUNT(*) FROM dead_letters GROUP BY 1"))
    quarantines = store.quarantines(db) if "quarantines" in tables else []
    return OutboxReport(stats, {str(k): int(v) for k, v in reasons.items()}, quarantines)
