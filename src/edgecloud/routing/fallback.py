"""Fallback: try a primary backend, fall back to a secondary — and say why.

The modes users know from hybrid SDKs are Fallbacks: ``prefer_local`` (local,
then remote) and ``prefer_remote`` (remote, then local). Fallback happens on
what a second path can fix — unreachable, timeout, server error, not ready,
open circuit, data not allowed to leave — never on a request the caller got
wrong (4xx): that would only hide the mistake.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from ..backends.base import Backend
from ..errors import (
    DeadlineExceededError,
    EdgecloudError,
    PrivacyError,
    UnavailableError,
)
from ..tensors import InferRequest, InferResponse, Span, Trace
from .resilience import CircuitBreaker

__all__ = [
    "Fallback",
    "combined_error",
    "fallback_reason",
    "only_local",
    "only_remote",
    "prefer_local",
    "prefer_remote",
]


def fallback_reason(exc: BaseException) -> str | None:
    """Why another path may succeed where this one failed, or None (re-raise).

    The answer lives on the error class (``EdgecloudError.fallback``), so
    every combinator, the outbox and the filter agree.
    """
    return exc.fallback if isinstance(exc, EdgecloudError) else None


def combined_error(failures: list[tuple[str, EdgecloudError | str]]) -> EdgecloudError:
    """One error for a request every path failed: ``(path name, its error or why skipped)``.

    The one place combinators (Fallback, Fastest) merge errors, so none loses
    a privacy refusal: if any path refused for privacy the result is a
    :class:`PrivacyError` (never "unavailable", which a cascade or filter
    would defer as an ordinary failure), else :class:`UnavailableError`.
    Either way its ``context`` holds the strictest privacy rules any path
    reported (``EdgecloudError.context``), for ``privacy.deferrable``.
    """
    parts = []
    context = None
    refused = False
    for name, failure in failures:
        if isinstance(failure, str):
            parts.append(f"{name}: {failure}")
            continue
        parts.append(f"{name}: {failure.fallback or type(failure).__name__} ({failure.message})")
        refused = refused or isinstance(failure, PrivacyError)
        if failure.context is not None:
            context = failure.context if context is None else context.merged_rules(failure.context)
    kind = PrivacyError if refused else UnavailableError
    error = kind("every path failed: " + "; ".join(parts))
    error.context = context
    return error


def with_decision(response: InferResponse, backend: str, reason: str) -> InferResponse:
    """The response with a decision span first, naming who decided what."""
    spans = [Span(backend, "decision", 0.0, reason), *response.trace.spans]
    response.trace = Trace(response.trace.served_by, spans)
    return response


class Fallback(Backend):
    """``primary`` first; ``secondary`` when the primary fails in a way it can fix.

    With a request deadline, a primary still pending when only the
    secondary's expected time is left is abandoned and the secondary answers.
    An optional circuit breaker skips a primary that keeps failing; every
    call of the primary holds one of its permits, resolved however the call
    ends, so a half-open breaker never sticks.
    """

    def __init__(
        self,
        primary: Backend,
        secondary: Backend,
        *,
        breaker: CircuitBreaker | None = None,
        name: str = "fallback",
    ) -> None:
        self.primary = primary
        self.secondary = secondary
        self.breaker = breaker
        self.name = name
        self._secondary_s = 0.0  # EWMA of the secondary's latency: the deadline reserve
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def infer(self, request: InferRequest) -> InferResponse:
        remaining = request.context.remaining()
        budget = None if remaining is None else remaining - self._secondary_s
        if budget is not None and budget <= 0:
            why = "no time left for the primary before the deadline"
            return self._fall_back(request, "timeout", why)
        permit = self.breaker.acquire() if self.breaker is not None else None
        if self.breaker is not None and permit is None:
            return self._fall_back(request, "circuit-open", "the primary's circuit is open")
        try:
            # The permit is resolved however the primary ends (see resilience.outcome_of):
            # an answer or a 4xx closes, a retryable error or a crash counts as a failure,
            # a privacy refusal or a cancellation only frees the trial slot.
            with permit if permit is not None else contextlib.nullcontext():
                response = self._primary(request, budget)
        except EdgecloudError as exc:
            reason = fallback_reason(exc)
            if reason is None:
                raise
            return self._fall_back(request, reason, exc.message, exc)
        return with_decision(response, self.name, f"primary {self.primary.name} answered")

    def _primary(self, request: InferRequest, budget: float | None) -> InferResponse:
        """The primary's answer; with a budget, abandoned (DeadlineExceeded) when it runs out."""
        if budget is None:
            return self.primary.infer(request)
        future = self._executor().submit(self.primary.infer, request)
        try:
            return future.result(timeout=budget)
        except FutureTimeout:
            raise DeadlineExceededError(
                f"{self.primary.name} still pending {budget * 1e3:.0f} ms before the deadline; "
                "abandoned"
            ) from None

    def _fall_back(
        self, request: InferRequest, reason: str, detail: str, failed: EdgecloudError | None = None
    ) -> InferResponse:
        """The secondary's answer. If it fails too, its error is raised — unless the
        primary refused for privacy and the secondary did not: then the combined
        error (:func:`combined_error`), so a privacy refusal is never lost. Either
        way the error keeps the primary's privacy rules (``context``)."""
        started = time.perf_counter()
        try:
            response = self.secondary.infer(request)
        except EdgecloudError as exc:
            if failed is None or fallback_reason(exc) is None:
                raise
            if isinstance(failed, PrivacyError) and not isinstance(exc, PrivacyError):
                raise combined_error(
                    [(self.primary.name, failed), (self.secondary.name, exc)]
                ) from exc
            if failed.context is not None:
                exc.context = failed.context.merged_rules(exc.context)
            raise
        elapsed = time.perf_counter() - started
        self._secondary_s = (
            elapsed if self._secondary_s == 0 else 0.8 * self._secondary_s + 0.2 * elapsed
        )
        return with_decision(response, self.name, f"fallback:{reason} ({_short(detail)})")

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(8, thread_name_prefix=f"edgecloud-{self.name}")
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.primary.close()
        self.secondary.close()


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def only_local(local: Backend) -> Backend:
    """Every request on the device."""
    return local


def only_remote(remote: Backend) -> Backend:
    """Every request on the server."""
    return remote


def prefer_local(local: Backend, remote: Backend) -> Fallback:
    """The device answers; the server only when the device fails."""
    return Fallback(local, remote, name="prefer_local")


def prefer_remote(
    remote: Backend, local: Backend, *, breaker: CircuitBreaker | None = None
) -> Fallback:
    """The server answers; the device when the server is unreachable, slow or failing."""
    return Fallback(remote, local, breaker=breaker or CircuitBreaker(), name="prefer_remote")
