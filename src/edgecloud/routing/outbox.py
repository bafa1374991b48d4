"""A durable store-and-forward outbox: SQLite in WAL mode, ordered, bounded, with TTL.

Work that must reach the remote side while it is unreachable — deferred
escalations, hard examples, telemetry — is written here first and sent later.
Delivery is at least once: an item is deleted only after the server answered
it, so a crash between sending and deleting re-sends it, and the server's
idempotency cache (every item carries a key) turns that into exactly once in
effect. Nothing is dropped silently: a full outbox either rejects the new item
(the caller gets :class:`OutboxFullError`) or drops the oldest, and every drop,
rejection, expiry and permanent failure is counted; permanently failing items
(a 4xx from the server) move to a dead-letter table rather than vanish.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, EdgecloudError, UnavailableError
from ..tensors import InferRequest, RequestContext
from ..wire.rest import decode_request, encode_request
from .fallback import fallback_reason
from .resilience import Backoff

__all__ = ["DrainResult", "Outbox", "OutboxFullError", "OutboxItem"]

FullPolicy = Literal["reject", "drop_oldest"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT,
    header_length INTEGER NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY, key TEXT, kind TEXT, model TEXT, body BLOB, header_length INTEGER,
    error TEXT, failed_at REAL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
COUNTERS = ("delivered", "dropped", "rejected", "expired", "dead_lettered")


class OutboxFullError(UnavailableError):
    """The outbox holds ``max_items`` and its policy is to reject new ones."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    seq: int
    key: str
    kind: str
    model: str
    created: float
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class DrainResult:
    delivered: int
    remaining: int
    stopped_by: str | None
    """Why draining stopped early (the retryable error), None when emptied."""


class Outbox:
    """Ordered, durable queue of requests for the remote side."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_items: int = 10_000,
        ttl_s: float = 7 * 24 * 3600,
        full_policy: FullPolicy = "reject",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_items < 1:
            raise ConfigError("outbox max_items must be at least 1")
        if ttl_s <= 0:
            raise ConfigError("outbox ttl_s must be positive")
        if full_policy not in ("reject", "drop_oldest"):
            raise ConfigError(
                f"outbox full_policy must be reject or drop_oldest, not {full_policy!r}"
            )
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_items = max_items
        self.ttl_s = ttl_s
        self.full_policy = full_policy
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            for name in COUNTERS:
                self._db.execute(
                    "INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", (name,)
                )
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"outbox {self.path} is not a usable SQLite database: {exc}") from exc

    # -- writing ---------------------------------------------------------------

    def put(self, request: InferRequest, *, kind: str = "request") -> str:
        """Store ``request`` durably; returns its idempotency key (given or new)."""
        key = request.context.idempotency_key or uuid.uuid4().hex
        stored = replace(request, context=replace(request.context, idempotency_key=key))
        body, header_length = encode_request(stored, binary=True)
        now = self._clock()
        with self._lock, self._transaction():
            self._expire(now)
            count = self._count()
            full = count >= self.max_items and self.full_policy == "reject"
            if full:
                self._bump("rejected")  # committed: the rejection itself is on record
            else:
                if count >= self.max_items:
                    self._drop_oldest(count - self.max_items + 1)
                self._db.execute(
                    "INSERT OR IGNORE INTO items(key, kind, model, version, header_length, "
                    "body, created, expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, kind, request.model, request.version, header_length or 0, body,
                     now, now + self.ttl_s),
                )  # fmt: skip
        if full:
            raise OutboxFullError(
                f"outbox {self.path} is full ({count} items); the new item was rejected"
            )
        return key

    # -- reading and delivering ------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return self._count()

    def items(self) -> list[OutboxItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, key, kind, model, created, attempts, last_error FROM items "
                "ORDER BY seq"
            ).fetchall()
        return [OutboxItem(*row) for row in rows]

    def stats(self) -> dict[str, int]:
        """Pending items and the counters of what happened to the others."""
        with self._lock:
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            return {"pending": self._count(), **{k: int(counters.get(k, 0)) for k in COUNTERS}}

    def drain(
        self,
        send: Callable[[InferRequest], Any],
        *,
        backoff: Backoff | None = None,
        max_items: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> DrainResult:
        """Send items oldest first; stop at the first retryable failure.

        With ``backoff``, a retryable failure is retried after its delays before
        giving up for now. A non-retryable failure (the server rejects the item
        itself) moves the item to the dead-letter table and draining goes on.
        """
        delivered, attempt = 0, 0
        while max_items is None or delivered < max_items:
            with self._lock:
                self._expire(self._clock())
                row = self._db.execute(
                    "SELECT seq, key, model, version, header_length, body FROM items "
                    "ORDER BY seq LIMIT 1"
                ).fetchone()
            if row is None:
                return DrainResult(delivered, 0, None)
            seq, key, model, version, header_length, body = row
            request = decode_request(body, header_length or None, model, version).request
            request.context = RequestContext(idempotency_key=key)
            try:
                send(request)
            except EdgecloudError as exc:
                if fallback_reason(exc) is None:
                    self._dead_letter(seq, exc.message)
                    continue
                self._failed(seq, exc.message)
                if backoff is None or (
                    backoff.max_tries is not None and attempt + 1 >= backoff.max_tries
                ):
                    return DrainResult(delivered, len(self), exc.message)
                sleep(backoff.delay(attempt))
                attempt += 1
                continue
            attempt = 0
            with self._lock, self._transaction():
                self._db.execute("DELETE FROM items WHERE seq = ?", (seq,))
                self._bump("delivered")
            delivered += 1
        return DrainResult(delivered, len(self), None)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals -------------------------------------------------------------

    def _transaction(self) -> Any:
        db = self._db

        class _Tx:
            def __enter__(self) -> None:
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type: Any, *_: Any) -> None:
                db.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    def _drop_oldest(self, excess: int) -> None:
        self._db.execute(
            "DELETE FROM items WHERE seq IN (SELECT seq FROM items ORDER BY seq LIMIT ?)", (excess,)
        )
        self._bump("dropped", excess)

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def _bump(self, name: str, by: int = 1) -> None:
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))

    def _expire(self, now: float) -> None:
        cursor = self._db.execute("DELETE FROM items WHERE expires <= ?", (now,))
        if cursor.rowcount:
            self._bump("expired", cursor.rowcount)

    def _failed(self, seq: int, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE items SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                (error[:500], seq),
            )

    def _dead_letter(self, seq: int, error: str) -> None:
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT INTO dead_letters(seq, key, kind, model, body, header_length, error, "
                "failed_at) SELECT seq, key, kind, model, body, header_length, ?, ? FROM items "
                "WHERE seq = ?",
                (error[:500], self._clock(), seq),
            )
            self._db.execute("DELETE FROM items WHERE seq = ?", (seq,))
            self._bump("dead_lettered")
