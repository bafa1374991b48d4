"""Work done once at the end of an event-loop iteration, in one callback.

Three things on the request path wait for the end of the iteration they were
asked for in: a tick batch (:class:`~.batching.TickBatcher`: every request
whose bytes one poll delivered is queued by then), the metric updates of the
iteration (:class:`~.metrics.Deferred`), and a connection's writes
(:class:`~.protocol.CoalescingTransport`: a response's header block and body
leave in one ``send``). Each used to schedule its own ``call_soon`` handle:
under wrk c=64 on digits-small that was a handle per connection per
iteration, plus one per tick-batched request for the future's done callback.
Running them from one handle, with the fast lane's answers written by the
tick batch itself (:class:`~.http._LaneWaiter`), cut the event loop's CPU per
request by about a tenth (digits-small, wrk c=64, request_cpu.py's in-process
server, interleaved A/B: 64.4 vs 71.9 us).

:class:`Tail` runs them all from one handle, in the order they were added,
including those added while it runs (a tick batch's answers are written, and
their connections flushed, in the same pass). A response's bytes never
leave before its own metric updates are applied (so a worker SIGKILLed after
a client got its answer has counted it): a request updates its metrics before
it writes its answer, and :meth:`.metrics.Deferred.flush` is added ``first``,
to run before any other callback that has not started, whenever that one was
added (FIFO alone let a write that joined a connection's flush queued before
the updates leave ahead of them, as separate handles did); bytes that leave
outside the tail (a connection closed or half-closed at once sends what it
holds) run the pending ``first`` callbacks before they go
(:meth:`Tail.run_first`). A callback that raises is reported to
the loop's exception handler, as a failing handle is, and the others run.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

__all__ = ["Tail", "tail_of"]


class Tail:
    """The end-of-iteration callbacks of one event loop (module docstring)."""

    __slots__ = ("__weakref__", "_first", "_loop", "_queue", "_running")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # weakly: the tails map holds this tail by its loop, and a value that held
        # its key would keep every test's loop alive
        self._loop = weakref.ref(loop)
        self._queue: list[Callable[[], object]] = []
        self._first: list[Callable[[], object]] = []
        self._running = False

    def add(self, callback: Callable[[], object], *, first: bool = False) -> None:
        """Run ``callback`` once at the end of this iteration, after those added before
        it (callers add a callback once per iteration, as they would ``call_soon`` it).

        ``first``: run it before any callback not so marked that has not started yet,
        whenever it was added (the metric updates a response's bytes must not
        overtake: see the module docstring).
        """
        if not self._queue and not self._first and not self._running:
            self._schedule()
        (self._first if first else self._queue).append(callback)

    def run_first(self) -> None:
        """Run the ``first`` callbacks pending now, before the end of the iteration: for
        bytes about to leave outside the tail (a connection closed or half-closed at
        once sends what it holds)."""
        first = self._first
        while first:
            self._call(first.pop(0))

    def _run(self) -> None:
        self._running = True
        queue, first = self._queue, self._first
        index = 0
        try:
            while True:
                while first:  # callbacks may add more: run them all in this pass
                    self._call(first.pop(0))
                if index == len(queue):
                    break
                index += 1
                self._call(queue[index - 1])
        finally:
            self._queue = []
            self._running = False
            if index < len(queue) or first:  # a BaseException stopped the pass
                self._queue = queue[index:]
                self._schedule()

    def _call(self, callback: Callable[[], object]) -> None:
        try:
            callback()
        except Exception as exc:  # as a failing handle: reported, the rest run
            loop = self._loop()
            if loop is not None:
                loop.call_exception_handler(
                    {"message": f"end-of-iteration callback {callback!r} failed",
                     "exception": exc}
                )  # fmt: skip

    def _schedule(self) -> None:
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            loop.call_soon(self._run)


_tails: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Tail] = weakref.WeakKeyDictionary()
_last: list[Tail] = []


def tail_of(loop: asyncio.AbstractEventLoop) -> Tail:
    """The :class:`Tail` of ``loop`` (made on first use; kept while the loop lives)."""
    if _last and _last[0]._loop() is loop:
        return _last[0]
    tail = _tails.get(loop)
    if tail is None:
        tail = _tails[loop] = Tail(loop)
    _last[:] = [tail]
    return tail
