"""The cores that the workers of ``serve --workers N`` share: a worker may run
batches beyond its share of runner slots while the other workers leave cores idle.

Why: the kernel hands a connection, not its requests, to one worker. One gRPC
channel (one HTTP/2 connection) or one keep-alive client therefore puts all of
its load on one worker. Its share (``runners_per_model // N`` runs of one
onnxruntime thread each, :func:`~.workers.worker_share`) used 1/N of the cores
while the others idled: bench/workers_ab.py, minilm, gRPC over one channel at
c=64, gave 423 req/s with 2 workers vs 610 with 1 worker on this project's 2-core
machine.

The ledger is one 32-bit count per worker in an anonymous shared mapping that the
supervisor makes before it forks (``mmap`` of -1 is ``MAP_SHARED``, so every
worker sees the same memory). A count is the onnxruntime threads of the batches
its worker runs now. Only its own worker writes it, from its event loop, as one
aligned 4-byte store: there is no lock, so a worker killed at any point leaves
none held. The supervisor zeroes a worker's count when it reaps the worker, so
the runs of a dead worker do not stay booked.

The rule (:meth:`CoreSeat.may_borrow`): a worker may always run its share. Beyond
it, up to ``runners_per_model`` (what one process runs at once), a batch starts
only while the threads booked by every worker, plus its own, fit in the cores.
Reading the sum and booking are not one atomic step across workers: two
workers may borrow at once, or a worker may start a run of its share while
another's borrowed run is going. Either way the cores are over-booked by at most
one run per worker, and only until a batch ends (one batch's compute time).
A run that borrows never waits for a core: it starts, or the batch waits for a
slot of the worker's own, as before.
"""

from __future__ import annotations

import mmap
import os

__all__ = ["CoreLedger", "CoreSeat", "available_cores"]

_COUNT = 4  # bytes of one worker's count (memoryview format "i")


def available_cores() -> int:
    """Cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count``
    where that does not exist), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class CoreLedger:
    """The onnxruntime threads each worker's batches use now, in memory shared by
    the supervisor and its forked workers.

    Make it in the supervisor before forking; each worker takes its
    :meth:`seat`; the supervisor :meth:`clear` s the count of a worker it reaped.

    Raises:
        ValueError: ``workers`` or ``cores`` below 1.
    """

    def __init__(self, workers: int, cores: int) -> None:
        if workers < 1 or cores < 1:
            raise ValueError(f"a core ledger needs workers and cores >= 1, not {workers}, {cores}")
        self.workers = workers
        self.cores = cores
        self._map = mmap.mmap(-1, _COUNT * workers)  # anonymous and MAP_SHARED
        self._counts = memoryview(self._map).cast("i")

    def seat(self, index: int, runners: int) -> CoreSeat:
        """Worker ``index`` 's place in the ledger; ``runners`` is
        ``runners_per_model`` of the whole server: the most batches of one model
        the worker may run at once while it borrows.

        Raises:
            IndexError: ``index`` is not a worker's (0 .. workers-1).
        """
        if not 0 <= index < self.workers:
            raise IndexError(f"worker index {index} is not in 0..{self.workers - 1}")
        return CoreSeat(self, index, runners)

    def clear(self, index: int) -> None:
        """Forget what worker ``index`` had booked (the supervisor, once it reaped it)."""
        self._counts[index] = 0

    def booked(self) -> int:
        """Threads booked by all the workers now."""
        return sum(self._counts)


class CoreSeat:
    """One worker's count in a :class:`CoreLedger` (used from its event loop only)."""

    __slots__ = ("_counts", "_index", "cores", "runners")

    def __init__(self, ledger: CoreLedger, index: int, runners: int) -> None:
        self._counts = ledger._counts
        self._index = index
        self.cores = ledger.cores
        self.runners = runners

    def book(self, threads: int) -> None:
        """A batch of ``threads`` onnxruntime threads starts in this worker."""
        self._counts[self._index] += threads

    def release(self, threads: int) -> None:
        """A batch booked with :meth:`book` ended."""
        self._counts[self._index] -= threads

    def may_borrow(self, threads: int) -> bool:
        """Whether a batch of ``threads`` beyond this worker's share fits in the idle cores."""
        return sum(self._counts) + threads <= self.cores
