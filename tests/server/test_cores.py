"""The cores the workers share (server/cores.py): a batcher runs beyond its share of
runner slots exactly while the workers' booked threads leave a core idle."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edgecloud import LocalBackend, ModelRepository
from edgecloud.server.batching import DynamicBatcher
from edgecloud.server.cores import STALE_S, WINDOW_S, CoreLedger
from edgecloud.server.host import ModelHost
from edgecloud.server.settings import ServerSettings

from ..models import affine_reference
from .test_batching import rows


class Gate:
    """``on_batch`` that holds each runtime call's pool thread until opened, and
    records how many calls were held at once."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self._lock = threading.Lock()
        self.inside = 0
        self.most = 0
        self.entered = threading.Semaphore(0)

    def __call__(self, rows: int) -> None:
        with self._lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        self.entered.release()
        self.opened.wait(10)
        with self._lock:
            self.inside -= 1


def two_requests(
    repo: ModelRepository, ledger: CoreLedger, gate: Gate, *, other_booked: int
) -> tuple[int, int, int]:
    """Worker 0 (share 1 slot, 2 for the server) gets two requests at once while
    worker 1 has ``other_booked`` threads running; (runs held at once before the
    gate opened, threads booked meanwhile, batches borrowed)."""
    borrowed: list[int] = []
    ledger.seat(1, 2).book(other_booked)
    with LocalBackend(repo) as local, ThreadPoolExecutor(4) as pool:
        batcher = DynamicBatcher(
            local.load("affine"), pool, max_batch_size=1, concurrency=1,
            seat=ledger.seat(0, 2), threads=1, on_batch=gate, on_borrow=lambda: borrowed.append(1),
        )  # fmt: skip
        xs = [np.full((1, 4), float(i), np.float32) for i in range(2)]

        async def run() -> tuple[int, int]:
            calls = [asyncio.ensure_future(batcher.submit({"x": x}, None, 1)) for x in xs]
            await asyncio.to_thread(gate.entered.acquire, True, 10)  # the first run is in
            # the second, if it may borrow, enters too
            second_in = await asyncio.to_thread(gate.entered.acquire, True, 0.3)
            held, booked = gate.inside, ledger.booked()
            gate.opened.set()
            answers = await asyncio.gather(*calls)
            for x, (out, _, _, _) in zip(xs, answers, strict=True):
                np.testing.assert_allclose(out["y"], affine_reference(x)[0], rtol=1e-5)
            await batcher.close()
            assert second_in == (held == 2)
            return held, booked

        held, booked = asyncio.run(run())
    return held, booked, len(borrowed)


def test_a_worker_borrows_a_slot_while_the_other_workers_leave_a_core_idle(
    repo: ModelRepository,
) -> None:
    ledger, gate = CoreLedger(workers=2, cores=2), Gate()
    held, booked, borrowed = two_requests(repo, ledger, gate, other_booked=0)
    assert held == 2, "the second request waited although a core was idle"
    assert booked == 2 and borrowed == 1
    assert ledger.booked() == 0, "the runs' threads stay booked after they ended"


def test_no_slot_is_borrowed_while_the_other_worker_uses_its_cores(
    repo: ModelRepository,
) -> None:
    ledger, gate = CoreLedger(workers=2, cores=2), Gate()
    held, booked, borrowed = two_requests(repo, ledger, gate, other_booked=1)
    assert held == 1 and gate.most == 1, "borrowed a core the other worker was using"
    assert booked == 2 and borrowed == 0  # its own share's run and the other worker's
    assert ledger.booked() == 1  # the other worker's run, still going


def test_without_a_seat_the_share_is_the_cap(repo: ModelRepository) -> None:
    """One process (no ledger): ``concurrency`` batches at once, as before."""
    gate = Gate()
    with LocalBackend(repo) as local, ThreadPoolExecutor(4) as pool:
        batcher = DynamicBatcher(
            local.load("affine"), pool, max_batch_size=1, concurrency=1, on_batch=gate
        )

        async def run() -> None:
            calls = [
                asyncio.ensure_future(batcher.submit({"x": np.ones((1, 4), np.float32)}, None, 1))
                for _ in range(3)
            ]
            await asyncio.to_thread(gate.entered.acquire, True, 10)
            assert not await asyncio.to_thread(gate.entered.acquire, True, 0.3)
            gate.opened.set()
            await asyncio.gather(*calls)
            await batcher.close()

        asyncio.run(run())
    assert gate.most == 1 and batcher.stats.batches == 3


