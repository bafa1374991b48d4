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
- what the other workers want outside booked batches: their event loops
  (HTTP and JSON, models that run inline on the loop) and gRPC threads. That is
  read from ``/proc/<pid>/stat`` (user + system time of the whole process, less
  its booked threads) and ``/proc/<pid>/schedstat`` (its event loop's time on a
  CPU plus its time waiting for one: a starved worker gets less than it wants),
  over windows of at least :data:`WINDOW_S`, and rounded to whole cores. A
  worker busy parsing requests for a small model counts as the core it takes,
  though it books nothing.

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

import math
import mmap
import os
import time

__all__ = ["STALE_S", "WINDOW_S", "CoreLedger", "CoreSeat", "available_cores"]

_INT = 4  # bytes of one entry (memoryview format "i")
#: The shortest window over which another worker's CPU use is measured (seconds):
#: ``/proc`` counts CPU time in clock ticks (10 ms on Linux), so a shorter window
#: would read mostly rounding; a longer one reacts later to a change of load.
WINDOW_S = 0.1
#: A window whose start is older than this is restarted: averaged over a long
#: quiet spell, it would read a worker that just got busy as idle.
STALE_S = 5 * WINDOW_S
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
        #: per other pid: (CPU s, loop run+wait s, monotonic s) at its window's start
        self._seen: dict[int, tuple[float, float, float]] = {}
        #: per other pid: (cores of CPU, cores its loop wanted) over its last window
        self._window: dict[int, tuple[float, float]] = {}

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
        """Whole cores (0.5 and up rounds up) the other workers want outside their
        booked batches, over their last window (:data:`WINDOW_S` or more).

        Per other worker, the larger of its CPU time beyond its booked threads
        (``/proc/<pid>/stat``: all its threads) and its event loop's demand: the
        main thread's time on a CPU plus its time waiting for one
        (``/proc/<pid>/schedstat``). A worker starved of CPU gets less than it
        wants, and the CPU it is denied may be what a borrowed batch took: its
        wait counts. A window not yet measured (first sight, or no reading for
        :data:`STALE_S`) counts as one busy core until it is.
        """
        now = time.monotonic()
        extra = 0.0
        own = self._pids[self._index]
        for index, pid in enumerate(self._pids):
            if index == self._index or pid <= 0 or pid == own:
                continue
            start = self._seen.get(pid)
            if start is None or now - start[2] > STALE_S:
                reading = _reading(pid)
                if reading is None:
                    continue
                self._seen[pid] = (*reading, now)
                self._window[pid] = _UNMEASURED
            elif now - start[2] >= WINDOW_S:
                reading = _reading(pid)
                if reading is None:
                    continue
                span = now - start[2]
                self._window[pid] = ((reading[0] - start[0]) / span, (reading[1] - start[1]) / span)
                self._seen[pid] = (*reading, now)
            cpu, loop = self._window.get(pid, _UNMEASURED)
            extra += max(cpu - self._counts[index], loop)
        if len(self._seen) > len(self._pids):  # pids of replaced workers
            live = set(self._pids)
            self._seen = {p: v for p, v in self._seen.items() if p in live}
            self._window = {p: v for p, v in self._window.items() if p in live}
        return math.floor(extra + 0.5)


#: (cores of CPU beyond booked threads, cores the event loop wanted) of a window
#: not measured yet: one busy core.
_UNMEASURED = (1.0, 1.0)


def _reading(pid: int) -> tuple[float, float] | None:
    """(CPU seconds of all of ``pid`` 's threads, seconds its main thread ran or
    waited to run), or None when ``/proc`` cannot say (gone, or not Linux; no
    schedstat: the wait reads 0)."""
    cpu = _cpu_seconds(pid)
    if cpu is None:
        return None
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as schedstat:
            ran, waited = schedstat.read().split()[:2]  # ns on a CPU, ns runnable (sched-stats)
        return cpu, (int(ran) + int(waited)) / 1e9
    except (OSError, ValueError):
        return cpu, 0.0


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), or None when
    ``/proc/<pid>/stat`` cannot be read (gone, or not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime (proc(5))
