"""Dynamic batching: concurrent requests for one model merged into one runtime call.

Requests queue per model version. A batch is formed whenever a runner slot is
free: everything already waiting (up to ``max_batch_size``) with the same
non-batch shapes goes in one onnxruntime call, and the outputs are split back
by each request's own row count. An empty batch (0 rows) is never queued nor
merged: ``LoadedModel.run`` answers it without the runtime, so its answer does
not depend on the load (merged, it would have depended on its companions).
Only models whose requested outputs all carry the batch as their first
dimension are merged (``LoadedModel.splittable``); a merged output without one
row per input row is never split: the requests run alone instead.
Under light load a request therefore runs at once; under heavy load batches
form while the previous ones run (adaptive batching); a request that finds
the queue empty and a runner slot free (and no queue delay configured) skips
the queue and the batcher's task altogether (two event-loop hops fewer).
``max_queue_delay_us`` adds Triton's classic wait for companions on top,
except for a request that finds the batcher idle: when the batcher's task
wakes to a queue of that one request (nothing else arrived in its loop
iteration) and no batch is running, it runs at once — waiting could only
add latency, since nothing it could be merged with is in flight (Triton
waits out the delay even then; the price was measured on the H200: c=1
270 vs 380 req/s on resnet18-like). Under load a batch is running or the
queue holds several, so batches still gather for the delay, until a
``preferred_batch_sizes`` entry can be formed: then the largest that can
runs at once (Triton's rule; an exact total was needed before). A batch whose
merged run fails is re-run request by request, so a bad request fails alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..backends.local import LoadedModel
from ..errors import EdgecloudError, UnavailableError
from .cores import CoreSeat
from .tail import tail_of

__all__ = ["PROBE_EVERY", "BatchStats", "DynamicBatcher", "TickBatcher"]

#: A version in solo mode (its last merged run held one request) sends every
#: this-many-th request through the tick batcher anyway, to notice that load
#: came back: that one request waits one loop iteration more (tens of us).
PROBE_EVERY = 64

Arrays = dict[str, np.ndarray[Any, Any]]
Inputs = Mapping[str, np.ndarray[Any, Any]]


class Waiter(Protocol):
    """What a tick-batched request's answer is handed to: an ``asyncio.Future``,
    or a caller's own object that answers at once (the HTTP fast lane's)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any) -> None: ...

    def set_exception(self, exception: BaseException) -> None: ...


@dataclass(slots=True)
class _Pending:
    inputs: Inputs
    outputs: Sequence[str] | None
    size: int
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)
    #: TickBatcher: what the future is resolved with, made of (outputs, queue s,
    #: compute s, rows) at the flush (None: that tuple itself)
    then: Callable[[Arrays, float, float, int], Any] | None = None
    elements: int = -1
    """TickBatcher: the input elements (:func:`_elements`), counted once."""

    def merges_with(self, other: _Pending) -> bool:
        """Whether two requests can run as one batch: the same inputs with the same
        non-batch shapes and dtypes (byte order included), and the same requested
        outputs (compared in place: no signature tuples built per request)."""
        mine, their_outputs = self.outputs, other.outputs
        if mine is not their_outputs and (
            mine is None or their_outputs is None or tuple(mine) != tuple(their_outputs)
        ):  # a list and a tuple of the same names are the same request
            return False
        theirs = other.inputs
        if len(theirs) != len(self.inputs):
            return False
        for name, array in self.inputs.items():
            their = theirs.get(name)
            if their is None or array.shape[1:] != their.shape[1:] or array.dtype != their.dtype:
                return False
        return True


class _Slot:
    """A runner slot a batch holds; ``borrowed``: taken while the worker already ran
    its share (under steady load on one worker nearly every batch is, as each
    starts while the previous one still runs; counting only runs beyond the
    share at their end undercounted instead: the older run ends first, so the
    borrowed one would always have inherited the share's slot)."""

    __slots__ = ("borrowed",)

    def __init__(self, borrowed: bool) -> None:
        self.borrowed = borrowed


@dataclass(slots=True)
class BatchStats:
    """Counters a metrics exporter reads."""

    batches: int = 0
    requests: int = 0
    last_batch_size: int = 0


