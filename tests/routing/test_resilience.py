from __future__ import annotations

import asyncio
import contextlib
import random
from concurrent.futures import CancelledError as FutureCancelled

import pytest

from edgecloud.errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidRequestError,
    ModelNotFoundError,
    PrivacyError,
    UnavailableError,
)
from edgecloud.routing import Backoff, BreakerState, CircuitBreaker, retry
from edgecloud.routing.resilience import Outcome


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_and_half_opens_after_reset() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=10, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    assert breaker.acquire() is None
    clock.now = 10.0
    assert breaker.state is BreakerState.HALF_OPEN
    trial = breaker.acquire()
    assert trial is not None and trial.trial and breaker.acquire() is None  # one at a time
    trial.record(Outcome.FAILURE)  # the trial failed: open again
    assert breaker.state is BreakerState.OPEN and breaker.trials_in_flight == 0
    clock.now = 20.0
    with breaker.acquire() or pytest.fail("half-open refused its trial"):
        pass  # the trial answered
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


@pytest.mark.parametrize(
    "error,state",
    [
        (None, BreakerState.CLOSED),
        (InvalidRequestError("wrong shape"), BreakerState.CLOSED),  # a 4xx: the remote is up
        (ModelNotFoundError("no such model"), BreakerState.CLOSED),
        (UnavailableError("down"), BreakerState.OPEN),
        (DeadlineExceededError("slow"), BreakerState.OPEN),
        (InferenceError("500"), BreakerState.OPEN),
        (RuntimeError("a bug"), BreakerState.OPEN),
        (PrivacyError("may not leave"), BreakerState.HALF_OPEN),  # never sent: slot freed
        (asyncio.CancelledError(), BreakerState.HALF_OPEN),
        (FutureCancelled(), BreakerState.HALF_OPEN),
        (KeyboardInterrupt(), BreakerState.HALF_OPEN),
    ],
)
def test_every_way_a_trial_ends_resolves_half_open(
    error: BaseException | None, state: BreakerState
) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10, clock=clock)
    breaker.record_failure()
    clock.now = 10.0
    trial = breaker.acquire()
    assert trial is not None
    with contextlib.suppress(BaseException), trial:
        if error is not None:
            raise error
    assert breaker.state is state and breaker.trials_in_flight == 0
    assert (breaker.acquire() is not None) is (state is not BreakerState.OPEN)


def test_breaker_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(reset_after_s=0)
    with pytest.raises(ValueError):
        CircuitBreaker(half_open_trials=0)


def test_backoff_is_exponential_with_full_jitter() -> None:
    backoff = Backoff(base_s=0.1, cap_s=1.0, rng=random.Random(0))
    for attempt in range(8):
        delays = [backoff.delay(attempt) for _ in range(200)]
        ceiling = min(1.0, 0.1 * 2**attempt)
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling  # the whole range is used
    with pytest.raises(ValueError):
        Backoff(base_s=0)


def test_retry_retries_only_what_it_should() -> None:
    calls: list[int] = []
    slept: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    result = retry(
        flaky, backoff=Backoff(base_s=0.01, max_tries=5),
        retry_on=lambda e: isinstance(e, ConnectionError), sleep=slept.append,
    )  # fmt: skip
    assert result == "ok" and len(calls) == 3 and len(slept) == 2

    def broken() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        retry(broken, backoff=Backoff(), retry_on=lambda e: isinstance(e, ConnectionError),
              sleep=slept.append)  # fmt: skip

    def always_down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        retry(always_down, backoff=Backoff(base_s=0.01, max_tries=3), retry_on=lambda e: True,
              sleep=lambda s: None)  # fmt: skip
