"""Routing: combinators that decide, per request, where inference runs, and say why.

Every combinator is itself a :class:`~edgecloud.backends.base.Backend`, so a
deployment is a small tree: ``Guard(Cascade(local, prefer_remote(remote, local)))``.
"""

from .calibrate import OperatingPoint, calibrate, sweep
from .cascade import Cascade
from .confidence import CONFIDENCE
from .fallback import (
    Fallback,
    fallback_reason,
    only_local,
    only_remote,
    prefer_local,
    prefer_remote,
)
from .fastest import Fastest
from .link import LinkEstimate, ShapedLink
from .outbox import (
    DeadLetter,
    DrainResult,
    Outbox,
    OutboxFullError,
    OutboxItem,
    OutboxStorageError,
)
from .privacy import AuditLog, Guard
from .resilience import Backoff, BreakerState, CircuitBreaker, retry

__all__ = [
    "CONFIDENCE",
    "AuditLog",
    "Backoff",
    "BreakerState",
    "Cascade",
    "CircuitBreaker",
    "DeadLetter",
    "DrainResult",
    "Fallback",
    "Fastest",
    "Guard",
    "LinkEstimate",
    "OperatingPoint",
    "Outbox",
    "OutboxFullError",
    "OutboxItem",
    "OutboxStorageError",
    "ShapedLink",
    "calibrate",
    "fallback_reason",
    "only_local",
    "only_remote",
    "prefer_local",
    "prefer_remote",
    "retry",
    "sweep",
]
