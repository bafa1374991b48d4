from __future__ import annotations

import time

import numpy as np
import pytest

from edgecloud import (
    DeadlineExceededError,
    FunctionBackend,
    InferRequest,
    InvalidRequestError,
    PrivacyError,
    RequestContext,
    UnavailableError,
)
from edgecloud.errors import InferenceError, ModelLoadError
from edgecloud.routing import CircuitBreaker, Fallback, prefer_local, prefer_remote

X = {"v": np.arange(3.0)}


def answering(name: str) -> FunctionBackend:
    return FunctionBackend(lambda inputs: {"who": np.array([name])}, name=name)


def failing(exc: Exception, name: str = "remote") -> FunctionBackend:
    def fail(inputs: object) -> dict:
        raise exc

    return FunctionBackend(fail, name=name)  # type: ignore[arg-type]


def reasons(response) -> list[str]:  # type: ignore[no-untyped-def]
    return [s.reason for s in response.trace.spans if s.kind == "decision"]


def test_primary_answers_and_the_trace_says_so() -> None:
    response = prefer_remote(answering("remote"), answering("local")).infer(InferRequest("m", X))
    assert response.outputs["who"][0] == "remote"
    assert reasons(response) == ["primary remote answered"]


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (UnavailableError("connection refused"), "fallback:unavailable"),
        (DeadlineExceededError("too slow"), "fallback:timeout"),
        (InferenceError("500"), "fallback:server-error"),
        (ModelLoadError("503"), "fallback:not-ready"),
        (PrivacyError("restricted"), "fallback:privacy"),
    ],
)
def test_falls_back_on_what_the_other_path_can_fix(exc: Exception, reason: str) -> None:
    response = prefer_remote(failing(exc), answering("local")).infer(InferRequest("m", X))
    assert response.outputs["who"][0] == "local"
    assert reasons(response)[0].startswith(reason)
    assert response.trace.served_by == "local"


def test_caller_mistakes_are_not_hidden_by_fallback() -> None:
    fallback = prefer_remote(failing(InvalidRequestError("wrong shape")), answering("local"))
    with pytest.raises(InvalidRequestError, match="wrong shape"):
        fallback.infer(InferRequest("m", X))


def test_prefer_local_goes_remote_when_local_fails() -> None:
    response = prefer_local(failing(ModelLoadError("corrupt"), "local"), answering("remote")).infer(
        InferRequest("m", X)
    )
    assert response.outputs["who"][0] == "remote"


def test_open_circuit_skips_the_primary() -> None:
    calls: list[int] = []

    def down(inputs: object) -> dict:
        calls.append(1)
        raise UnavailableError("down")

    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=60)
    fallback = Fallback(FunctionBackend(down, name="remote"), answering("local"), breaker=breaker)  # type: ignore[arg-type]
    for _ in range(5):
        response = fallback.infer(InferRequest("m", X))
    assert len(calls) == 2  # then the circuit opened
    assert reasons(response)[0].startswith("fallback:circuit-open")


def test_deadline_abandons_a_slow_primary() -> None:
    def slow(inputs: object) -> dict:
        time.sleep(1.0)
        return {"who": np.array(["remote"])}

    fallback = Fallback(FunctionBackend(slow, name="remote"), answering("local"))  # type: ignore[arg-type]
    started = time.monotonic()
    response = fallback.infer(InferRequest("m", X, context=RequestContext.with_timeout(0.2)))
    elapsed = time.monotonic() - started
    assert response.outputs["who"][0] == "local"
    assert elapsed < 0.6, "waited for the abandoned primary"
    assert reasons(response)[0].startswith("fallback:timeout")
    fallback.close()


def test_no_fallback_left_raises_the_last_error() -> None:
    fallback = prefer_remote(
        failing(UnavailableError("down")), failing(ModelLoadError("x"), "local")
    )
    with pytest.raises(ModelLoadError):
        fallback.infer(InferRequest("m", X))
