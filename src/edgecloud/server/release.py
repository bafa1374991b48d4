"""A failed request's memory, given back when it is answered rather than at the
next garbage collection.

An exception keeps the frames it went through (``__traceback__``), and those
frames keep their locals: the request's body, its decoded tensors. Wherever a
frame also reaches the exception (a task that stored it, gRPC's ``abort``
raised inside the handler that caught it), the whole set is a reference cycle
that only the cyclic collector frees. With the collector set up for serving
(:func:`.app.tune_gc`: 20,000 allocations between young collections) a
client sending failing 4 MB requests pinned gigabytes before one ran (the
issue-17 hostile review: 323 MB -> 2,098 MB after 400 such gRPC requests).

Two measures, at the two places where an error becomes an answer (HTTP and
gRPC): :func:`release` drops the traceback of the error being answered (the
client gets its status and message; the frames are not needed), and a failed
request that carried at least :data:`RELEASE_BYTES` schedules a collection of
the young generations at the end of the loop iteration (:func:`collect_soon`:
at most one per iteration), which frees whatever cycle remains once the
request's task is done.
"""

from __future__ import annotations

import asyncio
import gc

__all__ = ["CLIENT_GONE", "RELEASE_BYTES", "collect_soon", "release"]

#: A failed request at least this large (bytes of body or message) is collected
#: at the end of its iteration: one young collection costs about a millisecond,
#: noise beside moving a megabyte.
RELEASE_BYTES = 1 << 20

#: The status counted for a request whose caller went away before its answer
#: (a cancelled gRPC call): nginx's "client closed request", not a server error.
CLIENT_GONE = 499

_due: set[asyncio.AbstractEventLoop] = set()


def release(exc: BaseException) -> None:
    """Drop the tracebacks of ``exc`` and of the exceptions it chains to."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


def collect_soon(nbytes: int) -> None:
    """After a failed request of ``nbytes``: collect the young generations at the end
    of this loop iteration when ``nbytes`` >= :data:`RELEASE_BYTES` (once per iteration)."""
    if nbytes < RELEASE_BYTES:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop: nothing is pending, collect now
        gc.collect(1)
        return
    if loop in _due:
        return
    _due.add(loop)

    def collect() -> None:
        _due.discard(loop)
        gc.collect(1)

    loop.call_soon(collect)
