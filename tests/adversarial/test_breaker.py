"""The circuit breaker cannot stick: every way a call ends resolves it (issue 14, kind 4).

A stateful property test drives one breaker through any interleaving of
permits, outcomes (answer, 4xx, retryable errors, crashes, privacy refusals,
cancellations, interrupts, timeouts), probes and the passing of time on an
injected clock, and checks after every step that the trial slots add up, that
at most ``half_open_trials`` trials are in flight, and that a half-open breaker
with no trial in flight lets the next one through. Then the same promises
through real threads, asyncio cancellation and timeouts, and the combinators
that hold permits (Fallback with its deadline, Fastest with its hedge).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from edgecloud import FunctionBackend, InferRequest
from edgecloud.errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidRequestError,
    PrivacyError,
    UnavailableError,
)
from edgecloud.routing import BreakerState, CircuitBreaker, Fallback, Fastest
from edgecloud.routing.resilience import Outcome, Permit, outcome_of
from edgecloud.tensors import RequestContext

#: Every way a call can end, and how the breaker must count it.
ENDINGS: dict[str, tuple[BaseException | None, Outcome]] = {
    "answer": (None, Outcome.SUCCESS),
    "4xx": (InvalidRequestError("wrong shape"), Outcome.SUCCESS),
    "unavailable": (UnavailableError("down"), Outcome.FAILURE),
    "timeout": (DeadlineExceededError("slow"), Outcome.FAILURE),
    "5xx": (InferenceError("runtime failed"), Outcome.FAILURE),
    "crash": (RuntimeError("a bug in a backend"), Outcome.FAILURE),
    "privacy": (PrivacyError("may not leave the device"), Outcome.NEUTRAL),
    "cancelled": (asyncio.CancelledError(), Outcome.NEUTRAL),
    "future-cancelled": (FutureCancelled(), Outcome.NEUTRAL),
    "interrupt": (KeyboardInterrupt(), Outcome.NEUTRAL),
}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def end(permit: Permit, ending: str) -> None:
    """Leave ``with permit`` the way ``ending`` names."""
    error, _ = ENDINGS[ending]
    with contextlib.suppress(BaseException), permit:
        if error is not None:
            raise error


class BreakerMachine(RuleBasedStateMachine):
    """Any interleaving of calls, outcomes, probes and time keeps the breaker sound."""

    permits = Bundle("permits")

    @initialize(
        threshold=st.integers(1, 3), trials=st.integers(1, 3), reset=st.sampled_from([1.0, 5.0])
    )
    def build(self, threshold: int, trials: int, reset: float) -> None:
        self.clock = Clock()
        self.breaker = CircuitBreaker(
            failure_threshold=threshold,
            reset_after_s=reset,
            half_open_trials=trials,
            clock=self.clock,
        )
        self.open_trials: set[int] = set()

    @rule(target=permits)
    def acquire(self) -> Permit | None:
        state = self.breaker.state
        permit = self.breaker.acquire()
        if state is BreakerState.OPEN:
            assert permit is None, "an open breaker let a call through"
        if state is BreakerState.CLOSED:
            assert permit is not None and not permit.trial
        if permit is not None and permit.trial:
            self.open_trials.add(id(permit))
        return permit

    @rule(permit=consumes(permits), ending=st.sampled_from(sorted(ENDINGS)))
    def finish(self, permit: Permit | None, ending: str) -> None:
        if permit is None:
            return
        fresh = permit.epoch == self.breaker._epoch
        before = self.breaker.state
        end(permit, ending)
        self.open_trials.discard(id(permit))
        assert permit.resolved
        if not (fresh and permit.trial):
            return
        outcome = ENDINGS[ending][1]
        after = self.breaker.state
        if outcome is Outcome.SUCCESS:
            assert after is BreakerState.CLOSED, f"a trial's {ending} left it {after}"
        elif outcome is Outcome.FAILURE:
            assert after is BreakerState.OPEN, f"a trial's {ending} left it {after}"
        else:
            assert after is before, f"a neutral {ending} changed {before} to {after}"

    @rule(permit=permits, ending=st.sampled_from(sorted(ENDINGS)))
    def resolve_twice(self, permit: Permit | None, ending: str) -> None:
        """A second resolution of the same permit is ignored (exactly once)."""
        if permit is None or not permit.resolved:
            return
        state, trials = self.breaker.state, self.breaker.trials_in_flight
        end(permit, ending)
        assert (self.breaker.state, self.breaker.trials_in_flight) == (state, trials)

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 5.0]))  # sums exact in binary
    def wait(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(answered=st.booleans())
    def probe(self, answered: bool) -> None:
        if answered:
            self.breaker.record_success()
            assert self.breaker.state is BreakerState.CLOSED
        else:
            self.breaker.record_failure()

    @invariant()
    def slots_add_up(self) -> None:
        assert self.breaker.trials_in_flight == len(self.open_trials)
        assert 0 <= self.breaker.trials_in_flight <= self.breaker.half_open_trials

    @invariant()
    def half_open_is_never_stuck(self) -> None:
        if self.breaker.state is BreakerState.HALF_OPEN and not self.open_trials:
            assert self.breaker.allow(), "half-open with no trial in flight refuses calls"

    @rule()
    def time_heals(self) -> None:
        """With every trial resolved, waiting ``reset_after_s`` always lets a call through."""
        if self.open_trials:
            return
        saved = self.clock.now
        self.clock.now += self.breaker.reset_after_s
        assert self.breaker.allow()
        self.clock.now = saved


BreakerMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
TestBreakerMachine = BreakerMachine.TestCase


def test_outcome_of_names_every_ending() -> None:
    for ending, (error, outcome) in ENDINGS.items():
        assert outcome_of(error) is outcome, ending


def half_open(trials: int = 1) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    breaker = CircuitBreaker(
        failure_threshold=1, reset_after_s=1.0, half_open_trials=trials, clock=clock
    )
    breaker.record_failure()
    clock.now = 1.0
    assert breaker.state is BreakerState.HALF_OPEN
    return breaker, clock


def test_concurrent_trials_never_exceed_the_allowed_number() -> None:
    breaker, _ = half_open(trials=2)
    release = threading.Event()
    lock = threading.Lock()
    running, most, granted = 0, 0, 0

    def call() -> None:
        nonlocal running, most, granted
        permit = breaker.acquire()
        if permit is None:
            return
        with permit:
            with lock:
                running += 1
                granted += 1
                most = max(most, running)
            release.wait(5)
            with lock:
                running -= 1
            raise InvalidRequestError("a 4xx: the remote is up")

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(call) for _ in range(16)]
        time.sleep(0.2)
        assert breaker.trials_in_flight == 2
        release.set()
        for future in futures:
            with contextlib.suppress(InvalidRequestError):
                future.result()
    assert most == 2 and granted == 2
    assert breaker.state is BreakerState.CLOSED and breaker.trials_in_flight == 0


@pytest.mark.parametrize("how", ["cancelled", "timed-out"])
def test_a_trial_whose_caller_gives_up_releases_its_slot(how: str) -> None:
    breaker, _ = half_open()

    async def trial() -> None:
        permit = breaker.acquire()
        assert permit is not None
        with permit:
            await asyncio.sleep(30)  # the remote never answers

    async def main() -> None:
        if how == "cancelled":
            task = asyncio.create_task(trial())
            await asyncio.sleep(0.01)
            assert breaker.trials_in_flight == 1 and breaker.acquire() is None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(trial(), 0.05)

    asyncio.run(main())
    assert breaker.trials_in_flight == 0
    assert breaker.state is BreakerState.HALF_OPEN  # nothing learnt: the next trial may go
    assert breaker.acquire() is not None


X = {"x": np.ones((1, 2), dtype=np.float32)}


def answering(name: str) -> FunctionBackend:
    return FunctionBackend(lambda _: {"who": np.array([name])}, name=name)


def failing(error: BaseException, name: str = "remote") -> FunctionBackend:
    def fn(_: Any) -> dict[str, np.ndarray]:
        raise error

    return FunctionBackend(fn, name=name)


@pytest.mark.parametrize(
    "ending,state",
    [
        ("4xx", BreakerState.CLOSED),
        ("privacy", BreakerState.HALF_OPEN),
        ("crash", BreakerState.OPEN),
        ("unavailable", BreakerState.OPEN),
    ],
)
def test_fallback_resolves_its_trial_whatever_the_primary_does(
    ending: str, state: BreakerState
) -> None:
    breaker, _ = half_open()
    error = ENDINGS[ending][0]
    assert error is not None
    fallback = Fallback(failing(error), answering("local"), breaker=breaker)
    with contextlib.suppress(Exception):
        fallback.infer(InferRequest("m", X))
    assert breaker.trials_in_flight == 0 and breaker.state is state


def test_fallback_abandoning_a_slow_trial_at_the_deadline_resolves_it() -> None:
    breaker, _ = half_open()
    gate = threading.Event()

    def slow(_: Any) -> dict[str, np.ndarray]:
        gate.wait(5)
        return {"who": np.array(["remote"])}

    fallback = Fallback(FunctionBackend(slow, name="remote"), answering("local"), breaker=breaker)
    context = RequestContext.with_timeout(0.1)
    response = fallback.infer(InferRequest("m", X, context=context))
    assert response.outputs["who"][0] == "local"
    assert breaker.trials_in_flight == 0 and breaker.state is BreakerState.OPEN
    gate.set()
    fallback.close()


def test_fastest_resolves_trials_of_every_path_and_its_hedge() -> None:
    paths = [failing(InvalidRequestError("bad"), "a"), answering("b")]
    fastest = Fastest(paths, explore=0.0)
    clock = Clock()
    fastest.breakers = [
        CircuitBreaker(failure_threshold=1, reset_after_s=1.0, clock=clock) for _ in paths
    ]
    for breaker in fastest.breakers:
        breaker.record_failure()
    clock.now = 1.0
    with pytest.raises(InvalidRequestError):
        fastest.infer(InferRequest("m", X))  # a's 4xx is the caller's, and a is up
    assert fastest.breakers[0].state is BreakerState.CLOSED
    assert all(b.trials_in_flight == 0 for b in fastest.breakers)
    fastest.close()
