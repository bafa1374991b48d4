"""A durable store-and-forward outbox: SQLite in WAL mode, ordered, bounded, with TTL.

Work that must reach the remote side while it is unreachable — deferred
escalations, hard examples, telemetry — is written here first and sent later.

Delivery is at least once: an item is deleted only after the server answered
it, so a crash between sending and deleting re-sends it, and the server's
idempotency cache (every item carries a key) turns that into exactly once in
effect. Nothing is dropped silently: every drop, rejection, expiry, duplicate
and dead letter is counted, and every counter is committed in the same
transaction as the change it counts.

Promises, one per failure mode of a durable queue:

- **Idempotency keys are bound to the request** as the server binds them.
  Each item stores the :func:`~edgecloud.wire.fingerprint.binding` of its
  request (fingerprint of model, version and inputs, plus the requested
  outputs). A
  ``put`` under a key the outbox holds (pending or dead-lettered) with the
  same fingerprint is a no-op (counted ``duplicates``; the stricter of the two
  contexts is kept); with another fingerprint it raises
  :class:`~edgecloud.errors.IdempotencyKeyReuseError` and stores nothing
  (counted ``key_reuse``). Keys of delivered items are the server's to bind.
- **Privacy survives the queue.** The request context (sensitivity,
  ``local_only``, ``features_only``, key) is stored in columns with the item
  and rebuilt at drain; the drain re-checks it before calling ``send``, and
  ``send`` (a :class:`RemoteBackend`) checks it again. An item whose raw
  tensors may not leave the device — at ``put`` (``why="privacy"`` marks an
  item a guard refused) or at drain — is never sent: it goes to the
  dead-letter table with the reason (counted ``privacy_refused``). The
  request's deadline is not kept: it was for the caller who has moved on.
- **Storage failures are typed.** Every ``sqlite3`` error is translated at
  this boundary: a full disk, an I/O error or a lock raise
  :class:`OutboxStorageError` (an ``UnavailableError``) after the
  transaction is rolled back, so nothing is half-written and every earlier
  item is intact; the outbox works again once space returns.
- **A full disk does not wedge the queue.** Deleting a delivered item needs
  space too (the delete is appended to the write-ahead log; a checkpoint
  writes the log's pages into the database before it can cut the log). So
  the log is bounded (``wal_autocheckpoint``/``journal_size_limit`` of
  :data:`~.outbox_store.WAL_PAGES` pages, fewer on a small filesystem) and a
  reserve file ``<name>-reserve`` (the log's size and a quarter) is made at
  open when the space is there. On SQLITE_FULL the log is checkpointed and
  truncated and the transaction tried again; if the disk is still full and
  the write is the drain's (never a ``put``), the reserve is released and
  both tried once more; it is re-created after a drain once space allows.
  A delete that fails anyway raises :class:`OutboxStorageError` and stops the
  drain; this process never sends that item again: the next drain first
  retries the delete and sends nothing while it fails. (An item larger than
  the reserve can still need more than it holds.)
- **Damage is reported, never silent.** At open, before SQLite reads it, a
  write-ahead log left behind (a crash) is checked when no other process has
  the outbox open (a ``flock`` on ``<name>-lock``): its header, the
  checksum of every frame of the current log, a commit frame cut short, a
  database file emptied beside it. SQLite replays a log only up to its first
  bad frame, so damage there would drop committed items without a word;
  a damaged log is copied with its database to ``<name>.corrupt-<UTC time>``
  and SQLite then recovers what it can. Then ``PRAGMA quick_check`` runs; a
  damaged file (or one that is not a database at all) is moved aside with
  its ``-wal``/``-shm`` to ``<name>.corrupt-<UTC time>`` and a fresh outbox is
  started. Each event is logged as an error and recorded in the database
  (counter ``quarantined``, :meth:`Outbox.quarantines`) and in
  :attr:`Outbox.quarantined`. Damage inside a valid file (a flipped byte in
  a body) passes ``quick_check``: each rebuilt request is checked against
  its stored binding before it is sent, and one that does not match is a
  dead letter ``corrupt`` (counted ``corrupt``), never sent.
- **Time is what the outbox observed.** Items age in *outbox time*:
  seconds accumulated from a monotonic clock that counts suspend
  (``CLOCK_BOOTTIME``), persisted whenever it moved a second or more. A jump of the wall clock
  while the outbox is open (NTP correcting a device that booted with the
  wrong time) changes nothing. Across a restart of the app within one boot,
  the downtime is measured by the same monotonic clock (the boot is named by
  the kernel's ``boot_id``). Across a reboot the wall-clock gap since the
  last write is credited, clamped to ``[0, max_clock_credit_s]`` (default
  half the TTL, at most a day): a wall clock that jumped forward ages the
  queue by at most that much, and one that jumped back by nothing. The rule
  for the monotonic clock, at open and at every reading while open (each
  read and write of the outbox takes one): an interval of it is credited in
  full when it is at most ``max_clock_credit_s`` or when the wall clock
  agrees with it (within 1 % or 60 s, :data:`CLOCK_AGREEMENT`: a long
  suspend); otherwise it is credited ``max_clock_credit_s`` (a monotonic
  clock from another time namespace — ``unshare --time``, a CRIU restore —
  under the same ``boot_id``); one that went back credits nothing. So no
  single clock reading expires every item (two implausible ones in a row can
  age it by ``2 * max_clock_credit_s``, the TTL by default), and an item
  expires after at most ``ttl_s`` of observed time whatever the wall clock
  says. Several
  processes sharing the file take the maximum of their estimates, so time is
  never counted twice.
- **A poison item does not block the queue.** Every outcome of ``send`` is
  classified. An item the server answers with a retryable error of its own
  (a 5xx :class:`InferenceError`, a 409), or whose ``send`` raises an
  exception that is not an edgecloud error (an answer that cannot be
  decoded, a bug in the sender: not a ``ConnectionError`` or
  ``TimeoutError``, which count as a dead link below), is tried again
  after a per-item backoff (``retry_backoff``, in outbox time) while the
  items behind it are sent; after ``max_attempts`` it moves to the dead
  letters with its last error (counted ``poisoned``). A failure that may
  mean the server is unreachable (:class:`UnavailableError`, a timeout, a
  ``ConnectionError``) is checked against the next item: if that one gets an answer, the
  failure was the item's own and costs it an attempt; if it fails too, the
  link is down, the drain stops, and no item loses an attempt (so an item
  alone in the queue that fails this way waits, and at worst expires,
  counted). A 401/403
  stops the drain too (the deployment's credentials are wrong, not the
  items). A refusal for load — a 429 / gRPC RESOURCE_EXHAUSTED
  (:class:`RateLimitedError`), or a 408/425/503 with ``Retry-After`` — is
  the server's state, not the item's: the item costs no attempt, the drain
  stops (the items behind would be refused too), and no queued item is
  tried before the server's ``Retry-After`` (outbox time). Other 4xx answers
  dead-letter the item at once (counted
  ``dead_lettered`` like every dead letter). The dead-letter table is bounded
  by ``max_items`` as well (oldest pruned, counted
  ``dead_letters_dropped``). A row whose stored body or context cannot be
  decoded is a dead letter (``undecodable``), not a blocker; a key the wire
  would refuse is refused at ``put``.

Older outbox files are migrated in place at open. Schema 1 items get the
sensitivity their body carried and ``local_only``/``features_only`` false,
which schema 1 did not record. Schema 2 rows of requests that named their
outputs are re-bound with them (when their body still matches).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    EdgecloudError,
    IdempotencyKeyReuseError,
    InferenceError,
    PermissionDeniedError,
    PrivacyError,
    RateLimitedError,
    UnavailableError,
)
from ..tensors import DEFAULT_CONTEXT, InferRequest, RequestContext, Sensitivity
from ..wire.context import context_parameters, decode_context
from ..wire.fingerprint import binding
from ..wire.rest import decode_request, encode_request
from . import outbox_store as store
from .fallback import fallback_reason
from .outbox_store import OutboxStorageError
from .resilience import Backoff

__all__ = [
    "DeadLetter",
    "DrainResult",
    "Outbox",
    "OutboxFullError",
    "OutboxItem",
    "OutboxStorageError",
]

log = logging.getLogger("edgecloud.outbox")

T = TypeVar("T")
FullPolicy = Literal["reject", "drop_oldest"]
#: Outbox time is persisted when it moved at least this much (seconds), so a
#: drain step that changes nothing else writes nothing (no extra fsync per item).
CLOCK_RESOLUTION_S = 1.0
#: Two clocks agree about an interval when they differ by at most
#: max(seconds, fraction of the interval): NTP slews at most 500 ppm (RFC 5905
#: section 11.3), so a 1 % or 60 s margin covers drift, not a jump.
CLOCK_AGREEMENT = (60.0, 0.01)

#: Request parameters that carry the context on the wire (stored in columns instead).
_CONTEXT_KEYS = frozenset(
    context_parameters(
        RequestContext(
            sensitivity=Sensitivity.RESTRICTED,
            idempotency_key="k",
            local_only=True,
            features_only=True,
        )
    )
) | {"binary_data_output"}


class OutboxFullError(UnavailableError):
    """The outbox holds ``max_items`` and its policy is to reject new ones."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    seq: int
    key: str
    kind: str
    model: str
    created: float
    """Wall-clock time of ``put`` (informational; ageing uses outbox time)."""
    attempts: int
    """Times the server answered this item with a retryable error of its own."""
    last_error: str | None
    sensitivity: Sensitivity = Sensitivity.PUBLIC
    local_only: bool = False
    features_only: bool = False
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: str
    kind: str
    model: str
    reason: str
    """``privacy``, ``rejected`` (a 4xx), ``poisoned`` (max_attempts), ``undecodable``
    or ``corrupt`` (the body no longer matches its stored fingerprint)."""
    error: str
    failed_at: float
    sensitivity: Sensitivity


