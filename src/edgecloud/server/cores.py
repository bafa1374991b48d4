"""The cores that the workers of ``serve --workers N`` share: a worker may run
batches beyond its share of runner slots while the other workers leave a core idle.

Why: the kernel hands a connection, not its requests, to one worker. One gRPC
channel (one HTTP/2 connection) or one keep-alive client therefore puts all of
its load on one worker. Its share (``runners_per_model // N`` runs of one
onnxruntime thread each, :func:`~.workers.worker_share`) used 1/N of the cores
while the others idled: bench/workers_ab.py, minilm, gRPC over one channel at
c=64, gave 423 req/s with 2 workers vs 610 with 1 worker on this project's 2-core
machine.

The ledger is an anonymous shared mapping that the supervisor makes before it
forks (``mmap`` of -1 is ``MAP_SHARED``, so every worker sees the same memory),
with two 32-bit integers per worker: the onnxruntime threads of the batches it
runs now (its *booked* threads), and its pid. Only its own worker writes them,
from its event loop, each as one aligned 4-byte store: there is no lock, so a
worker killed at any point leaves none held. The supervisor zeroes a worker's
entries when it reaps the worker, so the runs of a dead worker do not stay
booked.

The rule (:meth:`CoreSeat.may_borrow`): a worker may always run its share. Beyond
it, up to ``runners_per_model`` (what one process runs at once), a batch starts
only while the cores hold it besides

- the threads every worker has booked, and
- what the other workers compute outside booked batches: their event loops
  (HTTP and JSON, models that run inline on the loop) and gRPC threads. That is
  read from ``/proc/<pid>/stat`` (user + system time of the whole process, less
  its booked threads), over windows of at least :data:`WINDOW_S`, and rounded to
  whole cores. A worker busy parsing requests for a small model counts as the
  core it takes, though it books nothing.

A worker's own event loop is not counted against it: it shares its core with
the worker's own batches, as in one process with ``runners_per_model`` runners.
Reading and booking are not one atomic step across workers: two workers may
borrow at once, or a worker may start a run of its share while another's
borrowed run goes on. Either way the cores are over-booked by at most one run
per worker, and only until a batch ends (one batch's compute time). The other
workers' CPU is up to one window old. A run that borrows never waits for a core:
it starts, or the batch waits for a slot of the worker's own, as before. Where
``/proc`` cannot be read (not Linux), only booked threads count.
"""

from __future__ import annotations

import mmap
import os
import time

__all__ = ["WINDOW_S", "CoreLedger", "CoreSeat", "available_cores"]

_INT = 4  # bytes of one entry (memoryview format "i")
#: The shortest window over which another worker's CPU use is measured (seconds):
#: ``/proc`` counts CPU time in clock ticks (10 ms on Linux), so a shorter window
#: would read mostly rounding; a longer one reacts later to a change of load.
WINDOW_S = 0.1
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def available_cores() -> int:
    """Cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count``
    where that does not exist), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class CoreLedger:
    """Per worker: the onnxruntime threads its batches use now, and its pid, in
    memory shared by the supervisor and its forked workers.

    Make it in the supervisor before forking; each worker takes its
    :meth:`seat`; the supervisor :meth:`clear` s the entries of a worker it reaped.

    Raises:
        ValueError: ``workers`` or ``cores`` below 1.
    """

    def __init__(self, workers: int, cores: int) -> None:
        if workers < 1 or cores < 1:
            raise ValueError(f"a core ledger needs workers and cores >= 1, not {workers}, {cores}")
        self.workers = workers
        self.cores = cores
        self._map = mmap.mmap(-1, 2 * _INT * workers)  # anonymous and MAP_SHARED
        view = memoryview(self._map)
        self._counts = view[: _INT * workers].cast("i")
        self._pids = view[_INT * workers :].cast("i")

    def seat(self, index: int, runners: int) -> CoreSeat:
        """Worker ``index`` 's place in the ledger, taken in the worker process (it
        records the caller's pid); ``runners`` is ``runners_per_model`` of the whole
        server: the most batches of one model the worker may run at once while it
        borrows.

        Raises:
            IndexError: ``index`` is not a worker's (0 .. workers-1).
        """
        if not 0 <= index < self.workers:
            raise IndexError(f"worker index {index} is not in 0..{self.workers - 1}")
        return CoreSeat(self, index, runners)

    def clear(self, index: int) -> None:
        """Forget what worker ``index`` had booked, and its pid (the supervisor, once
        it reaped it)."""
        self._counts[index] = 0
        self._pids[index] = 0

    def booked(self) -> int:
        """Threads booked by all the workers now."""
        return sum(self._counts)


class CoreSeat:
    """One worker's entries in a :class:`CoreLedger` (used from its event loop only)."""

    __slots__ = ("_counts", "_index", "_pids", "_seen", "_window", "cores", "runners")

    def __init__(self, ledger: CoreLedger, index: int, runners: int) -> None:
        self._counts = ledger._counts
        self._pids = ledger._pids
        self._index = index
        self.cores = ledger.cores
        self.runners = runners
        self._pids[index] = os.getpid()
        #: per other pid: (CPU seconds, monotonic s) at the start of its current window
        self._seen: dict[int, tuple[float, float]] = {}
        #: per other pid: cores it used over its last whole window
        self._window: dict[int, float] = {}

    def book(self, threads: int) -> None:
        """A batch of ``threads`` onnxruntime threads starts in this worker."""
        self._counts[self._index] += threads

    def release(self, threads: int) -> None:
        """A batch booked with :meth:`book` ended."""
        self._counts[self._index] -= threads

    def may_borrow(self, threads: int) -> bool:
        """Whether a batch of ``threads`` beyond this worker's share fits in the cores
        left by every worker's booked threads and the other workers' other work."""
        booked = sum(self._counts)
        if booked + threads > self.cores:
            return False
        return booked + self.others_unbooked() + threads <= self.cores

    def others_unbooked(self) -> int:
        """Whole cores the other workers used outside their booked batches over their
        last window (:data:`WINDOW_S` or more; 0 until a window has passed)."""
        now = time.monotonic()
        extra = 0.0
        own = self._pids[self._index]
        for index, pid in enumerate(self._pids):
            if index == self._index or pid <= 0 or pid == own:
                continue
            start = self._seen.get(pid)
            if start is None or now - start[1] >= WINDOW_S:
                used = _cpu_seconds(pid)
                if used is None:
                    continue
                if start is not None:
                    self._window[pid] = (used - start[0]) / (now - start[1])
                self._seen[pid] = (used, now)
            extra += max(0.0, self._window.get(pid, 0.0) - self._counts[index])
        if len(self._seen) > len(self._pids):  # pids of replaced workers
            live = set(self._pids)
            self._seen = {p: v for p, v in self._seen.items() if p in live}
            self._window = {p: v for p, v in self._window.items() if p in live}
        return round(extra)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), or None when
    ``/proc/<pid>/stat`` cannot be read (gone, or not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime (proc(5))
