"""Durable idempotency: an answer per ``(model, key)``, bound to its request's fingerprint.

The promise (with the outbox's at-least-once delivery): a request re-sent
under the same ``Idempotency-Key`` is computed once, also when the server
crashed or restarted in between, for ``idempotency_window_s`` (default 7
days, the outbox's default item TTL, so an item can never outlive the record
that makes its re-send harmless).

How (IETF httpapi Idempotency-Key draft, draft-ietf-httpapi-idempotency-key-header):

- A key is bound to the fingerprint of the first request that used it
  (:func:`~edgecloud.wire.fingerprint.request_fingerprint`: sha256 of model,
  version and canonical inputs, plus the requested output names). The same
  key with another payload is :class:`IdempotencyKeyReuseError` (422 / gRPC
  FAILED_PRECONDITION) naming the key; the same key with the same payload
  replays the stored answer (``"idempotent_replay": true``).
- Keys are scoped per model: ``(model, key)``. The same key on two models is
  two records, because the product derives requests for several models from
  one caller request (a cascade's small and large model, a split's tails).
- The answer is committed to SQLite (WAL) *before* it is sent, so a crash
  after sending cannot lose the record. ``synchronous=FULL`` by default: a
  commit also survives an OS crash or power loss (about 0.4 ms of fsync per
  keyed answer on this project's CI disk); ``normal`` survives a killed
  process only (15 µs). Writes run on a thread of their own, never on the
  event loop; a lookup (about 5 µs, on a WAL reader connection of its own
  that never waits for a commit) runs inline.
- One arbiter: a keyed request that finds no answer first *claims* the key
  in the store — one ``BEGIN IMMEDIATE`` transaction that inserts
  ``(model, key, fingerprint, owner, pid)`` into ``claims`` unless the key is
  answered or claimed (about 65 µs here, ``synchronous=NORMAL``: a claim
  lost to power loss went with the process computing it). Exactly one claim
  wins, also between several processes sharing one store file; the key is
  bound to its fingerprint. In this process the in-flight table and the
  claim agree: the store is read and the slot taken in one step of the event
  loop, and every request under the key — the first included — is compared
  with the fingerprint the claim bound (the first registered one, or another
  process's). Every request with that fingerprint gets the one answer,
  computed once; every other gets 422.
- Concurrent requests with the same key and fingerprint share one
  computation (the draft would answer the later ones 409; sharing is as
  exactly-once and saves the client a retry). The computation runs as a
  task of its own, so a caller that disconnects does not cancel it, nor
  does the server's request timeout: that bounds the caller's wait (504),
  while the computation runs to its end and its answer is stored, so a
  retry while it runs shares it and one after it gets the replay — one
  computation however often a timed-out caller re-sends (``ModelHost.infer``).
  In
  another process sharing the file, such requests wait for the claimant's
  stored answer (looked at every few ms, at most every :data:`POLL_MAX_S`)
  and replay it; if the claimant drops its claim without an answer (its
  computation failed) or is gone, they get a retryable 503.
- Failures are not stored: a computation that fails drops its claim, so a
  retry computes again. A claim whose process is gone (its pid is not
  running on this host) or older than the request timeout plus
  :data:`CLAIM_GRACE_S` is taken over by the next request, so a server
  killed mid-computation sent no answer and the retry's computation is the
  only one anyone sees — once in effect. An answer that comes after its
  claim was taken over is sent but not stored (the key is the new
  claimant's).
- Limits of the cross-process arbiter: processes must share the file on one
  host (SQLite's locks do not hold on network file systems, and a pid means
  nothing on another host); an exited process that its parent has not
  reaped (a zombie) still counts as running, so its claim holds until it is
  stale; two stores that one process opens on one file take over each
  other's claims instead of waiting (each shares only its own in-flight
  work) — a server or gateway opens one; and a computation that outlives
  the request timeout plus :data:`CLAIM_GRACE_S` may be taken over (so
  computed again) by another process sharing the file.
- Bounded: ``max_entries`` answers and ``max_bytes`` of encoded answers.
  Expired records go first; when unexpired ones must go to make room, the
  oldest go, counted in ``edgecloud_idempotency_evictions_total``
  and logged, because a re-send of those is computed again.
- A store that cannot be opened or written (full disk, read-only
  directory, corrupt file) refuses keyed requests with 503
  (:class:`UnavailableError`, retryable: an outbox keeps the item) instead of
  computing without the promise; unkeyed requests are served as usual. Each
  refusal is counted in ``edgecloud_idempotency_store_errors_total`` and the
  store is reopened at most every few seconds, so the server recovers when
  the disk does.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from ..errors import IdempotencyKeyReuseError, UnavailableError
from ..tensors import InferRequest, InferResponse, Span, Trace
from ..wire.fingerprint import binding
from ..wire.rest import DecodedRequest, decode_response, encode_response
from .metrics import ServerMetrics

__all__ = [
    "Claim",
    "IdempotencyStore",
    "IdempotentRunner",
    "StoredAnswer",
    "default_store_path",
    "state_dir",
]

_T = TypeVar("_T")
_Answer = tuple[str, str, str, InferResponse]
"""``(model, key, fingerprint, response)``, as stored."""

log = logging.getLogger("edgecloud.server")

MEMORY = ":memory:"
"""``idempotency_db`` value that keeps answers in this process only (tests)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    model TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    served_by TEXT NOT NULL,
    header_length INTEGER,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (model, key)
);
CREATE INDEX IF NOT EXISTS answers_created ON answers(created);
CREATE TABLE IF NOT EXISTS claims (
    model TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    owner TEXT NOT NULL,
    pid INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (model, key)
);
"""

#: Seconds between attempts to reopen a store that failed.
REOPEN_EVERY_S = 5.0
#: Seconds between sweeps of expired records.
SWEEP_EVERY_S = 1.0
#: Seconds past the request timeout before a claim of a live process is taken
#: over: time for its answer's commit (an fsync, an eviction) after computing.
CLAIM_GRACE_S = 5.0
#: Longest pause between two looks at an answer another process is computing.
POLL_MAX_S = 0.05
#: Requests with more tensor bytes than this are fingerprinted off the event loop.
INLINE_FINGERPRINT_BYTES = 256 * 1024


def state_dir() -> Path:
    """Where edgecloud keeps state that outlives a process: ``$EDGECLOUD_STATE_DIR``,
    else ``$XDG_STATE_HOME/edgecloud``, else ``~/.local/state/edgecloud`` (XDG Base
    Directory spec's default for state data)."""
    explicit = os.environ.get("EDGECLOUD_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "edgecloud"


def default_store_path(serving: Path) -> Path:
    """The store of whatever serves ``serving`` (a model repository or a deployment
    file): ``<state dir>/idempotency/<name>-<sha256 of its absolute path, 16 hex>.db``.

    Not inside the repository: serving leaves the repository untouched (it may be
    read-only, or replaced by an update), and a restart on the same repository
    finds the same store.

    Shared by design: every server of the same repository — a restart, the
    workers of one run, two servers at once — answers a key with the one stored
    answer (the store's claims arbitrate between processes). Nothing that belongs
    to one serve run is kept beside it: the explicit model-control set lives in
    memory or in the run's private directory (:mod:`.model_control`); the fleet
    telemetry store (:func:`~.fleet_telemetry.default_fleet_db`) is durable fleet
    state, shared the same way and idempotent by event id.
    """
    where = str(serving.resolve())
    digest = hashlib.sha256(where.encode()).hexdigest()[:16]
    return state_dir() / "idempotency" / f"{serving.name or 'root'}-{digest}.db"


#: Seconds an open of the store retries while another process holds the lock it
#: needs (several workers starting at once); then the store is unusable (503s).
OPEN_RETRY_S = 10.0


@dataclass(frozen=True, slots=True)
class Claim:
    """What :meth:`IdempotencyStore.claim` found under ``(model, key)``.

    ``kind``: ``"ours"`` (this store now holds the key for ``fingerprint``:
    compute, then :meth:`~IdempotencyStore.put` or
    :meth:`~IdempotencyStore.release`), ``"answered"`` (``answer`` is stored),
    or ``"pending"`` (another live process is computing ``fingerprint``).
    """

    kind: Literal["ours", "answered", "pending"]
    fingerprint: str
    answer: StoredAnswer | None = None
    created: float = 0.0


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """A stored answer and the fingerprint of the request it answered."""

    fingerprint: str
    response: InferResponse
    created: float
    """Wall-clock seconds (``time.time()``) when it was stored."""


class IdempotencyStore:
    """Answers by ``(model, key)`` in SQLite (WAL), bounded, with a time window.

    Synchronous and short: :class:`IdempotentRunner` calls :meth:`get` on the
    event loop (a read-only WAL connection of its own, ~5 µs) and
    :meth:`put_many` on a thread of its own (a commit waits for an fsync).
    Raises ``sqlite3.Error`` (OperationalError for a full disk or a
    read-only file); the runner turns those into 503s.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        window_s: float,
        max_entries: int,
        max_bytes: int,
        synchronous: Literal["full", "normal"] = "full",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = str(path)
        self.window_s = window_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._last_sweep = -float("inf")
        self.evicted_expired = 0
        self.evicted_unexpired = 0
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex}"
        """This store object's name on the claims it makes (one per process start)."""
        self._synchronous = synchronous.upper()
        # Workers of one server open the file at the same instant: switching it to
        # WAL and creating the schema need a lock SQLite may refuse at once
        # ("database is locked") without calling the busy handler, so the open is
        # tried again for up to OPEN_RETRY_S before the store is called unusable.
        deadline = time.monotonic() + OPEN_RETRY_S
        while True:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                self._db.execute("PRAGMA busy_timeout=5000")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
                self._db.executescript(SCHEMA)
                count, size = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM answers"
                ).fetchone()
                break
            except sqlite3.OperationalError as exc:
                self._db.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            except sqlite3.Error:
                self._db.close()
                raise
        self.entries, self.bytes = int(count), int(size)
        self._reader, self._read_lock = self._db, self._lock
        if self.path != MEMORY:  # WAL: a reader of its own never waits for a commit
            self._reader = sqlite3.connect(self.path, check_same_thread=False)
            self._reader.execute("PRAGMA busy_timeout=1000")
            self._reader.execute("PRAGMA query_only=1")
            self._read_lock = threading.Lock()

    def get(self, model: str, key: str) -> StoredAnswer | None:
        """The unexpired answer stored under ``(model, key)``, or None."""
        with self._read_lock:
            row = self._reader.execute(
                "SELECT fingerprint, served_by, header_length, body, created FROM answers "
                "WHERE model = ? AND key = ? AND created > ?",
                (model, key, self._clock() - self.window_s),
            ).fetchone()
        return None if row is None else _stored(row)

    def claim(self, model: str, key: str, fingerprint: str, *, stale_after_s: float) -> Claim:
        """Bind ``(model, key)`` to ``fingerprint`` unless it is answered or claimed.

        One write transaction (``BEGIN IMMEDIATE``: processes sharing the file
        take turns), so of any number of processes and requests exactly one
        claim wins; the others see its fingerprint. A claim by another store
        is taken over when its process is gone (its pid is not running on this
        host, or is this process, which that store did not outlive) or it is
        older than ``stale_after_s`` (the request timeout: its computation
        cannot still be running). Committed with ``synchronous=NORMAL``: a
        claim lost to power loss was lost with the process computing it.
        """
        now = self._clock()
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                claim = self._claim(model, key, fingerprint, stale_after_s, now)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            finally:
                self._db.execute(f"PRAGMA synchronous={self._synchronous}")
        return claim

    def _claim(
        self, model: str, key: str, fingerprint: str, stale_after_s: float, now: float
    ) -> Claim:
        row = self._db.execute(
            "SELECT fingerprint, served_by, header_length, body, created FROM answers "
            "WHERE model = ? AND key = ? AND created > ?",
            (model, key, now - self.window_s),
        ).fetchone()
        if row is not None:
            answer = _stored(row)
            return Claim("answered", answer.fingerprint, answer, answer.created)
        held = self._db.execute(
            "SELECT fingerprint, owner, pid, created FROM claims WHERE model = ? AND key = ?",
            (model, key),
        ).fetchone()
        if held is not None and held[1] != self.owner:
            bound, _, pid, created = held
            if now - float(created) < stale_after_s and _running_elsewhere(int(pid)):
                return Claim("pending", str(bound), None, float(created))
            log.warning(
                "idempotency key %r of model %r: taking over the claim of process %d "
                "(%s), which is gone or older than %g s",
                key,
                model,
                pid,
                held[1],
                stale_after_s,
            )
        self._db.execute(
            "INSERT OR REPLACE INTO claims(model, key, fingerprint, owner, pid, created) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (model, key, fingerprint, self.owner, os.getpid(), now),
        )
        return Claim("ours", fingerprint, None, now)

    def claimant(self, model: str, key: str) -> tuple[str, float, bool] | None:
        """``(fingerprint, created, its process is running)`` of the claim on
        ``(model, key)``, or None (on the reader connection, microseconds)."""
        with self._read_lock:
            row = self._reader.execute(
                "SELECT fingerprint, pid, created FROM claims WHERE model = ? AND key = ?",
                (model, key),
            ).fetchone()
        if row is None:
            return None
        return str(row[0]), float(row[2]), _running(int(row[1]))

    def release(self, model: str, key: str) -> None:
        """Drop this store's claim on ``(model, key)`` (its computation failed)."""
        with self._lock:
            self._db.execute(
                "DELETE FROM claims WHERE model = ? AND key = ? AND owner = ?",
                (model, key, self.owner),
            )

    def put(self, model: str, key: str, fingerprint: str, response: InferResponse) -> int:
        """Store one answer; see :meth:`put_many`."""
        return self.put_many([(model, key, fingerprint, response)])

    def put_many(self, answers: list[tuple[str, str, str, InferResponse]]) -> int:
        """Store ``(model, key, fingerprint, response)`` answers in one transaction,
        committed before returning (one fsync for all: group commit); returns how
        many unexpired records were evicted to make room.

        A record already under ``(model, key)`` is replaced (it expired, or
        another process sharing the file answered the same request), unless
        another store holds a claim on the key (it took over this store's
        claim: this answer came later than the request timeout) — then this
        answer is not stored. The store's own claim is dropped with the commit.
        """
        rows = []
        for model, key, fingerprint, response in answers:
            decoded = DecodedRequest(InferRequest(response.model, {}), all_binary=True)
            body, header_length = encode_response(response, decoded)
            rows.append((model, key, fingerprint, response.trace.served_by, header_length, body))
        now = self._clock()
        evicted = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._sweep(now)
                for row in rows:
                    evicted += self._insert(row, now)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLITE_FULL may have rolled back already
                    self._db.execute("ROLLBACK")
                self._recount()
                raise
        return evicted

    def _insert(self, row: tuple[str, str, str, str, int | None, bytes], now: float) -> int:
        model, key, body = row[0], row[1], row[5]
        holder = self._db.execute(
            "SELECT owner FROM claims WHERE model = ? AND key = ?", (model, key)
        ).fetchone()
        if holder is not None:
            if holder[0] != self.owner:  # taken over: the key is theirs now
                return 0
            self._db.execute("DELETE FROM claims WHERE model = ? AND key = ?", (model, key))
        old = self._db.execute(
            "DELETE FROM answers WHERE model = ? AND key = ? RETURNING length(body)", (model, key)
        ).fetchone()
        if old is not None:
            self.entries -= 1
            self.bytes -= int(old[0])
        evicted = self._make_room(len(body))
        self._db.execute(
            "INSERT INTO answers(model, key, fingerprint, served_by, header_length, body, "
            "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*row, now),
        )
        self.entries += 1
        self.bytes += len(body)
        return evicted

    def __len__(self) -> int:
        return self.entries

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()

    # -- internals -------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        """Delete expired records (at most once per SWEEP_EVERY_S)."""
        if now - self._last_sweep < SWEEP_EVERY_S:
            return
        self._last_sweep = now
        horizon = now - self.window_s
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM answers WHERE created <= ?",
            (horizon,),
        ).fetchone()
        self._db.execute("DELETE FROM claims WHERE created <= ?", (horizon,))
        if count:
            self._db.execute("DELETE FROM answers WHERE created <= ?", (horizon,))
            self.entries -= int(count)
            self.bytes -= int(size)
            self.evicted_expired += int(count)

    def _make_room(self, size: int) -> int:
        """Evict the oldest records until one more answer of ``size`` bytes fits."""
        evicted = 0
        while self.entries and (
            self.entries + 1 > self.max_entries or self.bytes + size > self.max_bytes
        ):
            excess = max(1, self.entries + 1 - self.max_entries)
            rows = self._db.execute(
                "SELECT rowid, length(body) FROM answers ORDER BY created LIMIT ?", (excess,)
            ).fetchall()
            if not rows:
                break
            self._db.executemany("DELETE FROM answers WHERE rowid = ?", [(r[0],) for r in rows])
            self.entries -= len(rows)
            self.bytes -= sum(int(r[1]) for r in rows)
            evicted += len(rows)
        self.evicted_unexpired += evicted
        return evicted

    def _recount(self) -> None:
        try:
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM answers"
            ).fetchone()
            self.entries, self.bytes = int(count), int(size)
        except sqlite3.Error:
            pass