def test_the_ledger_is_one_memory_for_forked_workers_and_clear_forgets_a_dead_one() -> None:
    ledger = CoreLedger(workers=3, cores=4)
    pid = os.fork()
    if pid == 0:  # a worker: books 3 threads and dies without releasing them
        try:
            ledger.seat(2, 2).book(3)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    seat = ledger.seat(0, 2)
    assert ledger.booked() == 3
    assert not seat.may_borrow(2) and seat.may_borrow(1)
    ledger.clear(2)  # the supervisor reaped it
    assert ledger.booked() == 0 and seat.may_borrow(4) and not seat.may_borrow(5)


@pytest.mark.parametrize(
    ("workers", "cores", "index"), [(0, 2, 0), (2, 0, 0), (2, 2, 2), (2, 2, -1)]
)
def test_the_ledger_refuses_impossible_sizes_and_seats(
    workers: int, cores: int, index: int
) -> None:
    with pytest.raises((ValueError, IndexError), match="worker|cores"):
        CoreLedger(workers, cores).seat(index, 2)


def test_a_borrowed_slot_counts_only_runs_that_returned(repo: ModelRepository) -> None:
    """edgecloud_borrowed_batches_total counts where edgecloud_batch_size does (runtime
    calls that returned): failed runs in borrowed slots count in neither."""
    ledger, borrowed, executed = CoreLedger(workers=2, cores=2), [], []
    with LocalBackend(repo) as local, ThreadPoolExecutor(4) as pool:
        batcher = DynamicBatcher(
            local.load("affine"), pool, max_batch_size=1, concurrency=1,
            seat=ledger.seat(0, 2), threads=1, on_batch=executed.append,
            on_borrow=lambda: borrowed.append(1),
        )  # fmt: skip

        async def run() -> tuple[list[BaseException | tuple], int, list[BaseException | tuple]]:
            calls = [  # onnxruntime refuses float64
                batcher.submit({"x": np.ones((1, 4), np.float64)}, None, 1) for _ in range(40)
            ]
            bad = await asyncio.gather(*calls, return_exceptions=True)
            counted = len(borrowed) + len(executed)
            calls = [batcher.submit({"x": np.ones((1, 4), np.float32)}, None, 1) for _ in range(40)]
            good = await asyncio.gather(*calls, return_exceptions=True)
            await batcher.close()
            return bad, counted, good

        bad, counted, good = asyncio.run(run())
    assert all(isinstance(r, Exception) for r in bad) and counted == 0
    assert all(isinstance(r, tuple) for r in good)
    assert 0 < len(borrowed) <= len(executed) == 40
    assert ledger.booked() == 0


def test_a_cancelled_caller_leaves_its_run_booked_until_the_run_ends(
    repo: ModelRepository,
) -> None:
    ledger, gate = CoreLedger(workers=2, cores=2), Gate()
    with LocalBackend(repo) as local, ThreadPoolExecutor(2) as pool:
        batcher = DynamicBatcher(
            local.load("affine"), pool, max_batch_size=1, concurrency=1,
            seat=ledger.seat(0, 2), threads=1, on_batch=gate,
        )  # fmt: skip

        async def run() -> tuple[int, int]:
            x = np.ones((1, 4), np.float32)
            call = asyncio.ensure_future(batcher.submit({"x": x}, None, 1))
            await asyncio.to_thread(gate.entered.acquire, True, 10)
            call.cancel()
            await asyncio.sleep(0.05)
            during = ledger.booked()
            gate.opened.set()
            for _ in range(200):
                if ledger.booked() == 0:
                    break
                await asyncio.sleep(0.01)
            await batcher.close()
            return during, ledger.booked()

        during, after = asyncio.run(run())
    assert during == 1, "a cancelled caller freed the core its computation still used"
    assert after == 0


