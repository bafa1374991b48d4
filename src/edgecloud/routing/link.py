"""Network conditions: live link estimates, and an in-process shaped link for tests and demos.

``LinkEstimate`` learns a path's latency as ``base + bytes / throughput`` from
real request timings (a least-squares line over recent samples once payload
sizes vary, a median before that). ``ShapedLink`` wraps a backend in a
simulated network — delay, jitter, bandwidth, loss and an outage schedule —
so routing can be tested deterministically without root or netem.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from ..backends.base import Backend
from ..errors import ConfigError, UnavailableError
from ..tensors import InferRequest, InferResponse, Span, Trace

__all__ = ["LinkEstimate", "ShapedLink"]


class LinkEstimate:
    """Expected seconds for a request of a given size on one path, from recent timings."""

    def __init__(self, *, window: int = 16) -> None:
        if window < 4:
            raise ConfigError("link estimate window must be at least 4")
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._samples)

    def record(self, nbytes: int, seconds: float) -> None:
        with self._lock:
            self._samples.append((nbytes, seconds))

    def predict(self, nbytes: int) -> float | None:
        """Expected seconds, or None with no samples yet."""
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return None
        sizes = np.array([s[0] for s in samples], dtype=float)
        times = np.array([s[1] for s in samples])
        if len(set(sizes.tolist())) >= 3:
            slope, base = np.polyfit(sizes, times, 1)
            return float(max(base, 0.0) + max(slope, 0.0) * nbytes)
        return float(statistics.median(times.tolist()))

    def percentile(self, q: float) -> float | None:
        with self._lock:
            times = [s[1] for s in self._samples]
        return float(np.percentile(times, q)) if times else None


class ShapedLink(Backend):
    """``inner`` behind a simulated network link.

    Each request waits ``delay_s`` (± uniform ``jitter_s``) plus the time its
    bytes take at ``bandwidth_bps`` both ways; is lost with probability
    ``loss`` (an UnavailableError after the delay, as a timeout would); and
    fails at once during any ``(start, end)`` outage window, in seconds from
    the link's creation.
    """

    def __init__(
        self,
        inner: Backend,
        *,
        delay_s: float = 0.0,
        jitter_s: float = 0.0,
        bandwidth_bps: float | None = None,
        loss: float = 0.0,
        outages: Sequence[tuple[float, float]] = (),
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        name: str | None = None,
    ) -> None:
        if delay_s < 0 or jitter_s < 0 or not 0 <= loss <= 1:
            raise ConfigError("delay and jitter must be >= 0 and loss within [0, 1]")
        if bandwidth_bps is not None and bandwidth_bps <= 0:
            raise ConfigError("bandwidth_bps must be positive")
        self.inner = inner
        self.delay_s, self.jitter_s, self.loss = delay_s, jitter_s, loss
        self.bandwidth_bps = bandwidth_bps
        self.outages = list(outages)
        self._rng = random.Random(seed)
        self._clock, self._sleep = clock, sleep
        self._started = clock()
        self.name = name or f"link({inner.name})"

    def down(self) -> bool:
        now = self._clock() - self._started
        return any(start <= now < end for start, end in self.outages)

    def _transfer(self, nbytes: int) -> float:
        return 0.0 if self.bandwidth_bps is None else nbytes * 8 / self.bandwidth_bps

    def infer(self, request: InferRequest) -> InferResponse:
        if self.down():
            raise UnavailableError(f"{self.name}: link down (scheduled outage)")
        up = request.nbytes()
        delay = self.delay_s + self._rng.uniform(-self.jitter_s, self.jitter_s)
        wait_up = max(0.0, delay / 2) + self._transfer(up)
        self._sleep(wait_up)
        if self._rng.random() < self.loss:
            raise UnavailableError(f"{self.name}: request lost")
        response = self.inner.infer(request)
        down = sum(int(a.nbytes) for a in response.outputs.values())
        wait_down = max(0.0, delay / 2) + self._transfer(down)
        self._sleep(wait_down)
        span = Span(self.name, "network", wait_up + wait_down, "shaped link", up, down)
        response.trace = Trace(response.trace.served_by, [span, *response.trace.spans])
        return response

    def ping(self) -> float | None:
        """The inner path's probe through this link: its RTT plus the shaped delay."""
        if self.down():
            return None
        inner = getattr(self.inner, "ping", None)
        base = inner() if callable(inner) else 0.0
        if base is None:
            return None
        delay = max(0.0, self.delay_s + self._rng.uniform(-self.jitter_s, self.jitter_s))
        self._sleep(delay)
        return base + delay

    def close(self) -> None:
        self.inner.close()