@dataclass(slots=True)
class _InFlight:
    bound: asyncio.Future[tuple[str, str]]
    """``(fingerprint, when)``: what the key is bound to, once the store's claim
    says (the first registered request's, or one another process bound)."""
    task: asyncio.Future[tuple[InferResponse, bool]]
    """The answer to the bound fingerprint, and whether it was computed here."""


class IdempotentRunner:
    """The async front of the store: in-flight sharing, 422s, 503s, metrics.

    ``open_store`` builds the store (at :meth:`open`, and again at most every
    :data:`REOPEN_EVERY_S` after a failure); its errors and those of the
    store's calls are answered with :class:`UnavailableError`.
    """

    def __init__(
        self,
        open_store: Callable[[], IdempotencyStore],
        *,
        describe: str,
        metrics: ServerMetrics,
        stale_after_s: float = 30.0 + CLAIM_GRACE_S,
    ) -> None:
        self._open_store = open_store
        self.describe = describe
        self.metrics = metrics
        self.stale_after_s = stale_after_s
        """Age after which another process's claim is taken over (see
        :meth:`IdempotencyStore.claim`): the request timeout plus :data:`CLAIM_GRACE_S`."""
        self._claims = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecloud-claim")
        self._closing = False
        self.store: IdempotencyStore | None = None
        self.error: str | None = "not opened yet"
        self._opened_at = -float("inf")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecloud-idem")
        self._inflight: dict[tuple[str, str], _InFlight] = {}
        self._pending: list[tuple[_Answer, asyncio.Future[int]]] = []
        self._pending_lock = threading.Lock()
        self._flushing = False

    def open(self) -> None:
        """Open the store now (at startup); a failure is logged, not raised."""
        self._opened_at = time.monotonic()
        try:
            self.store = self._open_store()
            self.error = None
        except (sqlite3.Error, OSError) as exc:
            self.store = None
            self.error = f"{type(exc).__name__}: {exc}"
            log.error(
                "idempotency store %s is unusable (%s): requests with an idempotency key get "
                "503 until it is fixed (free disk space, fix permissions, or set "
                "EDGECLOUD_SERVER_IDEMPOTENCY_DB)",
                self.describe,
                self.error,
            )

    async def run(
        self, request: InferRequest, compute: Callable[[], Awaitable[InferResponse]]
    ) -> InferResponse:
        """The stored answer to ``request`` (its key is set), or a fresh one, stored.

        Raises :class:`IdempotencyKeyReuseError` when the key is bound to
        another payload, :class:`UnavailableError` when the store is unusable,
        and whatever ``compute`` raises (nothing is stored then).
        """
        key = request.context.idempotency_key
        if key is None:
            return await compute()
        if request.nbytes() < INLINE_FINGERPRINT_BYTES:
            fingerprint = binding(request)
        else:  # sha256 of a large request would hold up the loop (~2 ms per MB here)
            fingerprint = await asyncio.to_thread(binding, request)
        # From here to the registration of the slot nothing awaits: the in-flight
        # table and the store are read and the slot taken in one step of the loop,
        # so in this process one request is the first registered; the store's
        # claim (one transaction, across processes) then says what the key is
        # bound to, and every request is compared against that.
        slot = (request.model, key)
        inflight = self._inflight.get(slot)
        first = inflight is None or inflight.task.done()
        if inflight is None or first:
            store = self._usable_store()
            stored = self._failing_as_503(lambda: store.get(request.model, key))
            if stored is not None:
                _check(request, key, stored.fingerprint, fingerprint, _when(stored.created))
                return self._replayed(request, stored.response)
            bound: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(
                self._first(store, request, key, fingerprint, compute, bound)
            )
            inflight = self._inflight[slot] = _InFlight(bound, task)
            task.add_done_callback(lambda done: self._finished(slot, done))
        bound_to, when = await asyncio.shield(inflight.bound)
        _check(request, key, bound_to, fingerprint, when)
        response, computed = await asyncio.shield(inflight.task)
        return response if first and computed else self._replayed(request, response)

    def _finished(
        self, slot: tuple[str, str], task: asyncio.Future[tuple[InferResponse, bool]]
    ) -> None:
        inflight = self._inflight.get(slot)
        if inflight is not None and inflight.task is task:
            del self._inflight[slot]
        if not task.cancelled():
            task.exception()  # retrieved: every caller re-raises it itself
        if inflight is not None and inflight.bound.done() and not inflight.bound.cancelled():
            inflight.bound.exception()

    async def _first(
        self,
        store: IdempotencyStore,
        request: InferRequest,
        key: str,
        fingerprint: str,
        compute: Callable[[], Awaitable[InferResponse]],
        bound: asyncio.Future[tuple[str, str]],
    ) -> tuple[InferResponse, bool]:
        """The claim, then the answer to whichever fingerprint it bound:
        ``(answer, computed here)``; settles ``bound`` as soon as that is known."""
        try:
            claim = await self._claim(store, request.model, key, fingerprint)
        except Exception as exc:
            bound.set_exception(exc)
            raise
        except BaseException:
            bound.cancel()
            raise
        if claim.kind == "answered":
            assert claim.answer is not None
            bound.set_result((claim.fingerprint, _when(claim.created)))
            return claim.answer.response, False
        if claim.kind == "pending":
            bound.set_result(
                (claim.fingerprint, "still being computed by another process on this store")
            )
            return await self._answer_of_other(store, request.model, key, claim), False
        bound.set_result((fingerprint, "still being computed"))
        try:
            response = await compute()
        except BaseException:
            self._claims.submit(_release, store, request.model, key)
            raise
        evicted = await self._save(store, (request.model, key, fingerprint, response))
        if evicted:
            self.metrics.idempotency_evictions.inc(evicted)
            log.warning(
                "idempotency store %s is full: evicted %d unexpired answers (a re-send of "
                "those is computed again); raise idempotency_max_entries/_max_bytes",
                self.describe,
                evicted,
            )
        return response, True

    async def _claim(
        self, store: IdempotencyStore, model: str, key: str, fingerprint: str
    ) -> Claim:
        """:meth:`IdempotencyStore.claim` on the claims' thread; errors become 503s."""
        loop = asyncio.get_running_loop()
        claim = functools.partial(
            store.claim, model, key, fingerprint, stale_after_s=self.stale_after_s
        )
        try:
            return await loop.run_in_executor(self._claims, claim)
        except (sqlite3.Error, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def _answer_of_other(
        self, store: IdempotencyStore, model: str, key: str, claim: Claim
    ) -> InferResponse:
        """The answer another process is computing under ``claim``, once it is
        stored (looked at every few ms, at most every :data:`POLL_MAX_S`).

        Raises :class:`UnavailableError` (retryable) when that process drops
        its claim without an answer (its computation failed), is gone, or
        outlives :attr:`stale_after_s` — a retry then computes or replays.
        """
        pause = 0.002
        while not self._closing:
            await asyncio.sleep(pause)
            pause = min(2 * pause, POLL_MAX_S)
            held = self._failing_as_503(lambda: store.claimant(model, key))
            stored = self._failing_as_503(lambda: store.get(model, key))
            if stored is not None and stored.fingerprint == claim.fingerprint:
                return stored.response
            if (
                stored is not None
                or held is None
                or held[0] != claim.fingerprint
                or not held[2]
                or time.time() - held[1] > self.stale_after_s
            ):
                break
        raise UnavailableError(
            f"idempotency key {key!r} of model {model!r} was being computed by another "
            f"process sharing the store {self.describe}, which did not answer (it failed, "
            "stopped, or ran out of time); nothing was computed here — retry"
        )

    def _usable_store(self) -> IdempotencyStore:
        if self.store is None and time.monotonic() - self._opened_at >= REOPEN_EVERY_S:
            self.open()
        if self.store is None:
            self.metrics.idempotency_store_errors.inc()
            raise UnavailableError(
                f"the idempotency store {self.describe} is unusable ({self.error}); requests "
                "with an idempotency key are refused rather than computed without the "
                "exactly-once promise — retry later, or send the request without a key"
            )
        return self.store

    async def _save(self, store: IdempotencyStore, answer: _Answer) -> int:
        """Commit ``answer`` on the store's thread, grouped with the answers that
        arrive while the previous commit waits for its fsync (one fsync per group)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        with self._pending_lock:
            self._pending.append((answer, done))
            start = not self._flushing
            self._flushing = True
        if start:
            loop.run_in_executor(self._thread, self._flush, store, loop)
        try:
            return await done
        except (sqlite3.Error, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _flush(self, store: IdempotencyStore, loop: asyncio.AbstractEventLoop) -> None:
        """On the store's thread: commit what is pending, group by group, until none is."""
        while True:
            with self._pending_lock:
                group, self._pending = self._pending, []
                if not group:
                    self._flushing = False
                    return
            try:
                evicted: int | BaseException = store.put_many([answer for answer, _ in group])
            except (sqlite3.Error, OSError) as exc:
                evicted = exc
            loop.call_soon_threadsafe(_settle, [done for _, done in group], evicted)

    def _failing_as_503(self, function: Callable[[], _T]) -> _T:
        """``function()`` on the loop (a read: microseconds); errors become 503s."""
        try:
            return function()
        except (sqlite3.Error, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> UnavailableError:
        self.metrics.idempotency_store_errors.inc()
        self.error = f"{type(exc).__name__}: {exc}"
        log.error("idempotency store %s failed: %s", self.describe, self.error)
        if not isinstance(exc, sqlite3.OperationalError):
            self._drop_store()  # corrupt or gone: reopen later
        return UnavailableError(
            f"the idempotency store {self.describe} failed ({self.error}); the request "
            "was not answered so that a retry cannot be computed twice — retry later"
        )

    def _drop_store(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store = None
        self._opened_at = time.monotonic()

    def _replayed(self, request: InferRequest, response: InferResponse) -> InferResponse:
        self.metrics.replays.labels(request.model).inc()
        label = response.trace.served_by
        return InferResponse(
            model=response.model,
            version=response.version,
            outputs=response.outputs,
            trace=Trace(label, [Span(label, "decision", 0.0, "idempotent replay: stored answer")]),
            id=request.id or response.id,
            parameters={**response.parameters, "idempotent_replay": True},
        )

    async def close(self) -> None:
        """Wait for computations in flight (their answers are stored), then close."""
        self._closing = True  # waits for other processes' answers end now (503)
        pending = [f.task for f in self._inflight.values()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._thread.shutdown(wait=True)
        self._claims.shutdown(wait=True)
        if self.store is not None:
            self.store.close()
            self.store = None


def _settle(futures: list[asyncio.Future[int]], evicted: int | BaseException) -> None:
    """Resolve a committed group's futures (on the loop); evictions go to the first."""
    for i, future in enumerate(futures):
        if future.done():
            continue
        if isinstance(evicted, BaseException):
            future.set_exception(evicted)
        else:
            future.set_result(evicted if i == 0 else 0)


def _release(store: IdempotencyStore, model: str, key: str) -> None:
    """Drop a failed computation's claim (on the claims' thread); a store error
    only logs: the claim is this store's, so its next claim replaces it anyway."""
    try:
        store.release(model, key)
    except (sqlite3.Error, OSError) as exc:
        log.warning("idempotency store: could not release a claim on %r: %s", key, exc)


def _check(request: InferRequest, key: str, bound: str, fingerprint: str, when: str) -> None:
    if bound == fingerprint:
        return
    raise IdempotencyKeyReuseError(
        f"idempotency key {key!r} is already bound to another request for model "
        f"{request.model!r} ({when}; its fingerprint {bound[:12]}…, this request's "
        f"{fingerprint[:12]}…): a key names one request — send a new key for a new payload"
    )


def _when(created: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    return f"answered at {stamp}"


def _stored(row: tuple[str, str, int | None, bytes, float]) -> StoredAnswer:
    fingerprint, served_by, header_length, body, created = row
    response = decode_response(bytes(body), header_length, served_by)
    response.trace = Trace(served_by, [])
    return StoredAnswer(fingerprint, response, float(created))


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (signal 0 probes without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True


def _running_elsewhere(pid: int) -> bool:
    """Whether ``pid`` is another running process. This process's own pid on a
    claim of another store means a store this process closed or an earlier
    process that had the same pid (a container's pid 1): either way, not computing
    for that claim any more."""
    return pid != os.getpid() and _running(pid)