def _other_worker(ledger: CoreLedger, busy: bool) -> int:
    """A forked process in seat 1 that spins (a core's worth of event-loop work,
    booking nothing) or sleeps; its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            ledger.seat(1, 2)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if not busy:
                    time.sleep(0.05)
        finally:
            os._exit(0)
    return pid


@pytest.mark.parametrize("busy", [True, False])
def test_no_slot_is_borrowed_while_another_worker_computes_outside_batches(busy: bool) -> None:
    """The other worker books nothing but keeps a core busy (its event loop: HTTP,
    JSON, inline runs): that core is not free. A sleeping one leaves it free."""
    ledger = CoreLedger(workers=2, cores=2)
    seat = ledger.seat(0, 2)
    seat.book(1)  # this worker's share is running
    pid = _other_worker(ledger, busy)
    try:
        deadline = time.monotonic() + 10
        while ledger._pids[1] != pid and time.monotonic() < deadline:
            time.sleep(0.01)
        seat.others_unbooked()  # a window starts
        time.sleep(3 * WINDOW_S)
        assert seat.may_borrow(1) is not busy
        assert seat.others_unbooked() == (1 if busy else 0)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    ledger.clear(1)  # the supervisor reaped it
    assert seat.may_borrow(1)


@pytest.mark.parametrize(("worker_threads", "most"), [(1, 1), (4, 3)])
def test_a_worker_borrows_no_slot_beyond_its_pool_threads(
    repo: ModelRepository, tmp_path: Path, worker_threads: int, most: int
) -> None:
    """A slot with no pool thread to run in would wait for one while booking a core."""
    settings = ServerSettings(
        worker_threads=worker_threads, runners_per_model=1, idempotency_db=tmp_path / "i.db"
    )
    host = ModelHost(repo, settings, seat=CoreLedger(workers=3, cores=3).seat(0, 3))
    try:
        batcher = host._batcher(host.local.load("affine"))
        assert batcher is not None and batcher._most == most
    finally:
        host.local.close()
        host.executor.shutdown()


@pytest.mark.parametrize("first_to_end", [1, 2])
def test_a_run_started_beyond_the_share_counts_as_borrowed_whichever_ends_first(
    repo: ModelRepository, first_to_end: int
) -> None:
    """Share 1: a 1-row run holds the share slot, a 2-row run starts beyond it. That
    one is counted as borrowed, once, whichever of the two ends first."""
    counted = 1
    ledger, borrowed = CoreLedger(workers=2, cores=2), []
    gates = {1: threading.Event(), 2: threading.Event()}
    entered = threading.Semaphore(0)

    def held(rows: int) -> None:
        entered.release()
        gates[rows].wait(10)

    with LocalBackend(repo) as local, ThreadPoolExecutor(2) as pool:
        batcher = DynamicBatcher(
            local.load("affine"), pool, max_batch_size=2, concurrency=1,
            seat=ledger.seat(0, 2), threads=1, on_batch=held,
            on_borrow=lambda: borrowed.append(1),
        )  # fmt: skip

        async def run() -> None:
            one = asyncio.ensure_future(batcher.submit({"x": rows(1)[0]}, None, 1))
            two_rows = np.concatenate(rows(2, 1))
            two = asyncio.ensure_future(batcher.submit({"x": two_rows}, None, 2))
            for _ in range(2):  # both running
                assert await asyncio.to_thread(entered.acquire, True, 10)
            calls = {1: one, 2: two}
            gates[first_to_end].set()
            await calls[first_to_end]
            gates[3 - first_to_end].set()
            await calls[3 - first_to_end]
            await batcher.close()

        asyncio.run(run())
    assert len(borrowed) == counted
    assert ledger.booked() == 0


def test_a_stale_window_counts_the_other_worker_busy_until_measured() -> None:
    """A window not read for STALE_S restarts: averaged over a quiet spell it would
    read a worker that just got busy as idle; until measured it counts as busy."""
    ledger = CoreLedger(workers=2, cores=2)
    seat = ledger.seat(0, 2)
    pid = _other_worker(ledger, busy=False)
    try:
        deadline = time.monotonic() + 10
        while ledger._pids[1] != pid and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seat.others_unbooked() == 1  # not measured yet
        time.sleep(2 * WINDOW_S)
        assert seat.others_unbooked() == 0  # measured: asleep
        time.sleep(STALE_S + WINDOW_S)
        assert seat.others_unbooked() == 1  # stale: measured again before it counts idle
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.mark.skipif(
    not Path("/proc/self/schedstat").exists(), reason="the kernel keeps no schedstat"
)
def test_a_starved_worker_counts_as_the_core_it_wants() -> None:
    """Two spinners pinned to one CPU each get half of it: the one in the ledger
    used 0.5 core but wanted 1 (half its time waiting to run), so no core is free."""
    ledger = CoreLedger(workers=2, cores=2)
    seat = ledger.seat(0, 2)
    seat.book(1)
    cpu = min(os.sched_getaffinity(0))
    rival = os.fork()
    if rival == 0:
        try:
            os.sched_setaffinity(0, {cpu})
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                pass
        finally:
            os._exit(0)
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setaffinity(0, {cpu})
            ledger.seat(1, 2)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                pass
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while ledger._pids[1] != pid and time.monotonic() < deadline:
            time.sleep(0.01)
        seat.others_unbooked()
        time.sleep(3 * WINDOW_S)
        assert seat.others_unbooked() == 1
        assert not seat.may_borrow(1)
    finally:
        for child in (pid, rival):
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
