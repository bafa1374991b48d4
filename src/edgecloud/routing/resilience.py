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
from typing import TypeVar

__all__ = ["Backoff", "BreakerState", "CircuitBreaker", "retry"]

T = TypeVar("T")


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Stop calling a failing dependency for a while, then probe it.

    ``closed``: calls pass; ``failure_threshold`` consecutive failures open it.
    ``open``: calls are refused for ``reset_after_s``. ``half-open``: one trial
    call passes; success closes the breaker, failure opens it again.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        reset_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_after_s <= 0:
            raise ValueError("reset_after_s must be positive")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_after_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a call may go ahead now (in half-open, only one trial at a time)."""
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial_in_flight = False
            if self._opened_at is not None or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()


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
