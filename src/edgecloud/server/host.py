"""ModelHost: the protocol-independent core of the server.

It owns the repository's sessions (through a LocalBackend), a dynamic batcher
per model version, and the durable idempotency store (:mod:`.idempotency`);
the HTTP and gRPC front ends only translate bytes to :class:`InferRequest`
and back.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..backends.local import LoadedModel, LocalBackend, version_number
from ..errors import (
    DeadlineExceededError,
    EdgecloudError,
    ModelLoadError,
    ModelNotFoundError,
    clip,
)
from ..repository import ModelConfig, ModelRepository
from ..tensors import InferRequest, InferResponse, Span, Trace
from .batching import Arrays, DynamicBatcher, TickBatcher, Waiter
from .cores import CoreSeat, available_cores
from .idempotency import (
    CLAIM_GRACE_S,
    IdempotencyStore,
    IdempotentRunner,
    default_store_path,
)
from .metrics import ServerMetrics
from .model_control import ModelControl
from .settings import ServerSettings

__all__ = [
    "INLINE_BELOW_S",
    "ModelHost",
    "ModelState",
    "RunCost",
    "input_elements",
    "model_states",
    "open_idempotency",
]

#: A model version whose measured run is shorter than this runs on the event
#: loop itself rather than in the thread pool. The hand-off to a thread
#: (``run_in_executor``, the computation task, ``shield``, ``wait_for``, the
#: batcher's queue) cost about 20 us of event-loop time per request on this
#: project's 2-core machine, plus a pool thread's wake-up on the other core
#: (py-spy under wrk: the per-stage table in the README), so below this the
#: thread costs about as much as the run it hands off, and a loop stall of at
#: most this long is about one hand-off. ``digits-small`` (~5 us) runs
#: inline; ``minilm`` (milliseconds) never does.
INLINE_BELOW_S = 30e-6

#: Recent runs of a version that its inline decision looks at.
INLINE_WINDOW = 16


@dataclass(slots=True)
class RunCost:
    """Recent runs of one model version, and whether a request may run inline.

    A request of ``e`` input elements runs inline when one of the last
    :data:`INLINE_WINDOW` runs — in the pool, in a batch, or inline —
    processed at least ``e`` elements in under :data:`INLINE_BELOW_S`. A run
    costs no less for more elements, so such a run bounds the request's cost
    from above; noise (preemption, GIL waits: a 5 us digits-small run measured
    100-600 us in a pool thread with 9 sessions on 2 cores) only makes a run
    look slower, never faster. So a fast run is evidence and a slow one is not
    a prediction: a large request of a fast model, a long sequence of a model
    with a variable dimension, and every run of a slow model (minilm) go to
    the pool; no extrapolation from a merged batch's cost per row can send a
    model with a large fixed cost per call inline. Until a version has a fast
    run of that size, its requests go to the pool, which measures them.
    Models with BYTES inputs never run inline (their cost follows the
    strings' lengths, not the element count).
    """

    recent: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=INLINE_WINDOW))
    fast_elements: int = -1
    """The most input elements a recent run processed in under INLINE_BELOW_S (-1: none)."""

    def add(self, seconds: float, elements: int) -> None:
        """Record one runtime call over ``elements`` input elements."""
        recent = self.recent
        evicted = recent[0] if len(recent) == INLINE_WINDOW else None
        recent.append((elements, seconds))
        if seconds < INLINE_BELOW_S and elements >= self.fast_elements:
            self.fast_elements = elements  # this run is itself the evidence: no scan
        elif (
            evicted is not None and evicted[1] < INLINE_BELOW_S and evicted[0] == self.fast_elements
        ):  # the evidence left the window (rarely: O(window))
            self.fast_elements = max((e for e, t in recent if t < INLINE_BELOW_S), default=-1)

    def inline(self, elements: int) -> bool:
        """Whether a request of ``elements`` input elements should run on the event loop."""
        return elements <= self.fast_elements


def input_elements(inputs: Mapping[str, np.ndarray[Any, Any]]) -> int:
    """Input elements of a request: the size :class:`RunCost` compares runs by."""
    return sum(array.size for array in inputs.values())


@dataclass(slots=True)
class ModelState:
    """Whether a model is ready, and if not, why; ``versions``: those served, ascending."""

    name: str
    versions: list[int]
    ready: bool
    error: str | None = None

    def serves(self, version: str | None) -> bool:
        """Whether ``version`` (as :func:`version_number` reads it; None or
        ``latest``: the newest) is ready: the model is, and serves that version.

        A version that names none (``"+2"``, ``"v1"``) is not served, so not
        ready: the ready endpoints answer their not-ready body (REST 503
        ``{"name": m, "ready": false}``, gRPC ``ready: false``) for it, where
        infer and metadata answer 404 with the parser's message.
        """
        try:
            number = version_number(version, self.name)
        except ModelNotFoundError:
            return False
        return self.ready and (number is None or number in self.versions)

    def metadata_versions(self, version: str | None) -> list[int]:
        """The versions model metadata lists: all served ones without a version,
        the newest for ``latest``, else the one named.

        Raises:
            ModelNotFoundError: ``version`` names no version, or one not served.
        """
        if version is None:
            return list(self.versions)
        number = version_number(version, self.name)
        if number is None:
            return self.versions[-1:]
        if number not in self.versions:
            raise ModelNotFoundError(
                f"model {self.name!r} has no version {number} (served: {self.versions})"
            )
        return [number]


def model_states(repository: ModelRepository, local: LocalBackend) -> dict[str, ModelState]:
    """Every model of ``repository`` and whether it can serve: the one readiness
    computation of the server and the edge gateway.

    A model is ready when its config reads, its files match their sha256
    (``repository.status()``) and ``local`` loads every served version and the
    newest — onnxruntime opens the graph and it matches the declared inputs
    and outputs. A model that fails is recorded with why, not raised. A model
    whose sessions were set by :meth:`LocalBackend.publish` (an update agent's
    swap) serves exactly its published versions, ready if there is one.
    """
    states = {}
    for status in repository.status():
        published = local.published(status.name)
        if published is not None:  # swapped in by LocalBackend.publish, not the policy
            versions = sorted(published)
            error = None if published else "no version is published"
            states[status.name] = ModelState(status.name, versions, bool(published), error)
            continue
        state = ModelState(status.name, status.served, ready=False, error=status.error)
        if status.error is None:
            try:
                for version in status.served:
                    local.load(status.name, version)
                local.load(status.name)
                state.ready = True
            except EdgecloudError as exc:
                state.error = exc.message
        states[status.name] = state
    return states


class ServedTrace(Trace):
    """The trace of a request this server computed: a queue span and a compute span,
    made when first read (most answers' traces are never read: only the edge
    gateway's ``expose_trace`` and in-process callers look; issue 17 asked for
    trace objects nobody reads not to be allocated per request)."""

    __slots__ = ("_batch", "_compute", "_queued", "_spans")

    def __init__(self, label: str, queued: float, compute: float, batch: int) -> None:
        self.served_by = label
        self._queued, self._compute, self._batch = queued, compute, batch
        self._spans: list[Span] | None = None

    @property
    def spans(self) -> list[Span]:
        """``[queue, compute]`` spans, made once (appends to the list are kept)."""
        if self._spans is None:
            label = self.served_by
            self._spans = [
                Span(label, "queue", self._queued),
                Span(label, "compute", self._compute, f"batch of {self._batch}"),
            ]
        return self._spans

    @spans.setter
    def spans(self, value: list[Span]) -> None:
        self._spans = value


class ModelHost:
    """Serve every model of a repository: load, batch, dedupe, trace."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: ServerSettings,
        metrics: ServerMetrics | None = None,
        *,
        control_dir: Path | None = None,
        worker: int = 0,
        seat: CoreSeat | None = None,
    ) -> None:
        """``control_dir``, ``worker``: the serve run's private model-control directory
        and this worker's index, with ``--workers N`` (:mod:`.model_control`); None: one
        process, whose explicit wanted set lives in memory. ``seat``: this worker's
        place in the cores the workers share (:mod:`.cores`), which lets its batchers
        of CPU models run beyond its share of runner slots while cores idle."""
        self.repository = repository
        self.seat = seat
        self.settings = settings
        self.metrics = metrics or ServerMetrics()
        self.local = LocalBackend(
            repository,
            intra_op_threads=settings.intra_op_threads or None,
            device=settings.device,
            spin=False,  # the cores are shared: other workers, this event loop (workers.py)
            # a server hashes every file it loads: start-up time is not what it saves
            # (the verified-hash record is the edge's: edgecloud._verified)
            verify="full",
        )
        self.control = ModelControl(self, control_dir, worker)
        """Model control (``settings.model_control``) and the repository extension."""
        self.executor = ThreadPoolExecutor(
            max_workers=settings.worker_threads, thread_name_prefix="edgecloud-infer"
        )
        self.idempotency = open_idempotency(settings, repository.root, self.metrics)
        self._batchers: dict[int, DynamicBatcher] = {}
        """Per session (``id`` of its LoadedModel, which the batcher holds, so the id
        is not reused while it is here): a reloaded version with the same number
        and label gets a batcher of its own."""
        self._retiring: set[asyncio.Task[None]] = set()
        self._computing: set[asyncio.Future[InferResponse]] = set()
        self._costs: dict[str, tuple[weakref.ref[Any], RunCost]] = {}
        self._names: dict[str, tuple[str, str, str]] = {}  # label -> (model, version, trace label)
        self._model_metrics: dict[str, tuple[Any, ...]] = {}
        self._ticks: dict[str, TickBatcher] = {}
        self.states: dict[str, ModelState] = {}

    # -- lifecycle -------------------------------------------------------------

    def load_all(self) -> list[ModelState]:
        """Load what the model control mode loads at start: every served version
        (``none``, :func:`model_states`; ``poll``) or ``load_models`` (``explicit``);
        a model that fails is recorded, not fatal."""
        if self.settings.model_control == "none":
            self.states = model_states(self.repository, self.local)
            return list(self.states.values())
        return self.control.start()

    async def close(self) -> None:
        await self.control.close()
        await self.idempotency.close()
        if self._computing:  # computations that outlived their callers' timeouts
            await asyncio.gather(*list(self._computing), return_exceptions=True)
        for batcher in self._batchers.values():
            await batcher.close()
        for task in list(self._retiring):
            await task
        self.executor.shutdown(wait=True)
        self.metrics.deferred.flush()
        self.local.close()

    # -- queries ---------------------------------------------------------------

    def config(self, model: str) -> ModelConfig:
        state = self.states.get(model)
        if state is None:
            raise ModelNotFoundError(
                f"no model {clip(model)} on this server "
                f"(models: {', '.join(self.states) or 'none'})"
            )
        return self.repository.config(model)

    def ready(self, model: str, version: str | None = None) -> bool:
        """Whether ``model`` (at ``version``) can serve: :meth:`ModelState.serves`;
        False for a model not here."""
        state = self.states.get(model)
        return state is not None and state.serves(version)

    # -- inference -------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        """Answer one request within the timeout; a keyed one at most once
        (see :mod:`.idempotency`: replays, 422 for a reused key, 503 when the
        store is unusable).

        The timeout bounds the caller's wait, not the computation: a
        computation, once started, runs to its end as a task of its own and is
        counted (``edgecloud_computations_started_total`` /
        ``edgecloud_computations_total``, ``..._late_total`` for one that ended
        after its caller's 504). A keyed one then stores its answer under the
        key, so a retry that arrives while it runs shares it and one that
        arrives after gets the replay — one computation however often a caller
        that times out re-sends. An unkeyed one's answer is dropped: an
        onnxruntime run cannot be interrupted, and a request queued in a
        batcher is computed with its batch, so cancelling would save nothing.
        """
        outcome = self.infer_nowait(request)
        if isinstance(outcome, InferResponse):
            return outcome
        response: InferResponse = await cast("asyncio.Future[InferResponse]", outcome)
        return response

    def infer_nowait(
        self, request: InferRequest, waiter: Waiter | None = None
    ) -> InferResponse | asyncio.Future[InferResponse] | Waiter:
        """:meth:`infer` without a coroutine of its own: the answer itself when the
        request ran inline on the event loop, else a future of it (a tick-batched
        request's resolves at the end of this loop iteration; anything else runs
        as a task under the server's timeout). Refusals found before anything runs
        (unknown model, invalid inputs) are raised here; later errors resolve the
        future. The HTTP fast lane (:mod:`.protocol`) answers from here without an
        ASGI task per request; :meth:`infer` awaits the same.

        Raises:
            EdgecloudError: the request is refused before it runs (its status code).
        """
        keyed = bool(request.context.idempotency_key) and self.settings.idempotency_window_s > 0
        if keyed:
            waiting = self.idempotency.run(request, lambda: self._computed(request))
        else:
            loaded, size = self._prepare(request)
            elements = input_elements(request.inputs)
            if self._inline(loaded, elements):
                # Nothing to time out: the run is shorter than a hand-off, and a
                # merged one ends within this loop iteration's companions.
                tick = self._tick(loaded) if size else None
                if tick is not None and tick.wanted():
                    _, _, queue, compute_h, _ = self._metrics_of(loaded.entry.name)

                    def answer(
                        outputs: Arrays, queued: float, compute: float, batch: int
                    ) -> InferResponse:
                        queue.observe(queued)
                        compute_h.observe(compute)
                        return self._answer(loaded, request, outputs, queued, compute, batch)

                    return tick.submit_nowait(  # type: ignore[no-any-return]
                        request.inputs, request.outputs, size, answer, waiter, elements
                    )
                return self._answer(
                    loaded, request, *self._run_inline(loaded, request, size, elements)
                )
            waiting = self._computed(request, (loaded, size))
        return asyncio.ensure_future(self._within_timeout(waiting, keyed, request.model))

    async def _within_timeout(
        self, waiting: Awaitable[InferResponse], keyed: bool, model: str
    ) -> InferResponse:
        """The caller's wait for ``waiting``, bounded by ``request_timeout_s`` (504)."""
        timeout = self.settings.request_timeout_s
        try:
            return await asyncio.wait_for(waiting, timeout)
        except TimeoutError:
            raise DeadlineExceededError(
                f"model {clip(model)} did not answer within the server's "
                f"{timeout:g} s request timeout"
                + (
                    "; its computation goes on and its answer is stored under the "
                    "idempotency key: re-send with the same key to get it"
                    if keyed
                    else ""
                )
            ) from None

    async def _computed(
        self, request: InferRequest, prepared: tuple[LoadedModel, int] | None = None
    ) -> InferResponse:
        """:meth:`_infer` as a task of its own that a caller's timeout or
        disconnect does not cancel (only the caller's wait is cancelled)."""
        task = asyncio.ensure_future(self._infer(request, prepared))
        self._computing.add(task)
        task.add_done_callback(self._computation_done)
        return await asyncio.shield(task)

    def _computation_done(self, task: asyncio.Future[InferResponse]) -> None:
        self._computing.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller still waiting re-raises it

    def _prepare(self, request: InferRequest) -> tuple[LoadedModel, int]:
        """The loaded version a request names and its validated row count."""
        state = self.states.get(request.model)
        if state is None:
            self.config(request.model)  # raises ModelNotFoundError naming the models
        elif not state.ready and self.settings.model_control != "none":
            raise ModelLoadError(f"model {clip(request.model)} is not ready: {state.error}")
        loaded = self.local.load(request.model, request.version)
        size = loaded.validator.validate(request.inputs)
        if request.outputs or 0 < loaded.limit < size:  # refused before it counts as started
            loaded.check_request(request.outputs, size)
        return loaded, size

    async def _infer(
        self, request: InferRequest, prepared: tuple[LoadedModel, int] | None = None
    ) -> InferResponse:
        loaded, size = prepared or self._prepare(request)
        elements = input_elements(request.inputs)
        if self._inline(loaded, elements):
            return self._answer(loaded, request, *self._run_inline(loaded, request, size, elements))
        started = time.perf_counter()
        started_counter, done_counter, *_ = self._metrics_of(loaded.entry.name)
        started_counter.inc()
        outputs, queued, compute, batch = await self._run(loaded, request, size, started)
        done_counter.inc()
        if time.perf_counter() - started > self.settings.request_timeout_s:
            self.metrics.computations_late.labels(loaded.entry.name).inc()
        return self._answer(loaded, request, outputs, queued, compute, batch)

    def _answer(
        self, loaded: LoadedModel, request: InferRequest, outputs: Arrays,
        queued: float, compute: float, batch: int,
    ) -> InferResponse:  # fmt: skip
        names = self._names.get(loaded.label)
        if names is None:
            entry = loaded.entry
            names = self._names[loaded.label] = (
                entry.name, str(entry.version), f"server:{entry.name}/{entry.version}"
            )  # fmt: skip
        return InferResponse(
            model=names[0],
            version=names[1],
            outputs=outputs,
            trace=ServedTrace(names[2], queued, compute, batch),
            id=request.id,
        )

    def cost(self, loaded: LoadedModel) -> RunCost:
        """The measured run cost of a loaded version (see :class:`RunCost`).

        Bound to the session, not only the label: a version swapped in under
        the same number (model control, a changed file) starts unmeasured, so
        a fast predecessor's runs never send a slow successor inline.
        """
        entry = self._costs.get(loaded.label)
        if entry is None or entry[0]() is not loaded.session:
            entry = self._costs[loaded.label] = (weakref.ref(loaded.session), RunCost())
        return entry[1]

    def _inline(self, loaded: LoadedModel, elements: int) -> bool:
        """Whether a validated request of ``elements`` input elements runs on the event
        loop (:class:`RunCost`)."""
        return not loaded.strings and self.cost(loaded).inline(elements)

    def _metrics_of(self, model: str) -> tuple[Any, ...]:
        """The per-model metric children, looked up once: ``labels()`` takes a
        lock and hashes its arguments (~1.5 us each, 5 per request)."""
        children = self._model_metrics.get(model)
        if children is None:
            m, deferred = self.metrics, self.metrics.deferred
            children = self._model_metrics[model] = (
                deferred.counter(m.computations_started.labels(model)),
                deferred.counter(m.computations.labels(model)),
                deferred.histogram(m.queue.labels(model)),
                deferred.histogram(m.compute.labels(model)),
                deferred.histogram(m.batch_size.labels(model)),
            )
        return children

    def _run_inline(
        self, loaded: LoadedModel, request: InferRequest, size: int, elements: int
    ) -> tuple[Arrays, float, float, int]:
        """Run a measured-fast version on the event loop: outputs, queue 0, compute s, rows."""
        started_counter, done_counter, queue, compute_h, batch_h = self._metrics_of(
            loaded.entry.name
        )
        started_counter.inc()
        started = time.perf_counter()
        outputs = loaded.run(request.inputs, request.outputs, size)
        compute = time.perf_counter() - started
        self.cost(loaded).add(compute, elements)
        done_counter.inc()
        queue.observe(0.0)
        compute_h.observe(compute)
        for rows in loaded.runtime_calls(size):  # an empty batch makes none (LoadedModel.run)
            batch_h.observe(rows)
        return outputs, 0.0, compute, size

    async def _run(
        self, loaded: LoadedModel, request: InferRequest, size: int, started: float
    ) -> tuple[Arrays, float, float, int]:
        """Outputs, queue seconds, compute seconds and batch rows of one validated request."""
        batcher = self._batcher(loaded)
        if batcher is not None:
            outputs, queued, compute, batch = await batcher.submit(
                request.inputs, request.outputs, size
            )
        else:
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(
                self.executor, self._timed_run, loaded, request, size
            )
            queued, compute, batch = 0.0, time.perf_counter() - started, size
            batch_h = self._metrics_of(loaded.entry.name)[4]
            for rows in loaded.runtime_calls(size):  # an empty batch makes none
                batch_h.observe(rows)
        # (a batcher observes edgecloud_batch_size itself: once per merged run)
        _, _, queue, compute_h, _ = self._metrics_of(loaded.entry.name)
        queue.observe(queued)
        compute_h.observe(compute)
        return outputs, queued, compute, batch

    def _timed_run(self, loaded: LoadedModel, request: InferRequest, size: int) -> Arrays:
        """``loaded.run`` in a pool thread, its duration recorded in :meth:`cost`."""
        started = time.perf_counter()
        outputs = loaded.run(request.inputs, request.outputs, size)
        self.cost(loaded).add(time.perf_counter() - started, input_elements(request.inputs))
        return outputs

    def _tick(self, loaded: LoadedModel) -> TickBatcher | None:
        """The tick batcher of a measured-fast version (:class:`TickBatcher`), made on
        first use; None where requests are not merged (dynamic batching off, or a
        model without a batch dimension)."""
        if not self.settings.dynamic_batching or loaded.limit <= 0:
            return None
        entry = self._ticks.get(loaded.label)
        if entry is not None and entry.loaded is loaded:
            return entry
        started, done, _, _, batch_h = self._metrics_of(loaded.entry.name)

        def on_done(requests: int, rows: int) -> None:
            done.inc(requests)
            for part in loaded.runtime_calls(rows):
                batch_h.observe(part)

        tick = self._ticks[loaded.label] = TickBatcher(
            loaded, self.cost(loaded), on_start=started.inc, on_done=on_done
        )
        return tick

    def _batcher(self, loaded: LoadedModel) -> DynamicBatcher | None:
        """The batcher of a loaded version, made on first use.

        One per version whose session LocalBackend holds: when a new one is
        made, those of versions LocalBackend has let go (no longer served) are
        closed after their queues drain, so hot-swapped versions leave nothing
        behind.
        """
        if not self.settings.dynamic_batching or loaded.limit <= 0:
            return None
        batcher = self._batchers.get(id(loaded))
        if batcher is None:
            self._retire_batchers()
            config = loaded.entry.config.dynamic_batching
            batcher = self._batchers[id(loaded)] = DynamicBatcher(
                loaded,
                self.executor,
                max_batch_size=loaded.limit,
                max_queue_delay_us=config.max_queue_delay_us if config else 0,
                preferred_batch_sizes=config.preferred_batch_sizes if config else (),
                concurrency=self.settings.runners_per_model,
                seat=self.seat if loaded.device == "cpu" else None,
                threads=self.settings.intra_op_threads or available_cores(),
                # a slot beyond the pool's threads would wait for one, booking a core
                most=min(self.settings.worker_threads, self.seat.runners) if self.seat else None,
                on_borrow=self.metrics.borrowed_batches.labels(loaded.entry.name).inc,
                observe=self.cost(loaded).add,
                # called in pool threads: the child itself, not the loop's deferred view
                on_batch=_per_runtime_call(
                    loaded, self.metrics.batch_size.labels(loaded.entry.name)
                ),
            )
        return batcher

    def retire_batchers(self) -> None:
        """Close, once drained, the batchers of versions no longer served (after a swap)."""
        self._retire_batchers()

    def _retire_batchers(self) -> None:
        held = {id(m) for m in self.local.loaded()}
        for label in [k for k, tick in self._ticks.items() if id(tick.loaded) not in held]:
            del self._ticks[label]  # a queued flush still runs: it holds what it needs
        for key in [key for key in self._batchers if key not in held]:
            task = asyncio.create_task(self._batchers.pop(key).close())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)


def _per_runtime_call(loaded: LoadedModel, child: Any) -> Callable[[int], None]:
    """``on_batch(rows)`` for a batcher: one observation per runtime call that
    ``loaded.run`` makes for ``rows`` (a request above ``max_batch_size`` makes several)."""

    def observe(rows: int) -> None:
        for part in loaded.runtime_calls(rows):
            child.observe(part)

    return observe


def open_idempotency(
    settings: ServerSettings, serving: Path, metrics: ServerMetrics
) -> IdempotentRunner:
    """The idempotency store ``settings`` describe, opened (failures logged, not raised).

    Without ``settings.idempotency_db`` the file is
    :func:`~.idempotency.default_store_path` of ``serving`` (the model
    repository, or the deployment file of a gateway).
    """
    path = settings.idempotency_db or default_store_path(serving)

    def open_store() -> IdempotencyStore:
        return IdempotencyStore(
            path,
            window_s=settings.idempotency_window_s,
            max_entries=settings.idempotency_max_entries,
            max_bytes=settings.idempotency_max_bytes,
            synchronous=settings.idempotency_synchronous,
        )

    runner = IdempotentRunner(
        open_store,
        describe=str(path),
        metrics=metrics,
        stale_after_s=settings.request_timeout_s + CLAIM_GRACE_S,
    )
    if settings.idempotency_window_s > 0:
        runner.open()
    return runner