class DynamicBatcher:
    """Merge concurrent requests for one loaded model into batched runs."""

    def __init__(
        self,
        loaded: LoadedModel,
        executor: Executor,
        *,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        preferred_batch_sizes: Sequence[int] = (),
        concurrency: int = 2,
        observe: Callable[[float, int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
        seat: CoreSeat | None = None,
        threads: int = 1,
        most: int | None = None,
        on_borrow: Callable[[], None] | None = None,
    ) -> None:
        """``observe(seconds, elements)`` is called (in the pool thread) after each
        runtime call with its duration and input elements (the host's per-version cost);
        ``on_batch(rows)`` once per runtime call that returned, with the rows it ran
        (the ``edgecloud_batch_size`` histogram: one observation per execution, as
        Triton's ``nv_inference_exec_count``, not one per request).

        ``concurrency`` batches may run at once. With a ``seat`` (a worker of
        ``serve --workers N``, :mod:`.cores`), each batch books ``threads`` cores in
        the ledger the workers share, and up to ``most`` batches (default
        ``seat.runners``) run at once while the cores hold them
        (:meth:`.cores.CoreSeat.may_borrow`); ``on_borrow()`` is called (in the
        pool thread, like ``on_batch``) once per runtime call that returned in a
        batch started while ``concurrency`` batches already ran, so it never counts
        more than ``on_batch``."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.loaded = loaded
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_us / 1e6
        self.preferred = frozenset(preferred_batch_sizes)
        self.stats = BatchStats()
        self._executor = executor
        self._observe = observe
        self._on_batch = on_batch
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._share = concurrency
        ceiling = (seat.runners if most is None else most) if seat is not None else 0
        self._most = max(concurrency, ceiling)
        self._seat = seat
        self._threads = threads
        self._on_borrow = on_borrow
        self._held = 0  # runner slots taken: batches executing or gathering companions
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._running = 0  # batches executing
        self._gathering = False  # the loop waits for companions (max_queue_delay_us)

    async def submit(
        self, inputs: Inputs, outputs: Sequence[str] | None, size: int
    ) -> tuple[Arrays, float, float, int]:
        """Queue validated inputs; returns (outputs, queue seconds, compute seconds,
        rows of the runtime call that ran them: this request's batch, not whichever
        ran last, which a concurrent batch may be by the time the caller reads it).

        ``size`` is the request's row count (0 for an empty batch). UnavailableError
        once the batcher is closed (its version was unloaded): a retry finds the new one.
        """
        if self._closed:
            raise UnavailableError(f"{self.loaded.label} was unloaded; retry the request")
        if size == 0:  # never merged: the same answer alone or under load, no runtime call
            return self.loaded.run(inputs, outputs, 0), 0.0, 0.0, 0
        if not self._queue and self.max_delay == 0 and self._slot_free():
            return await self._run_now(_Pending(inputs, outputs, size, _future()))
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"batcher:{self.loaded.label}")
        future: asyncio.Future[tuple[Arrays, float, float, int]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.append(_Pending(inputs, outputs, size, future))
        if len(self._queue) == 1 or self._gathering:
            # else the loop waits for a batch's end, which wakes it (_release)
            self._wakeup.set()
        return await future

    async def _run_now(self, pending: _Pending) -> tuple[Arrays, float, float, int]:
        """Run a lone request in a free slot (checked by the caller) without queueing it.

        The run is a task whose end frees the slot, as a queued batch's: a caller
        cancelled while it computes leaves the slot (and its booked cores) taken
        until the computation ends."""
        self._start([pending], self._hold())
        result: tuple[Arrays, float, float, int] = await pending.future
        return result

    async def close(self) -> None:
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    def _slot_free(self) -> bool:
        """Whether a batch may start now: a slot of this worker's share is free, or
        (``serve --workers N``) one up to ``most`` and the cores it needs are."""
        if self._held < self._share:
            return True
        if self._held >= self._most or self._seat is None:
            return False
        return self._seat.may_borrow(self._threads)

    def _hold(self) -> _Slot:
        """Take a slot (free: :meth:`_slot_free`), beyond the share or not."""
        slot = _Slot(self._held >= self._share)
        self._held += 1
        if self._seat is not None:
            self._seat.book(self._threads)
        return slot

    def _release(self, slot: _Slot) -> None:
        self._held -= 1
        if self._seat is not None:
            self._seat.release(self._threads)
        self._wakeup.set()  # the loop may start the next batch

    async def _loop(self) -> None:
        while not (self._closed and not self._queue):
            if not self._queue or not self._slot_free():
                # woken by an arrival or a batch's end: another worker's cores
                # freeing wakes nothing, so a borrow waits for one of those
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            slot = self._hold()
            if self.max_delay > 0 and (len(self._queue) > 1 or self._running):
                self._gathering = True
                try:
                    await self._gather_companions()
                finally:
                    self._gathering = False
            self._start(self._take_batch(), slot)

    def _start(self, batch: list[_Pending], slot: _Slot) -> None:
        """Run ``batch`` in the slot just taken, as a task that frees it when it ends."""
        self._running += 1  # counted from now: the next wake-up sees it running
        task = asyncio.ensure_future(self._run(batch, slot))
        task.add_done_callback(lambda done: self._batch_done(batch, slot, done))

    def _batch_done(self, batch: list[_Pending], slot: _Slot, task: asyncio.Future[None]) -> None:
        self._running -= 1
        self._release(slot)
        failure = None if task.cancelled() else task.exception()
        for p in batch:  # never a waiter left without an answer
            if not p.future.done():
                p.future.set_exception(
                    failure or UnavailableError("the batch ended without an answer; retry")
                )

    async def _gather_companions(self) -> None:
        deadline = self._queue[0].enqueued + self.max_delay
        smallest = min(self.preferred, default=self.max_batch_size)
        while (total := sum(p.size for p in self._queue)) < self.max_batch_size:
            if total >= smallest:  # a preferred size can be formed: _take_batch forms it
                return
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Pending]:
        first = self._queue[0]
        if not self._mergeable(first):
            self._queue = self._queue[1:]
            return [first]
        batch: list[_Pending] = []
        rest: list[_Pending] = []
        total = 0
        limit = self.max_batch_size
        if self.preferred:  # Triton's rule: the largest preferred size that can be formed
            queued = sum(p.size for p in self._queue)
            fit = [size for size in self.preferred if size <= min(queued, limit)]
            if fit:
                limit = max(fit)
        for pending in self._queue:
            if (total + pending.size <= limit or not batch) and pending.merges_with(first):
                batch.append(pending)
                total += pending.size
            else:
                rest.append(pending)
        self._queue = rest
        return batch

    async def _run(self, batch: list[_Pending], slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.last_batch_size = sum(p.size for p in batch)
        try:
            results = await loop.run_in_executor(self._executor, self._compute, batch, slot)
        except EdgecloudError:
            results = None
        except Exception as exc:  # keep the batcher alive whatever happens
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        if results is None:  # merged run failed or did not split: run each alone
            await self._run_alone(batch, slot)
            return
        elapsed = time.perf_counter() - started
        rows = sum(p.size for p in batch)
        for pending, outputs in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result((outputs, started - pending.enqueued, elapsed, rows))

    async def _run_alone(self, batch: list[_Pending], slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        for pending in batch:
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(
                    self._executor, self._timed, pending.inputs, pending.outputs, pending.size,
                    slot,
                )  # fmt: skip
            except Exception as exc:
                if not pending.future.done():
                    pending.future.set_exception(exc)
                continue
            if not pending.future.done():
                elapsed = time.perf_counter() - started
                queued = started - pending.enqueued
                pending.future.set_result((outputs, queued, elapsed, pending.size))

    def _mergeable(self, pending: _Pending) -> bool:
        names = pending.outputs if pending.outputs is not None else self.loaded.output_names
        return self.loaded.splittable(names)

    def _compute(self, batch: list[_Pending], slot: _Slot) -> list[Arrays] | None:
        """Outputs per request, or None when the merged outputs do not split by rows."""
        first = batch[0]
        if len(batch) == 1:
            return [self._timed(first.inputs, first.outputs, first.size, slot)]
        merged = {name: np.concatenate([p.inputs[name] for p in batch]) for name in first.inputs}
        total = sum(p.size for p in batch)
        outputs = self._timed(merged, first.outputs, total, slot)
        if any(v.ndim == 0 or v.shape[0] != total for v in outputs.values()):
            return None
        results, offset = [], 0
        for p in batch:
            results.append({k: v[offset : offset + p.size] for k, v in outputs.items()})
            offset += p.size
        return results

    def _timed(
        self, inputs: Inputs, outputs: Sequence[str] | None, rows: int, slot: _Slot
    ) -> Arrays:
        started = time.perf_counter()
        result = self.loaded.run(inputs, outputs, rows)
        if self._observe is not None:
            elements = sum(array.size for array in inputs.values())
            self._observe(time.perf_counter() - started, elements)
        if self._on_batch is not None:
            self._on_batch(rows)
        if slot.borrowed and self._on_borrow is not None:
            self._on_borrow()
        return result


class RunCostLike(Protocol):
    """What :class:`TickBatcher` reads of the host's per-version cost (``host.RunCost``)."""

    fast_elements: int

    def add(self, seconds: float, elements: int) -> None: ...


class TickBatcher:
    """Requests for one measured-fast version that reach the server in one
    event-loop iteration, merged into one runtime call made on the loop.

    For a model whose runs are shorter than a thread hand-off (``host.RunCost``:
    they run inline on the event loop), handing a batch to the pool costs more
    than it saves, so :class:`DynamicBatcher` never sees them; under
    concurrent load each then paid for a runtime call of its own. Here a request
    waits for the end of the loop iteration it arrived in (:mod:`.tail`: every
    request whose bytes the same poll delivered is queued by then), and the
    iteration's requests run as one call: onnxruntime took 7.4 us for one row
    of digits-small and 10.5 us for 64 (this project's 2-core machine, one
    intra-op thread), so at high concurrency the runtime's share of a request
    falls from one call to a fraction of one.

    A merged run is bounded by the model's ``max_batch_size`` rows and by twice
    the input elements of the largest run measured fast (``fast_elements``):
    a run costs no less for more elements, and at most about twice as much for
    twice as many on these models, so one merged run stalls the loop about two
    inline runs at most, and a fast one extends how far the next may merge.
    Requests with other non-batch shapes, dtypes or requested outputs are
    merged only with their own kind; a merged run that fails (or whose outputs
    do not split by rows) is re-run request by request, so a bad request fails
    alone, as in :class:`DynamicBatcher`.

    Under light load (the last merged run held one request) a request runs
    inline at once instead (:meth:`wanted` is False), except every
    :data:`PROBE_EVERY`-th, which looks for companions again.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        cost: RunCostLike,
        *,
        on_start: Callable[[int], None],
        on_done: Callable[[int, int], None],
    ) -> None:
        """``on_start(requests)`` before a runtime call (merged or alone) with the
        requests handed to it, ``on_done(requests, rows)`` after it answered them.
        A request whose merged run failed is re-run alone and not started twice; one
        that fails alone is started and never done."""
        self.loaded = loaded
        self._cost = cost
        self._on_start = on_start
        self._on_done = on_done
        self._pending: list[_Pending] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        """The running loop of the requests pending (read when the first one came)."""
        self._last = 2  # start merging: the first flush says whether load is there
        self._solo = 0

    def wanted(self) -> bool:
        """Whether the next request should wait for this iteration's companions."""
        if self._pending or self._last > 1:
            return True
        self._solo += 1
        if self._solo >= PROBE_EVERY:
            self._solo = 0
            return True
        return False

    async def submit(
        self, inputs: Inputs, outputs: Sequence[str] | None, size: int
    ) -> tuple[Arrays, float, float, int]:
        """Queue validated inputs (``size`` >= 1 rows) for the end of this iteration;
        returns (outputs, queue seconds, compute seconds, rows of the run)."""
        result: tuple[Arrays, float, float, int] = await self.submit_nowait(inputs, outputs, size)
        return result

    def submit_nowait(
        self,
        inputs: Inputs,
        outputs: Sequence[str] | None,
        size: int,
        then: Callable[[Arrays, float, float, int], Any] | None = None,
        waiter: Waiter | None = None,
        elements: int | None = None,
    ) -> Any:
        """:meth:`submit` without a coroutine: ``waiter`` (a new future when None)
        resolved at the end of this iteration with ``then(outputs, queue s,
        compute s, rows)`` (the tuple itself without ``then``), or with the run's
        error, or with what ``then`` raised; returns it. Cancelling the future
        drops the answer, not the run."""
        loop = self._loop
        if not self._pending or loop is None:  # the first of this iteration: the loop, read once
            loop = self._loop = asyncio.get_running_loop()
            tail_of(loop).add(self._flush)
        if waiter is None:
            waiter = loop.create_future()
        count = _elements(inputs) if elements is None else elements
        self._pending.append(_Pending(inputs, outputs, size, waiter, then=then, elements=count))  # type: ignore[arg-type]
        return waiter

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self._last = len(pending)
        while pending:
            chunk, pending, rows, elements = self._take(pending)
            self._run(chunk, rows, elements)

    def _take(self, queue: list[_Pending]) -> tuple[list[_Pending], list[_Pending], int, int]:
        """The first request and the queued ones that merge with it within the bounds,
        the rest, and the rows and input elements of the merged run."""
        first = queue[0]
        names = first.outputs if first.outputs is not None else self.loaded.output_names
        if len(queue) == 1 or not self.loaded.splittable(names):
            return [first], queue[1:], first.size, first.elements
        cap = max(2 * self._cost.fast_elements, first.elements)
        limit = self.loaded.limit
        chunk, rest = [first], []
        rows, elements = first.size, first.elements
        for item in queue[1:]:
            more = item.elements
            if rows + item.size <= limit and elements + more <= cap and item.merges_with(first):
                chunk.append(item)
                rows, elements = rows + item.size, elements + more
            else:
                rest.append(item)
        return chunk, rest, rows, elements

    def _run(self, chunk: list[_Pending], rows: int, elements: int) -> None:
        self._on_start(len(chunk))
        started = time.perf_counter()
        if len(chunk) == 1:
            self._alone(chunk[0], started)
            return
        first = chunk[0]
        merged = {name: np.concatenate([p.inputs[name] for p in chunk]) for name in first.inputs}
        try:
            outputs = self.loaded.run(merged, first.outputs, rows)
        except EdgecloudError:
            outputs = None
        except Exception as exc:
            for p in chunk:
                _settle(p.future, exc)
            return
        compute = time.perf_counter() - started
        if outputs is None or any(v.ndim == 0 or v.shape[0] != rows for v in outputs.values()):
            for p in chunk:  # a bad request fails alone; the others are answered
                self._alone(p, time.perf_counter())
            return
        self._cost.add(compute, elements)
        self._on_done(len(chunk), rows)
        offset = 0
        for p in chunk:
            part = {k: v[offset : offset + p.size] for k, v in outputs.items()}
            offset += p.size
            _answer(p, part, started - p.enqueued, compute, rows)

    def _alone(self, p: _Pending, started: float) -> None:
        try:
            outputs = self.loaded.run(p.inputs, p.outputs, p.size)
        except Exception as exc:
            _settle(p.future, exc)
            return
        compute = time.perf_counter() - started
        self._cost.add(compute, p.elements)
        self._on_done(1, p.size)
        _answer(p, outputs, started - p.enqueued, compute, p.size)


def _elements(inputs: Inputs) -> int:
    return sum(array.size for array in inputs.values())


def _answer(p: _Pending, outputs: Arrays, queued: float, compute: float, rows: int) -> None:
    """Resolve a tick-batched waiter with its answer (``then`` applied, when given)."""
    if p.future.done():  # its caller was cancelled
        return
    if p.then is None:
        p.future.set_result((outputs, queued, compute, rows))
        return
    try:
        p.future.set_result(p.then(outputs, queued, compute, rows))
    except Exception as exc:
        p.future.set_exception(exc)


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    """Resolve a waiter unless it is gone (its caller was cancelled)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _future() -> asyncio.Future[tuple[Arrays, float, float, int]]:
    return asyncio.get_running_loop().create_future()
