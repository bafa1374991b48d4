"""Reusable resilience utilities: a circuit breaker and retry with backoff and jitter.

Both are small strategy objects with keyword-only settings that reject
nonsense up front, so every caller (fallback, outbox drain, probes) shares
one well-tested implementation instead of ad-hoc loops.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError as FutureCancelled
from types import TracebackType
from typing import TypeVar

from ..errors import EdgecloudError, PrivacyError

__all__ = ["Backoff", "BreakerState", "CircuitBreaker", "Outcome", "Permit", "outcome_of", "retry"]

T = TypeVar("T")


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Outcome(enum.StrEnum):
    """What one call through a breaker says about the dependency.

    ``success``: it answered (an answer, or a 4xx naming the caller's mistake —
    either way the dependency is up). ``failure``: it is down, slow or broken
    (a retryable error, an unexpected exception). ``neutral``: the call says
    nothing about it (never sent — a privacy refusal —, cancelled, or
    abandoned by a caller that stopped waiting); its trial slot is released and
    the state is left as it was.
    """

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


def outcome_of(exc: BaseException | None) -> Outcome:
    """How a call that ended with ``exc`` (None: it returned) counts for the breaker.

    - returned, or an :class:`EdgecloudError` without a ``fallback`` reason (a
      4xx: the remote answered, the request was wrong) → ``success``;
    - :class:`PrivacyError` (refused on the device, nothing was sent),
      cancellation (``asyncio.CancelledError``,
      ``concurrent.futures.CancelledError``) and every other ``BaseException``
      that is not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``) →
      ``neutral``;
    - any other error (unreachable, timeout, 5xx, not ready, an unexpected
      exception) → ``failure``.
    """
    if exc is None:
        return Outcome.SUCCESS
    if isinstance(exc, PrivacyError | FutureCancelled) or not isinstance(exc, Exception):
        return Outcome.NEUTRAL
    if isinstance(exc, EdgecloudError) and exc.fallback is None:
        return Outcome.SUCCESS
    return Outcome.FAILURE


class CircuitBreaker:
    """Stop calling a failing dependency for a while, then try it again.

    ``closed``: calls pass; ``failure_threshold`` consecutive failures open it.
    ``open``: calls are refused for ``reset_after_s``. ``half-open``: at most
    ``half_open_trials`` trial calls at once; a trial's success closes the
    breaker, its failure opens it again (for another ``reset_after_s``), and a
    neutral outcome only frees its slot for the next trial.

    Every call goes through a :class:`Permit` from :meth:`acquire`, used as a
    context manager, so that every way a call can end — a return, any error,
    cancellation, a caller that stops waiting — resolves it exactly once
    (:func:`outcome_of` says how; the caller may record an outcome itself
    first). A permit outlived by a state change (granted while closed,
    resolved after the breaker opened; a trial of an earlier half-open period)
    only frees its slot: a stale answer neither closes nor re-opens the
    breaker. Thread-safe.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        reset_after_s: float = 5.0,
        half_open_trials: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_after_s <= 0:
            raise ValueError("reset_after_s must be positive")
        if half_open_trials < 1:
            raise ValueError("half_open_trials must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.half_open_trials = half_open_trials
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._epoch = 0
        """Bumped on every open and close: permits of an earlier epoch are stale."""
        self._trials = 0
        """Trial permits granted and not yet resolved."""
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    @property
    def trials_in_flight(self) -> int:
        """Half-open trial permits granted and not yet resolved."""
        with self._lock:
            return self._trials

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_after_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether :meth:`acquire` would grant a permit now (takes no slot)."""
        with self._lock:
            state = self._state()
            return state is BreakerState.CLOSED or (
                state is BreakerState.HALF_OPEN and self._trials < self.half_open_trials
            )

    def acquire(self) -> Permit | None:
        """A permit for one call, or None when the breaker refuses it now."""
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return Permit(self, self._epoch, trial=False)
            if state is BreakerState.HALF_OPEN and self._trials < self.half_open_trials:
                self._trials += 1
                return Permit(self, self._epoch, trial=True)
            return None

    def record_success(self) -> None:
        """An answer seen outside a permit (e.g. a probe): close the breaker."""
        with self._lock:
            self._close()

    def record_failure(self) -> None:
        """A failure seen outside a permit (e.g. a probe that got no answer)."""
        with self._lock:
            self._fail()

    def _resolve(self, permit: Permit, outcome: Outcome) -> None:
        with self._lock:
            if permit.trial:
                self._trials -= 1
            if permit.epoch != self._epoch or outcome is Outcome.NEUTRAL:
                return
            if outcome is Outcome.SUCCESS:
                self._close()
            else:
                self._fail()

    def _close(self) -> None:
        if self._opened_at is not None:
            self._epoch += 1
        self._failures = 0
        self._opened_at = None

    def _fail(self) -> None:
        self._failures += 1
        if self._opened_at is not None or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._epoch += 1


class Permit:
    """Leave to make one call through a :class:`CircuitBreaker`; resolved exactly once.

    ``with permit:`` resolves it on exit by :func:`outcome_of` the exception
    (or success), unless :meth:`record` already did. Later records are ignored.
    """

    __slots__ = ("_breaker", "_done", "_lock", "epoch", "trial")

    def __init__(self, breaker: CircuitBreaker, epoch: int, *, trial: bool) -> None:
        self._breaker = breaker
        self.epoch = epoch
        self.trial = trial
        """Whether this is a half-open trial (it holds one of the trial slots)."""
        self._done = False
        self._lock = threading.Lock()

    @property
    def resolved(self) -> bool:
        return self._done

    def record(self, outcome: Outcome | BaseException | None) -> None:
        """Resolve with ``outcome`` (or the outcome of an exception, None = success)."""
        if not isinstance(outcome, Outcome):
            outcome = outcome_of(outcome)
        with self._lock:
            if self._done:
                return
            self._done = True
        self._breaker._resolve(self, outcome)

    def release(self) -> None:
        """Resolve as neutral: this call says nothing about the dependency."""
        self.record(Outcome.NEUTRAL)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.record(exc)


class Backoff:
    """Exponential backoff with full jitter: delay n is uniform in [0, min(cap, base * 2**n)]."""

    def __init__(
        self,
        *,
        base_s: float = 0.1,
        cap_s: float = 30.0,
        max_tries: int | None = 5,
        max_elapsed_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("need 0 < base_s <= cap_s")
        if max_tries is not None and max_tries < 1:
            raise ValueError("max_tries must be at least 1")
        self.base_s = base_s
        self.cap_s = cap_s
        self.max_tries = max_tries
        self.max_elapsed_s = max_elapsed_s
        self._rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        return self._rng.uniform(0.0, min(self.cap_s, self.base_s * 2.0**attempt))


def retry(
    call: Callable[[], T],
    *,
    backoff: Backoff,
    retry_on: Callable[[Exception], bool],
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, Exception, float], None] | None = None,
) -> T:
    """Call until it succeeds, an error is not retryable, or the backoff gives up."""
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:
            attempt += 1
            out_of_tries = backoff.max_tries is not None and attempt >= backoff.max_tries
            elapsed = time.monotonic() - started
            out_of_time = backoff.max_elapsed_s is not None and elapsed >= backoff.max_elapsed_s
            if not retry_on(exc) or out_of_tries or out_of_time:
                raise
            wait = backoff.delay(attempt - 1)
            if on_retry is not None:
                on_retry(attempt, exc, wait)
            sleep(wait)