@dataclass(frozen=True, slots=True)
class DrainResult:
    delivered: int
    remaining: int
    stopped_by: str | None
    """Why draining stopped early (the link-level error), None when emptied."""
    dead_lettered: int = 0
    """Items this drain moved to the dead letters."""
    deferred: int = 0
    """Items this drain left for a later try (their own retryable failure)."""


@dataclass(slots=True)
class _Row:
    seq: int
    key: str
    model: str
    version: str | None
    header_length: int
    body: bytes
    context: RequestContext | str
    """The stored context, or why it could not be decoded."""
    attempts: int
    fingerprint: str = ""


Outcome = Literal[
    "delivered",
    "privacy",
    "rejected",
    "item",
    "ambiguous",
    "stop",
    "wait",
    "undecodable",
    "corrupt",
]


def boot_clock() -> float:
    """Seconds of a monotonic clock that keeps counting while the device sleeps."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()  # pragma: no cover - not Linux


def boot_id() -> str:
    """This boot's identity (Linux ``/proc/sys/kernel/random/boot_id``), or ``""``."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # pragma: no cover - not Linux
        return ""


class Outbox:
    """Ordered, durable queue of requests for the remote side."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_items: int = 10_000,
        ttl_s: float = 7 * 24 * 3600,
        full_policy: FullPolicy = "reject",
        max_attempts: int = 8,
        retry_backoff: Backoff | None = None,
        max_clock_credit_s: float | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = boot_clock,
        boot: Callable[[], str] = boot_id,
    ) -> None:
        """``clock`` is the wall clock (seconds since the epoch); ``monotonic`` the
        clock items age by, and ``boot`` names the boot it counts from (within one
        boot, downtime is measured by it); ``retry_backoff`` spaces the tries of one item
        (default 1 s doubling to 5 min, full jitter); ``max_attempts`` bounds them."""
        _check_settings(max_items, ttl_s, full_policy, max_attempts, max_clock_credit_s)
        self.path = Path(path)
        self.max_items = max_items
        self.ttl_s = ttl_s
        self.full_policy = full_policy
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff or Backoff(base_s=1.0, cap_s=300.0, max_tries=None)
        self.max_clock_credit_s = (
            min(ttl_s / 2, 86_400.0) if max_clock_credit_s is None else max_clock_credit_s
        )
        self._clock = clock
        self._monotonic = monotonic
        self._boot = boot
        self._claims_lock = threading.Lock()
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()
        self.quarantined: Path | None = None
        """Where a corrupt file found at open was moved (or a damaged one copied), or None."""
        self._damage: list[tuple[str, str]] = []
        """(where the damaged files went, what was wrong): recorded at set-up."""
        self._undeleted: set[int] = set()
        """Items delivered whose delete failed (a full disk): deleted before any send."""
        self._reserve_released = False
        self._reserve_size = 0
        self._lock_fd: int | None = None
        self._base_observed = self._base_monotonic = self._base_wall = 0.0
        self._db = self._open()

    # -- writing ---------------------------------------------------------------

    def put(self, request: InferRequest, *, kind: str = "request", why: str | None = None) -> str:
        """Store ``request`` durably with its full context; returns its idempotency key.

        ``why`` is the fallback reason the caller defers for; ``"privacy"``
        (a guard refused the request) marks it local-only, so it is recorded
        as a dead letter and never sent. Raises :class:`OutboxFullError`,
        :class:`IdempotencyKeyReuseError` (the key holds another request) or
        :class:`OutboxStorageError`.
        """
        context = request.context
        if why == "privacy":
            context = replace(context, local_only=True)
        key = context.idempotency_key or uuid.uuid4().hex
        context = replace(context, idempotency_key=key, deadline=None)
        _context_of(key, context.sensitivity.value, 0, 0)  # a key the wire refuses is a 400 now
        fingerprint = binding(request)
        stored = replace(
            request, context=DEFAULT_CONTEXT, parameters=_without_context(request.parameters)
        )
        body, header_length = encode_request(stored, binary=True)
        row = {
            "key": key, "fingerprint": fingerprint, "kind": kind, "model": request.model,
            "version": request.version, "header_length": header_length or 0, "body": body,
            **_context_columns(context),
        }  # fmt: skip

        def insert(db: sqlite3.Connection) -> str:
            now = self._observed(db)
            self._expire(db, now)
            return self._put_row(db, row, context, now)

        outcome = self._write("store an item", insert, reserve=False)
        if outcome == "reuse":
            raise IdempotencyKeyReuseError(
                f"idempotency key {key!r} is already bound to another request in outbox "
                f"{self.path}; use a new key for new work (nothing was stored)"
            )
        if outcome == "full":
            raise OutboxFullError(
                f"outbox {self.path} is full ({self.max_items} items); the new item was rejected"
            )
        return key

    def _put_row(
        self, db: sqlite3.Connection, row: dict[str, Any], context: RequestContext, now: float
    ) -> str:
        bound = store.bound_fingerprint(db, row["key"])
        if bound is not None:
            if bound != row["fingerprint"]:
                store.bump(db, "key_reuse")
                return "reuse"
            store.bump(db, "duplicates")
            store.tighten(db, row["key"], context)
            return "duplicate"
        if not context.may_leave_device:
            self._dead_letter_row(db, row, "privacy", _privacy_error(context), attempts=0)
            return "privacy"
        count = store.count(db)
        if count >= self.max_items:
            if self.full_policy == "reject":
                store.bump(db, "rejected")  # committed: the rejection itself is on record
                return "full"
            store.drop_oldest(db, count - self.max_items + 1)
        db.execute(
            "INSERT INTO items(key, fingerprint, kind, model, version, sensitivity, local_only, "
            "features_only, header_length, body, created, enqueued, next_try) VALUES (:key, "
            ":fingerprint, :kind, :model, :version, :sensitivity, :local_only, :features_only, "
            ":header_length, :body, :created, :now, :now)",
            {**row, "created": self._clock(), "now": now},
        )
        return "stored"

    # -- reading ---------------------------------------------------------------

    def __len__(self) -> int:
        with self._reading("count items") as db:
            return store.count(db)

    def items(self) -> list[OutboxItem]:
        """Pending items, oldest first."""
        with self._reading("list items") as db:
            rows = db.execute(
                "SELECT seq, key, kind, model, created, attempts, last_error, sensitivity, "
                "local_only, features_only, fingerprint FROM items ORDER BY seq"
            ).fetchall()
        return [
            OutboxItem(
                seq=r[0],
                key=r[1],
                kind=r[2],
                model=r[3],
                created=r[4],
                attempts=r[5],
                last_error=r[6],
                sensitivity=store.listed(r[7]),
                local_only=bool(r[8]),
                features_only=bool(r[9]),
                fingerprint=r[10],
            )
            for r in rows
        ]

    def dead_letters(self) -> list[DeadLetter]:
        """Items that will not be sent, oldest first, with why."""
        with self._reading("list dead letters") as db:
            rows = db.execute(
                "SELECT key, kind, model, coalesce(reason, 'rejected'), error, failed_at, "
                "coalesce(sensitivity, 'public') FROM dead_letters ORDER BY seq"
            ).fetchall()
        return [
            DeadLetter(
                key=r[0],
                kind=r[1],
                model=r[2],
                reason=r[3],
                error=r[4],
                failed_at=r[5],
                sensitivity=store.listed(r[6]),
            )
            for r in rows
        ]

    def quarantines(self) -> list[tuple[float, str, str]]:
        """Corrupt files this outbox moved aside: (wall time, path, what was wrong)."""
        with self._reading("list quarantines") as db:
            return store.quarantines(db)

    def stats(self) -> dict[str, int]:
        """Pending items, dead letters held, and the counters of what happened."""
        with self._reading("read counters") as db:
            return store.stats(db)

    # -- delivering ------------------------------------------------------------

    def drain(
        self,
        send: Callable[[InferRequest], Any],
        *,
        backoff: Backoff | None = None,
        max_items: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> DrainResult:
        """Send due items oldest first; stop when the link is down.

        Each due item is tried once per pass. ``backoff`` retries a down link
        within this call (its delays, up to its ``max_tries`` passes); without
        it the drain returns at the first link failure. What happens to an
        item on each kind of failure (including exceptions that are not
        edgecloud errors) is in the module docstring. Raises
        :class:`OutboxStorageError`, and stops there.
        """
        tally = {"delivered": 0, "dead_lettered": 0, "deferred": 0}
        passes, slept = 0, 0.0
        while (stopped := self._drain_pass(send, tally, max_items)) is not None:
            passes += 1
            if backoff is None or (backoff.max_tries is not None and passes >= backoff.max_tries):
                break
            delay = backoff.delay(passes - 1)
            if backoff.max_elapsed_s is not None and slept + delay > backoff.max_elapsed_s:
                break
            sleep(delay)
            slept += delay
        self._keep_reserve()
        return DrainResult(
            delivered=tally["delivered"],
            remaining=len(self),
            stopped_by=stopped,
            dead_lettered=tally["dead_lettered"],
            deferred=tally["deferred"],
        )

    def _drain_pass(
        self,
        send: Callable[[InferRequest], Any],
        tally: dict[str, int],
        max_items: int | None,
    ) -> str | None:
        """One pass over the due items; the link-level error that stopped it, or None.

        Items being sent are claimed, so drains in several threads of one
        process never send the same item twice (across processes, at least once)."""
        self._delete_undeleted(tally)
        cursor, suspect, claimed = 0, None, set()
        try:
            while max_items is None or tally["delivered"] < max_items:
                row = self._next_due(cursor)
                if row is None:
                    break
                cursor = row.seq
                claimed.add(row.seq)
                outcome, error = self._try(send, row)
                if outcome == "stop":
                    return error
                if outcome == "wait":  # the server's load: the items behind get it too
                    return error
                if outcome == "ambiguous":
                    if suspect is not None:
                        return error  # two in a row without an answer: the link is down
                    suspect = (row, error)
                    continue
                answered = outcome in ("delivered", "rejected", "item")
                if suspect is not None and answered:
                    self._item_failed(*suspect, tally)  # the server answers: it was that item's
                    suspect = None
                self._settle(row, outcome, error, tally)
            return suspect[1] if suspect is not None else None
        finally:
            with self._claims_lock:
                self._in_flight -= claimed

    def _try(self, send: Callable[[InferRequest], Any], row: _Row) -> tuple[Outcome, str]:
        if isinstance(row.context, str):
            return "undecodable", row.context
        if not row.context.may_leave_device:
            return "privacy", _privacy_error(row.context)
        try:
            request = _rebuild(row, row.context)
            intact = _intact(request, row.fingerprint)
        except EdgecloudError as exc:
            return "undecodable", f"the stored body cannot be decoded: {exc.message}"
        except Exception as exc:  # a damaged row must not stop the queue either
            return "undecodable", f"the stored body cannot be decoded: {type(exc).__name__}: {exc}"
        if not intact:
            return "corrupt", (
                "corrupt: the stored body no longer matches the fingerprint stored with it "
                f"({row.fingerprint[:16]}…); it was altered on disk and is never sent"
            )
        try:
            send(request)
        except EdgecloudError as exc:
            self._note_error(row.seq, exc.message)
            outcome = _classify(exc)
            if outcome == "wait":
                self._hold(exc)
            return outcome, exc.message
        except Exception as exc:  # every outcome of a send is classified
            message = f"{type(exc).__name__}: {exc}"
            self._note_error(row.seq, message)
            return _classify_unexpected(exc), message
        return "delivered", ""

    def _settle(self, row: _Row, outcome: Outcome, error: str, tally: dict[str, int]) -> None:
        if outcome == "delivered":
            try:
                self._delete_delivered(row.seq)
            except OutboxStorageError:
                self._undeleted.add(row.seq)  # not sent again by this process: see drain
                raise
            tally["delivered"] += 1
        elif outcome == "item":
            self._item_failed(row, error, tally)
        else:  # privacy, rejected, undecodable, corrupt
            self._dead_letter(row.seq, outcome, error, row.attempts)
            tally["dead_lettered"] += 1

    def _delete_delivered(self, seq: int) -> None:

        def delete(db: sqlite3.Connection) -> None:
            if db.execute("DELETE FROM items WHERE seq = ?", (seq,)).rowcount:
                store.bump(db, "delivered")  # not twice if another process was faster

        self._write("delete a delivered item", delete)

    def _delete_undeleted(self, tally: dict[str, int]) -> None:
        """Delete the items delivered earlier whose delete failed; raises the
        storage error (and sends nothing) while that still fails."""
        for seq in sorted(self._undeleted):
            self._delete_delivered(seq)
            self._undeleted.discard(seq)
            tally["delivered"] += 1

    def _item_failed(self, row: _Row, error: str, tally: dict[str, int]) -> None:
        """The server answered this item with a retryable error: back off or give up."""
        attempts = row.attempts + 1
        if attempts >= self.max_attempts:
            self._dead_letter(row.seq, "poisoned", error, attempts)
            tally["dead_lettered"] += 1
            return
        delay = self.retry_backoff.delay(attempts - 1)

        def reschedule(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE items SET attempts = ?, next_try = ?, last_error = ? WHERE seq = ?",
                (attempts, self._observed(db) + delay, error[:500], row.seq),
            )

        self._write("reschedule an item", reschedule)
        tally["deferred"] += 1

    def _hold(self, exc: EdgecloudError) -> None:
        """The server refused for load (:func:`_classify`'s ``"wait"``): no item
        is tried before the server's ``Retry-After`` (it said so of itself, not
        of this item: the queued items wait too); no attempt is counted."""
        delay = getattr(exc, "retry_after_s", None) or 0.0

        def hold(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE items SET next_try = MAX(next_try, ?)", (self._observed(db) + delay,)
            )

        self._write("hold an item until the server's Retry-After", hold)

    def _next_due(self, cursor: int) -> _Row | None:

        def oldest_due(db: sqlite3.Connection) -> Any:
            now = self._observed(db)
            self._expire(db, now)
            return db.execute(
                "SELECT seq, key, model, version, header_length, body, sensitivity, local_only, "
                "features_only, attempts, fingerprint FROM items WHERE seq > ? AND next_try <= ? "
                "ORDER BY seq LIMIT 1",
                (cursor, now),
            ).fetchone()

        while True:
            found = self._write("read the next item", oldest_due)
            if found is None:
                return None
            with self._claims_lock:
                if found[0] not in self._in_flight and found[0] not in self._undeleted:
                    self._in_flight.add(found[0])
                    break
            cursor = found[0]  # another thread of this process is sending it
        seq, key, model, version, length, body, sensitivity, local, features, attempts, bound = (
            found
        )
        try:
            context: RequestContext | str = _context_of(key, sensitivity, local, features)
        except EdgecloudError as exc:  # a row written by hand or damaged: never sent
            context = f"the stored context cannot be decoded: {exc.message}"
        except Exception as exc:  # e.g. a number where text belongs
            context = f"the stored context cannot be decoded: {type(exc).__name__}: {exc}"
        return _Row(seq, key, model, version, length, body, context, attempts, str(bound or ""))

    def _note_error(self, seq: int, error: str) -> None:
        self._write(
            "record an error",
            lambda db: db.execute(
                "UPDATE items SET last_error = ? WHERE seq = ?", (error[:500], seq)
            ),
        )

    def _dead_letter(self, seq: int, reason: str, error: str, attempts: int) -> None:

        def move(db: sqlite3.Connection) -> None:
            moved = db.execute(
                "INSERT INTO dead_letters(item_seq, key, fingerprint, kind, model, version, "
                "sensitivity, local_only, features_only, body, header_length, reason, error, "
                "attempts, failed_at) SELECT seq, key, fingerprint, kind, model, version, "
                "sensitivity, local_only, features_only, body, header_length, ?, ?, ?, ? "
                "FROM items WHERE seq = ?",
                (reason, error[:500], attempts, self._clock(), seq),
            ).rowcount
            if moved:  # not twice if another process was faster
                db.execute("DELETE FROM items WHERE seq = ?", (seq,))
                self._after_dead_letter(db, reason)

        self._write("move an item to the dead letters", move)

    def _dead_letter_row(
        self, db: sqlite3.Connection, row: dict[str, Any], reason: str, error: str, attempts: int
    ) -> None:
        db.execute(
            "INSERT INTO dead_letters(key, fingerprint, kind, model, version, sensitivity, "
            "local_only, features_only, body, header_length, reason, error, attempts, failed_at) "
            "VALUES (:key, :fingerprint, :kind, :model, :version, :sensitivity, :local_only, "
            ":features_only, :body, :header_length, :reason, :error, :attempts, :at)",
            {**row, "reason": reason, "error": error, "attempts": attempts, "at": self._clock()},
        )
        self._after_dead_letter(db, reason)

    def _after_dead_letter(self, db: sqlite3.Connection, reason: str) -> None:
        store.bump(db, "dead_lettered")
        if reason == "poisoned":
            store.bump(db, "poisoned")
        elif reason == "privacy":
            store.bump(db, "privacy_refused")
        elif reason == "corrupt":
            store.bump(db, "corrupt")
        (held,) = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        if held > self.max_items:
            db.execute(
                "DELETE FROM dead_letters WHERE seq IN "
                "(SELECT seq FROM dead_letters ORDER BY seq LIMIT ?)",
                (held - self.max_items,),
            )
            store.bump(db, "dead_letters_dropped", held - self.max_items)

    def close(self) -> None:
        """Persist outbox time (best effort: not on a full disk) and close the file."""
        with contextlib.suppress(OutboxStorageError):
            self._write("record the time", self._observed)
        with self._lock:
            self._db.close()
            store.unlock(self._lock_fd)
            self._lock_fd = None

    # -- time ------------------------------------------------------------------

    def _observed(self, db: sqlite3.Connection) -> float:
        """Outbox time now (see the module docstring), persisted in ``db``'s transaction."""
        estimate = self._tick()
        (stored,) = db.execute("SELECT observed_s FROM clock WHERE id = 0").fetchone()
        now = max(float(stored), estimate)
        if now >= stored + CLOCK_RESOLUTION_S:  # a read-only transaction costs no fsync
            db.execute(
                "UPDATE clock SET observed_s = ?, wall_s = ?, boot_id = ?, monotonic_s = ? "
                "WHERE id = 0",
                (now, self._clock(), self._boot(), self._monotonic()),
            )
        return now

    def _tick(self) -> float:
        """Advance the in-memory outbox time by one plausible reading of the clocks
        (every read and write takes one, under the lock); returns it."""
        monotonic, wall = self._monotonic(), self._clock()
        self._base_observed += self._plausible(
            monotonic - self._base_monotonic, wall - self._base_wall
        )
        self._base_monotonic, self._base_wall = monotonic, wall
        return self._base_observed

    def _start_clock(self, db: sqlite3.Connection) -> None:
        """Outbox time at open: the stored time plus the downtime since the last write,
        measured by the monotonic clock within one boot, else by the wall clock, bounded."""
        wall, boot, monotonic = self._clock(), self._boot(), self._monotonic()
        row = db.execute(
            "SELECT observed_s, wall_s, boot_id, monotonic_s FROM clock WHERE id = 0"
        ).fetchone()
        if row is None:
            row = (0.0, wall, boot, monotonic)
            db.execute(
                "INSERT INTO clock(id, observed_s, wall_s, boot_id, monotonic_s) "
                "VALUES (0, ?, ?, ?, ?)",
                row,
            )
        stored, last_wall, last_boot, last_monotonic = row
        gap = wall - float(last_wall)
        if (
            boot
            and boot == last_boot
            and last_monotonic is not None
            and monotonic >= last_monotonic
        ):  # the same boot: measured, if plausible (another time namespace is not)
            credit = self._plausible(monotonic - float(last_monotonic), gap)
        else:
            credit = min(max(0.0, gap), self.max_clock_credit_s)
        # Not written back here: opening writes nothing (a full disk can still be
        # opened); the next write persists it, and until then a second open
        # derives the same credit from the same stored row.
        self._base_observed = float(stored) + credit
        self._base_monotonic, self._base_wall = monotonic, wall

    def _plausible(self, measured: float, wall_gap: float) -> float:
        """Seconds to credit for ``measured`` seconds of the monotonic clock while the
        wall clock moved ``wall_gap``: all of them when at most ``max_clock_credit_s``
        or when the two clocks agree (within ``CLOCK_AGREEMENT``), else
        ``max_clock_credit_s``; nothing for a clock that went back."""
        if measured <= self.max_clock_credit_s:
            return max(0.0, measured)
        tolerance = max(CLOCK_AGREEMENT[0], CLOCK_AGREEMENT[1] * measured)
        if abs(wall_gap - measured) <= tolerance:
            return measured
        return self.max_clock_credit_s

    def _expire(self, db: sqlite3.Connection, now: float) -> None:
        cursor = db.execute("DELETE FROM items WHERE enqueued <= ?", (now - self.ttl_s,))
        if cursor.rowcount:
            store.bump(db, "expired", cursor.rowcount)

    # -- storage ---------------------------------------------------------------

    def _write(
        self, action: str, body: Callable[[sqlite3.Connection], T], *, reserve: bool = True
    ) -> T:
        """``body`` in one transaction. On SQLITE_FULL the write-ahead log is
        checkpointed and truncated (giving its space back) and ``body`` tried once
        more; if the disk is still full and ``reserve`` (every write but a new
        item's), the reserve file is released and both tried once more."""
        try:
            with self._transaction(action) as db:
                return body(db)
        except OutboxStorageError as exc:
            if not store.disk_full(exc):
                raise
        self._checkpoint()
        try:
            with self._transaction(action) as db:
                return body(db)
        except OutboxStorageError as exc:
            if not (reserve and store.disk_full(exc) and store.release_reserve(self.path)):
                raise
        self._reserve_released = True
        self._checkpoint()
        with self._transaction(action) as db:
            return body(db)

    def _checkpoint(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _keep_reserve(self) -> None:
        """Re-create the reserve once space allows (after a drain freed some)."""
        if self._reserve_released and store.make_reserve(self.path, self._reserve_size):
            self._reserve_released = False

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` under the lock; rolled back on any error."""
        with self._lock, self._translated(action):
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._translated(action):
            self._tick()
            yield self._db

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise store.storage_error(self.path, action, exc) from exc

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxStorageError(
                f"outbox {self.path}: cannot create its directory: {exc}"
            ) from exc
        self._lock_fd, alone = store.lock_file(self.path)
        try:
            db = self._open_checked(alone)
            self._db = db
            self._reserve_size, _ = store.tune(db, self.path)
            self._write("set up its tables", self._set_up)
        except BaseException:
            store.unlock(self._lock_fd)
            raise
        if self._lock_fd is not None and alone:
            store.share(self._lock_fd)
        store.make_reserve(self.path, self._reserve_size)
        return db

    def _open_checked(self, alone: bool) -> sqlite3.Connection:
        """Check the log (when nobody else has the file open) and the database; a
        damaged log is copied aside, a corrupt database moved aside; both recorded."""
        damaged = store.wal_damage(self.path) if alone else None
        if damaged is not None:
            where = store.copy_aside(self.path, damaged, self._clock())
            self._damage.append((where, damaged))
            if not where.startswith("("):
                self.quarantined = Path(where)
        problem, db = store.open_checked(self.path)
        if problem is not None:
            self.quarantined = store.quarantine(self.path, problem, self._clock())
            self._damage.append((str(self.quarantined), problem))
            _, db = store.open_checked(self.path)
        assert db is not None
        return db

    def _set_up(self, db: sqlite3.Connection) -> None:
        store.migrate(db)
        self._start_clock(db)
        for where, problem in self._damage:
            db.execute(
                "INSERT INTO quarantines(at, path, error) VALUES (?, ?, ?)",
                (self._clock(), where, problem),
            )
            store.bump(db, "quarantined")
        store.backfill(db, self._base_observed, self._clock(), self.max_clock_credit_s)


# -- helpers -------------------------------------------------------------------


def _check_settings(
    max_items: int,
    ttl_s: float,
    full_policy: str,
    max_attempts: int,
    max_clock_credit_s: float | None,
) -> None:
    if max_items < 1:
        raise ConfigError("outbox max_items must be at least 1")
    if ttl_s <= 0:
        raise ConfigError("outbox ttl_s must be positive")
    if full_policy not in ("reject", "drop_oldest"):
        raise ConfigError(f"outbox full_policy must be reject or drop_oldest, not {full_policy!r}")
    if max_attempts < 1:
        raise ConfigError("outbox max_attempts must be at least 1")
    if max_clock_credit_s is not None and max_clock_credit_s < 0:
        raise ConfigError("outbox max_clock_credit_s must be >= 0")


def _classify(exc: EdgecloudError) -> Outcome:
    """What a failure of ``send`` says about the item (see the module docstring)."""
    if isinstance(exc, PrivacyError):
        return "privacy"
    if isinstance(exc, AuthenticationError | PermissionDeniedError):
        return "stop"
    if isinstance(exc, RateLimitedError) or (
        isinstance(exc, UnavailableError) and exc.retry_after_s is not None
    ):
        return "wait"
    if isinstance(exc, InferenceError | ConflictError):
        return "item"
    if fallback_reason(exc) is None:
        return "rejected"
    return "ambiguous"


def _classify_unexpected(exc: Exception) -> Outcome:
    """A ``send`` that raised something other than an edgecloud error: a socket
    that failed or timed out, or a name that did not resolve, may mean the link
    is down (checked against the next item); anything else (an answer that
    cannot be decoded, a bug in the sender) is this item's own failure and
    costs it an attempt."""
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return "ambiguous"
    return "item"


def _intact(request: InferRequest, fingerprint: str) -> bool:
    """Whether a rebuilt request is the one stored (model, version, inputs, outputs)."""
    return binding(request) == fingerprint


def _rebuild(row: _Row, context: RequestContext) -> InferRequest:
    request = decode_request(row.body, row.header_length or None, row.model, row.version).request
    return replace(request, parameters=_without_context(request.parameters), context=context)


def _without_context(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in parameters.items() if k not in _CONTEXT_KEYS}


def _context_columns(context: RequestContext) -> dict[str, Any]:
    return {
        "sensitivity": context.sensitivity.value,
        "local_only": int(context.local_only),
        "features_only": int(context.features_only),
    }


def _context_of(key: str, sensitivity: str, local: int, features: int) -> RequestContext:
    """The stored context, through the one context decoder (an unknown value is an error)."""
    decoded = decode_context({"sensitivity": sensitivity, "idempotency_key": key})
    return replace(decoded, local_only=bool(local), features_only=bool(features))


def _privacy_error(context: RequestContext) -> str:
    rule = "guard: local only" if context.local_only else "guard: features only"
    if context.sensitivity is Sensitivity.RESTRICTED:
        rule = "restricted"
    return (
        f"privacy: {context.sensitivity.value} data ({rule}) may not leave the device; "
        "the outbox never sends it"
    )
