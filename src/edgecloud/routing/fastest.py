"""Fastest: send each request down the path expected to answer first, optionally hedged."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from functools import partial

from ..backends.base import Backend
from ..errors import ConfigError, EdgecloudError
from ..tensors import InferRequest, InferResponse
from .fallback import combined_error, fallback_reason, with_decision
from .link import LinkEstimate
from .resilience import CircuitBreaker, Permit

__all__ = ["Fastest"]


class Fastest(Backend):
    """Choose between backends by expected latency, learned from their own answers.

    Each path keeps a :class:`LinkEstimate` of its end-to-end time (compute,
    network and server together) as a function of request size. A path never
    measured is tried first; ``explore`` is the share of requests sent down a
    path that is not the current best, so estimates stay fresh when
    conditions change. A failing path is skipped by its circuit breaker and the
    request goes to the next. With ``hedge``, when the chosen path has not
    answered by its own p95, the next path starts too and the first answer wins.
    """

    def __init__(
        self,
        paths: list[Backend],
        *,
        explore: float = 0.05,
        hedge: bool = False,
        seed: int | None = None,
        name: str = "fastest",
    ) -> None:
        if len(paths) < 2:
            raise ConfigError("Fastest needs at least two paths")
        if not 0 <= explore <= 1:
            raise ConfigError("explore must be within [0, 1]")
        self.paths = paths
        self.explore = explore
        self.hedge = hedge
        self.name = name
        self.estimates = [LinkEstimate() for _ in paths]
        self.breakers = [CircuitBreaker(failure_threshold=2, reset_after_s=10) for _ in paths]
        self._rng = random.Random(seed)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def probe_once(self) -> None:
        """Time a light probe on every path that has one (``ping() -> seconds | None``).

        A probe is a zero-byte sample: it keeps the base latency (RTT) of a path
        current even while requests avoid that path; an unreachable path counts
        as a failure for its breaker.
        """
        for i, path in enumerate(self.paths):
            ping = getattr(path, "ping", None)
            if not callable(ping):
                continue
            seconds = ping()
            if seconds is None:
                self.breakers[i].record_failure()
            else:
                self.estimates[i].record(0, seconds)

    def start_probing(self, interval_s: float = 1.0) -> None:
        """Probe every ``interval_s`` in a daemon thread until ``close()``."""
        if interval_s <= 0:
            raise ConfigError("probe interval must be positive")

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.probe_once()

        threading.Thread(target=loop, name="edgecloud-probe", daemon=True).start()

    def ranking(self, nbytes: int) -> list[tuple[int, float | None]]:
        """Paths ordered by expected seconds (unmeasured first), with the estimate."""
        expected = [(i, e.predict(nbytes)) for i, e in enumerate(self.estimates)]
        return sorted(expected, key=lambda pair: -1.0 if pair[1] is None else pair[1])

    def infer(self, request: InferRequest) -> InferResponse:
        order = self.ranking(request.nbytes())
        if len(order) > 1 and order[0][1] is not None and self._rng.random() < self.explore:
            order = [order[1], order[0], *order[2:]]
            why = "explore"
        else:
            why = "unmeasured" if order[0][1] is None else "fastest"
        errors: list[tuple[str, EdgecloudError | str]] = []
        for rank, (i, expected) in enumerate(order):
            permit = self.breakers[i].acquire()
            if permit is None:
                errors.append((self.paths[i].name, "circuit open"))
                continue
            try:
                with permit:  # resolved however the call ends (resilience.outcome_of)
                    response = self._run(i, permit, order[rank + 1 :], request)
            except EdgecloudError as exc:
                reason = fallback_reason(exc)
                if reason is None:
                    raise
                errors.append((self.paths[i].name, exc))
                continue
            estimate = "unmeasured" if expected is None else f"expected {expected * 1e3:.1f} ms"
            detail = f"fastest:{why} {self.paths[i].name} ({estimate})"
            if errors:
                detail += " after " + "; ".join(f"{n}: {_why(e)}" for n, e in errors)
            return with_decision(response, self.name, detail)
        raise combined_error(errors)

    def _run(
        self, i: int, permit: Permit, rest: list[tuple[int, float | None]], request: InferRequest
    ) -> InferResponse:
        started = time.perf_counter()
        p95 = self.estimates[i].percentile(95)
        if self.hedge and rest and p95 is not None and len(self.estimates[i]) >= 8:
            response = self._hedged(i, permit, rest[0][0], p95, request)
        else:
            response = self.paths[i].infer(request)
        self.estimates[i].record(request.nbytes(), time.perf_counter() - started)
        return response

    def _hedged(
        self, first: int, own: Permit, second: int, after: float, request: InferRequest
    ) -> InferResponse:
        """``first``'s answer, or ``second``'s when it comes first after ``after`` seconds.

        The hedge goes through ``second``'s breaker too: it is not started while
        that circuit is open, and its permit is resolved by its own outcome
        whenever it ends (a hedge still running when ``first`` wins included).
        """
        pool = self._executor()
        primary = pool.submit(self.paths[first].infer, request)
        hedge = None
        if not wait([primary], timeout=after).done:
            permit = self.breakers[second].acquire()
            if permit is not None:
                hedge = pool.submit(self.paths[second].infer, request)
                hedge.add_done_callback(partial(_resolve_by, permit))
        if hedge is not None:
            wait([primary, hedge], return_when=FIRST_COMPLETED)
            if not primary.done() and hedge.exception() is None:
                own.release()  # the first path has not answered: its call proves nothing
                why = f"hedge:{self.paths[second].name} answered before {self.paths[first].name}"
                return with_decision(hedge.result(), self.name, why)
        return primary.result()  # a failed hedge leaves the answer to the first path

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(8, thread_name_prefix="edgecloud-fastest")
            return self._pool

    def close(self) -> None:
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        for path in self.paths:
            path.close()


def _resolve_by(permit: Permit, future: Future[InferResponse]) -> None:
    """Resolve a hedge's permit by how its call ended (cancelled: neutral)."""
    if future.cancelled():
        permit.release()
    else:
        permit.record(future.exception())


def _why(failure: EdgecloudError | str) -> str:
    return failure if isinstance(failure, str) else str(failure.fallback)
