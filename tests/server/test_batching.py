"""DynamicBatcher in process: merging, preferred sizes, delays, isolation of failures."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgecloud import LocalBackend, ModelRepository
from edgecloud.server.batching import DynamicBatcher

from ..models import affine_reference


def rows(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(n)]


async def submit_all(batcher: DynamicBatcher, inputs: list[np.ndarray]) -> list[dict]:
    results = await asyncio.gather(*(batcher.submit({"x": x}, None, 1) for x in inputs))
    return [outputs for outputs, _, _, _ in results]


def test_preferred_size_cuts_the_wait_short(repo: ModelRepository) -> None:
    with LocalBackend(repo) as local, ThreadPoolExecutor(2) as pool:
        batcher = DynamicBatcher(
            local.load("affine"), pool, max_batch_size=8, max_queue_delay_us=2_000_000,
            preferred_batch_sizes=[4],
        )  # fmt: skip
        inputs = rows(4)

        async def run() -> tuple[list[dict], float]:
            started = time.perf_counter()
            outs = await submit_all(batcher, inputs)
            elapsed = time.perf_counter() - started
            await batcher.close()
            return outs, elapsed

        outputs, elapsed = asyncio.run(run())
    assert elapsed < 1.0, "waited for the queue delay despite reaching a preferred size"
    assert batcher.stats.batches == 1 and batcher.stats.last_batch_size == 4
    for x, out in zip(inputs, outputs, strict=True):
        np.testing.assert_allclose(out["y"], affine_reference(x)[0], rtol=1e-5)


def test_queue_delay_gathers_companions(repo: ModelRepository) -> None:
    """Requests that find others queued wait for companions up to the delay."""
    with LocalBackend(repo) as local, ThreadPoolExecutor(2) as pool:
        batcher = DynamicBatcher(
            local.load("affine"), pool, max_batch_size=8, max_queue_delay_us=100_000
        )

        async def run() -> None:
            # two in one iteration: not an idle batcher's lone request
            first = [asyncio.ensure_future(batcher.submit({"x": x}, None, 1)) for x in rows(2)]
            await asyncio.sleep(0.02)  # arrives while the first two wait for companions
            await asyncio.gather(*first, batcher.submit({"x": rows(1, 2)[0]}, None, 1))
            await batcher.close()

        asyncio.run(run())
    assert batcher.stats.batches == 1 and batcher.stats.requests == 3


def test_a_lone_request_at_an_idle_batcher_skips_the_delay(repo: ModelRepository) -> None:
    """Nothing queued with it and no batch running: waiting could only add latency."""
    with LocalBackend(repo) as local, ThreadPoolExecutor(2) as pool:
        batcher = DynamicBatcher(
            local.load("affine"), pool, max_batch_size=8, max_queue_delay_us=2_000_000
        )

        async def run() -> list[float]:
            waits = []
            for x in rows(3):  # one after another: the batcher is idle for each
                outputs, queued, _, _ = await batcher.submit({"x": x}, None, 1)
                np.testing.assert_allclose(outputs["y"], affine_reference(x)[0], rtol=1e-5)
                waits.append(queued)
            await batcher.close()
            return waits

        waits = asyncio.run(run())
    assert max(waits) < 0.5, waits  # not the 2 s delay
    assert batcher.stats.batches == 3


def test_a_request_arriving_during_a_run_waits_for_companions(repo: ModelRepository) -> None:
    """A batch running: the next request waits up to the delay, and companions that
    arrive meanwhile join its batch."""
    with LocalBackend(repo) as local, ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(
            local.load("affine"), pool, max_batch_size=8, max_queue_delay_us=300_000,
            concurrency=2,
        )  # fmt: skip
        gate = threading.Event()
        pool.submit(gate.wait)  # the only pool thread is busy: the first run stays running

        async def run() -> None:
            first = asyncio.ensure_future(batcher.submit({"x": rows(1)[0]}, None, 1))
            await asyncio.sleep(0.02)  # the first batch is running (its thread is held)
            second = asyncio.ensure_future(batcher.submit({"x": rows(1, 1)[0]}, None, 1))
            await asyncio.sleep(0.05)
            third = asyncio.ensure_future(batcher.submit({"x": rows(1, 2)[0]}, None, 1))
            await asyncio.sleep(0.05)
            gate.set()
            await asyncio.gather(first, second, third)
            await batcher.close()

        asyncio.run(run())
    assert batcher.stats.batches == 2 and batcher.stats.last_batch_size == 2


def test_without_delay_a_lone_request_runs_at_once(repo: ModelRepository) -> None:
    with LocalBackend(repo) as local, ThreadPoolExecutor(2) as pool:
        batcher = DynamicBatcher(local.load("affine"), pool, max_batch_size=8)

        async def run() -> float:
            started = time.perf_counter()
            await batcher.submit({"x": rows(1)[0]}, None, 1)
            await batcher.close()
            return time.perf_counter() - started

        assert asyncio.run(run()) < 0.5


def test_batches_never_exceed_max_batch_size(repo: ModelRepository) -> None:
    with LocalBackend(repo) as local, ThreadPoolExecutor(2) as pool:
        batcher = DynamicBatcher(local.load("affine"), pool, max_batch_size=3)
        inputs = rows(7)

        async def run() -> list[dict]:
            outs = await submit_all(batcher, inputs)
            await batcher.close()
            return outs

        outputs = asyncio.run(run())
    assert all(o["y"].shape == (1, 3) for o in outputs)
    assert batcher.stats.batches >= 3  # never more than max_batch_size rows per run


def test_on_batch_is_called_once_per_run_with_its_rows(repo: ModelRepository) -> None:
    """The host's ``edgecloud_batch_size`` observes through ``on_batch``: one call per
    runtime call with the rows it ran; an empty request makes no runtime call."""
    seen: list[int] = []
    with LocalBackend(repo) as local, ThreadPoolExecutor(2) as pool:
        batcher = DynamicBatcher(
            local.load("affine"), pool, max_batch_size=4, max_queue_delay_us=50_000,
            on_batch=seen.append,
        )  # fmt: skip

        async def run() -> None:
            await submit_all(batcher, rows(10))
            await batcher.submit({"x": np.zeros((0, 4), np.float32)}, None, 0)
            await batcher.close()

        asyncio.run(run())
    assert sum(seen) == 10 and len(seen) == batcher.stats.batches, seen
    assert max(seen) <= 4 and len(seen) >= 3


def test_the_largest_preferred_size_that_can_be_formed_runs_at_once(
    repo: ModelRepository,
) -> None:
    """Triton's rule: three rows queued with preferred [2] form a batch of 2 at once
    (not only an exact total of 2), the third waits for companions."""
    seen: list[int] = []
    with LocalBackend(repo) as local, ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(
            local.load("affine"), pool, max_batch_size=8, max_queue_delay_us=400_000,
            preferred_batch_sizes=[2], concurrency=2, on_batch=seen.append,
        )  # fmt: skip
        gate = threading.Event()
        pool.submit(gate.wait)

        async def run() -> float:
            first = asyncio.ensure_future(batcher.submit({"x": rows(1)[0]}, None, 1))
            await asyncio.sleep(0.02)  # the first batch is running (its thread is held)
            started = time.perf_counter()
            three = [asyncio.ensure_future(batcher.submit({"x": x}, None, 1)) for x in rows(3, 1)]
            await asyncio.sleep(0.05)
            gate.set()
            await asyncio.wait(three, return_when=asyncio.FIRST_COMPLETED)
            waited = time.perf_counter() - started
            await asyncio.gather(first, *three)
            await batcher.close()
            return waited

        waited = asyncio.run(run())
    assert waited < 0.3, waited  # not the 400 ms delay
    assert sorted(seen) == [1, 1, 2], seen


def test_each_request_gets_the_rows_of_its_own_batch(repo: ModelRepository) -> None:
    """Two batches run at once and end out of order: each request's rows are those of
    the run that served it (the trace's batch size), not the batch that started last."""
    gates = {1: threading.Event(), 2: threading.Event()}

    def held(rows: int) -> None:  # on_batch runs in the pool thread, after the run
        gates[rows].wait(10)

    with LocalBackend(repo) as local, ThreadPoolExecutor(2) as pool:
        batcher = DynamicBatcher(
            local.load("affine"), pool, max_batch_size=8, max_queue_delay_us=50_000,
            concurrency=2, on_batch=held,
        )  # fmt: skip

        async def run() -> tuple[int, list[int]]:
            alone = asyncio.ensure_future(batcher.submit({"x": rows(1)[0]}, None, 1))
            await asyncio.sleep(0.05)  # idle batcher: running at once (held) in one slot
            pair = [asyncio.ensure_future(batcher.submit({"x": x}, None, 1)) for x in rows(2, 1)]
            await asyncio.sleep(0.2)  # merged after the delay in the other slot, started last
            gates[1].set()  # the first batch ends first
            first = (await alone)[3]
            gates[2].set()
            second = [(await p)[3] for p in pair]
            await batcher.close()
            return first, second

        first, second = asyncio.run(run())
    assert first == 1, "the lone request read the rows of the batch that started after it"
    assert second == [2, 2]
