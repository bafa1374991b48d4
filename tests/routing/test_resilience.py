from __future__ import annotations

import random

import pytest

from edgecloud.routing import Backoff, BreakerState, CircuitBreaker, retry


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
    clock.now = 10.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.record_failure()  # the trial failed: open again
    assert breaker.state is BreakerState.OPEN
    clock.now = 20.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_breaker_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(reset_after_s=0)


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
