"""ModelHost: the protocol-independent core of the server.

It owns the repository's sessions (through a LocalBackend), a dynamic batcher
per model version, and the durable idempotency store (:mod:`.idempotency`);
the HTTP and gRPC front ends only translate bytes to :class:`InferRequest`
and back.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

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
from .batching import Arrays, DynamicBatcher
from .idempotency import (
    CLAIM_GRACE_S,
    IdempotencyStore,
    IdempotentRunner,
    default_store_path,
)
from .metrics import ServerMetrics
from .model_control import ModelControl, desired_set_path
from .settings import ServerSettings

__all__ = ["ModelHost", "ModelState", "model_states", "open_idempotency"]


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


class ModelHost:
    """Serve every model of a repository: load, batch, dedupe, trace."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: ServerSettings,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics or ServerMetrics()
        self.local = LocalBackend(
            repository, intra_op_threads=settings.intra_op_threads or None, device=settings.device
        )
        store = settings.idempotency_db or default_store_path(repository.root)
        self.control = ModelControl(self, desired_set_path(store))
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
        keyed = bool(request.context.idempotency_key) and self.settings.idempotency_window_s > 0
        if keyed:
            waiting = self.idempotency.run(request, lambda: self._computed(request))
        else:
            waiting = self._computed(request)
        timeout = self.settings.request_timeout_s
        try:
            return await asyncio.wait_for(waiting, timeout)
        except TimeoutError:
            raise DeadlineExceededError(
                f"model {clip(request.model)} did not answer within the server's "
                f"{timeout:g} s request timeout"
                + (
                    "; its computation goes on and its answer is stored under the "
                    "idempotency key: re-send with the same key to get it"
                    if keyed
                    else ""
                )
            ) from None

    async def _computed(self, request: InferRequest) -> InferResponse:
        """:meth:`_infer` as a task of its own that a caller's timeout or
        disconnect does not cancel (only the caller's wait is cancelled)."""
        task = asyncio.ensure_future(self._infer(request))
        self._computing.add(task)
        task.add_done_callback(self._computation_done)
        return await asyncio.shield(task)

    def _computation_done(self, task: asyncio.Future[InferResponse]) -> None:
        self._computing.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller still waiting re-raises it

    async def _infer(self, request: InferRequest) -> InferResponse:
        state = self.states.get(request.model)
        if state is None:
            self.config(request.model)  # raises ModelNotFoundError naming the models
        elif not state.ready and self.settings.model_control != "none":
            raise ModelLoadError(f"model {clip(request.model)} is not ready: {state.error}")
        loaded = self.local.load(request.model, request.version)
        size = loaded.validator.validate(request.inputs)
        started = time.perf_counter()
        model = loaded.entry.name  # a model that exists: metric labels are never the caller's
        self.metrics.computations_started.labels(model).inc()
        outputs, queued, compute, batch = await self._run(loaded, request, size, started)
        self.metrics.computations.labels(model).inc()
        if time.perf_counter() - started > self.settings.request_timeout_s:
            self.metrics.computations_late.labels(model).inc()
        label = f"server:{loaded.entry.name}/{loaded.entry.version}"
        spans = [Span(label, "queue", queued), Span(label, "compute", compute, f"batch of {batch}")]
        return InferResponse(
            model=loaded.entry.name,
            version=str(loaded.entry.version),
            outputs=outputs,
            trace=Trace(label, spans),
            id=request.id,
        )

    async def _run(
        self, loaded: LoadedModel, request: InferRequest, size: int, started: float
    ) -> tuple[Arrays, float, float, int]:
        """Outputs, queue seconds, compute seconds and batch rows of one validated request."""
        batcher = self._batcher(loaded)
        if batcher is not None:
            outputs, queued, compute = await batcher.submit(request.inputs, request.outputs, size)
            batch = batcher.stats.last_batch_size
        else:
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(
                self.executor, loaded.run, request.inputs, request.outputs, size
            )
            queued, compute, batch = 0.0, time.perf_counter() - started, size
        model = loaded.entry.name
        self.metrics.queue.labels(model).observe(queued)
        self.metrics.compute.labels(model).observe(compute)
        self.metrics.batch_size.labels(model).observe(batch)
        return outputs, queued, compute, batch

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
            )
        return batcher

    def retire_batchers(self) -> None:
        """Close, once drained, the batchers of versions no longer served (after a swap)."""
        self._retire_batchers()

    def _retire_batchers(self) -> None:
        held = {id(m) for m in self.local.loaded()}
        for key in [key for key in self._batchers if key not in held]:
            task = asyncio.create_task(self._batchers.pop(key).close())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)


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
