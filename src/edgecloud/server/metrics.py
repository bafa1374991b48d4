"""Prometheus metrics of the server, on a registry of its own (one per server).

Every label value is a series kept until the process ends, so no request may
create one: the ``model`` label only ever holds the name of a model the
server (or gateway) has; requests naming any other model share the series
whose ``model`` is empty (:data:`UNKNOWN_MODEL`). The other labels come from
closed sets (protocol, HTTP status code).
"""

from __future__ import annotations

import asyncio
import math
import os
from bisect import bisect_left
from collections.abc import Container
from pathlib import Path
from typing import Any

from .._optional import require
from .tail import tail_of

_prometheus = require("prometheus_client", extra="server", feature="the server's /metrics")
CollectorRegistry = _prometheus.CollectorRegistry
Counter = _prometheus.Counter
Histogram = _prometheus.Histogram
generate_latest = _prometheus.generate_latest
_values = require("prometheus_client.values", extra="server", feature="the server's /metrics")
_multiprocess = require(
    "prometheus_client.multiprocess", extra="server", feature="the server's /metrics"
)

#: Set (by :mod:`.workers`) before prometheus-client is imported, it puts every
#: metric of the process in files of that directory, one per process.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

__all__ = [
    "MULTIPROC_ENV",
    "UNKNOWN_MODEL",
    "Deferred",
    "DeferredCounter",
    "DeferredHistogram",
    "RequestMetrics",
    "ServerMetrics",
    "model_label",
    "use_multiprocess",
]

#: The ``model`` label of requests for a model that does not exist here.
UNKNOWN_MODEL = ""


def use_multiprocess(directory: Path) -> None:
    """Put every metric this process (and each process it forks) makes from now on
    in files of ``directory``, for :meth:`ServerMetrics.exposition` to merge.

    prometheus-client reads ``PROMETHEUS_MULTIPROC_DIR`` once, at import; a
    supervisor that imported it already sets the variable and chooses the
    value class again (what the variable would have chosen at import).
    """
    os.environ[MULTIPROC_ENV] = str(directory)
    vars(_values)["ValueClass"] = _values.MultiProcessValue(process_identifier=_pid)


_process = [os.getpid()]


def _pid() -> int:
    """This process's id, kept by a fork hook rather than asked of the kernel.

    prometheus-client's multiprocess value calls its process identifier (by
    default ``os.getpid``, a system call) on every ``inc`` to notice a fork;
    12 increments per infer request made that check 10 % of a worker's event
    loop under wrk c=64 on digits-small (py-spy, bench/server.py's headline
    case). Every increment is still written to the mmap'd file at once (a
    SIGKILLed worker's counts stay); only the question "did we fork?" is
    answered by ``os.register_at_fork`` instead. (A fork that bypasses
    Python's hooks and keeps running Python would share the parent's files:
    CPython's ``os.fork`` and multiprocessing's fork both run the hooks.)
    """
    return _process[0]


def _after_fork() -> None:
    _process[0] = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def model_label(model: str, known: Container[str]) -> str:
    """``model`` when it is one of ``known`` (the models served), else :data:`UNKNOWN_MODEL`."""
    return model if model in known else UNKNOWN_MODEL


class DeferredCounter:
    """A counter child's increments, summed in Python and applied by :class:`Deferred`."""

    __slots__ = ("_child", "_owner", "_pending")

    def __init__(self, child: Any, owner: Deferred) -> None:
        self._child, self._owner, self._pending = child, owner, 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Count ``amount`` (>= 0) now; the child sees it at the next flush."""
        first = not self._pending
        self._pending += amount
        if first:
            self._owner.mark(self)

    def apply(self) -> None:
        pending, self._pending = self._pending, 0.0
        if pending:
            self._child.inc(pending)


class DeferredHistogram:
    """A histogram child's observations, kept in a list and applied by :class:`Deferred`
    as one increment per touched bucket plus one of the sum (what as many
    ``observe`` calls would have added: the same ``le`` rule, ``value <= bound``)."""

    __slots__ = ("_bounds", "_child", "_owner", "_values")

    def __init__(self, child: Any, owner: Deferred) -> None:
        self._child, self._owner = child, owner
        self._values: list[float] = []
        bounds = getattr(child, "_upper_bounds", None)
        parts = hasattr(child, "_buckets") and hasattr(child, "_sum")
        # prometheus-client's child keeps its bounds and values in these attributes
        # (since 0.0.x; checked by tests/server/test_metrics_deferred.py): without
        # them every observation goes through observe() at the flush.
        self._bounds: list[float] | None = list(bounds) if bounds and parts else None

    def observe(self, value: float) -> None:
        """Observe ``value`` now; the child sees it at the next flush."""
        self._values.append(value)
        if len(self._values) == 1:
            self._owner.mark(self)

    def apply(self) -> None:
        values, self._values = self._values, []
        bounds, child = self._bounds, self._child
        if bounds is None or len(values) == 1:
            for value in values:
                child.observe(value)
            return
        counts: dict[int, int] = {}
        total = 0.0
        for value in values:
            if math.isnan(value):  # observe() adds it to the sum and to no bucket
                child.observe(value)
                continue
            index = bisect_left(bounds, value)
            counts[index] = counts.get(index, 0) + 1
            total += value
        if counts:
            child._sum.inc(total)
            for index, count in counts.items():
                child._buckets[index].inc(count)


class Deferred:
    """Metric updates made on the event loop, applied to prometheus-client once per
    loop iteration instead of once per request.

    A request's metric updates cost a dozen value increments (a lock each, and
    in a multi-process server an mmap write each): 5-22 % of a worker's event
    loop under wrk c=64 on digits-small (py-spy, bench/server.py's headline
    case). Here an update is a Python addition or a list append; the first
    one of an iteration queues :meth:`flush` at the end of the iteration
    (:mod:`.tail`, ahead of any connection's writes not yet sent), so the
    prometheus values (and the multi-process files) hold every request of an
    iteration before its answers leave, and an exposition flushes first.
    Only for code on the event loop's thread (the wrappers are not locked);
    pool threads update the prometheus children directly.
    """

    def __init__(self) -> None:
        self._dirty: list[DeferredCounter | DeferredHistogram] = []
        self._scheduled = False

    def counter(self, child: Any) -> DeferredCounter:
        """A deferred view of a counter child (``metric.labels(...)``)."""
        return DeferredCounter(child, self)

    def histogram(self, child: Any) -> DeferredHistogram:
        """A deferred view of a histogram child."""
        return DeferredHistogram(child, self)

    def mark(self, item: DeferredCounter | DeferredHistogram) -> None:
        """Note that ``item`` holds updates; schedule a flush unless one is due."""
        self._dirty.append(item)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a test, a tool): apply at once
            self.flush()
            return
        self._scheduled = True
        tail_of(loop).add(self.flush, first=True)

    def flush(self) -> None:
        """Apply every pending update to its prometheus child."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for item in dirty:
            item.apply()


LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Requests, errors, latency, queue time, batch sizes, computations, idempotency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deferred = Deferred()
        """Hot-path updates of this server's children (:class:`Deferred`)."""
        self.requests = Counter(
            "edgecloud_requests_total",
            "Inference requests answered.",
            ["model", "protocol", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgecloud_request_seconds",
            "Time from request received to answer ready.",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Histogram(
            "edgecloud_queue_seconds",
            "Time a request waited for its batch to start.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute = Histogram(
            "edgecloud_compute_seconds",
            "onnxruntime time of the batch that served a request.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "edgecloud_batch_size",
            "Rows per runtime call: one observation per execution of the model (a "
            "dynamic batch of merged requests counts once, with its total rows, as "
            "Triton's nv_inference_exec_count); _count is executions, _sum rows run. "
            "Requests answered without a runtime call (replays, 0-row) and executions "
            "that failed are not counted.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.borrowed_batches = Counter(
            "edgecloud_borrowed_batches_total",
            "Runtime calls that returned in a batch a worker of serve --workers N "
            "started while it already ran its share of runner slots "
            "(runners_per_model / N), on a core the other workers left free "
            "(server/cores.py): load that reached one worker (one gRPC channel is one "
            "connection, so one worker) still gets every core. Under steady load on "
            "one worker nearly every batch starts so. Never more than "
            "edgecloud_batch_size_count.",
            ["model"],
            registry=self.registry,
        )
        self.replays = Counter(
            "edgecloud_idempotent_replays_total",
            "Requests answered from the idempotency cache.",
            ["model"],
            registry=self.registry,
        )

        self.computations_started = Counter(
            "edgecloud_computations_started_total",
            "Requests handed to the runtime (validated; replays not counted). A "
            "computation runs to its end even when its caller times out.",
            ["model"],
            registry=self.registry,
        )
        self.computations = Counter(
            "edgecloud_computations_total",
            "Requests computed by the runtime to an answer, including those whose "
            "caller had timed out (replays and failures not counted).",
            ["model"],
            registry=self.registry,
        )
        self.computations_late = Counter(
            "edgecloud_computations_late_total",
            "Computations that ended after the server's request timeout: their caller "
            "got a 504; a keyed one's answer is stored for its retry, an unkeyed one's "
            "is dropped.",
            ["model"],
            registry=self.registry,
        )
        self.idempotency_evictions = Counter(
            "edgecloud_idempotency_evictions_total",
            "Stored answers evicted before their window ended, to keep the store within "
            "its bounds (a re-send of one is computed again).",
            registry=self.registry,
        )
        self.idempotency_store_errors = Counter(
            "edgecloud_idempotency_store_errors_total",
            "Keyed requests refused (503) because the idempotency store could not be "
            "opened, read or written.",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The text exposition: this process's registry, or, in a multi-process
        server (``PROMETHEUS_MULTIPROC_DIR`` set by its supervisor), every
        worker's series merged from that directory — counters and histograms
        summed over the workers, those of a worker that died and was replaced
        included (prometheus-client's multiprocess mode)."""
        self.deferred.flush()
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return bytes(generate_latest(self.registry))
        merged = CollectorRegistry()
        _multiprocess.MultiProcessCollector(merged, path=directory)
        return bytes(generate_latest(merged))


class RequestMetrics:
    """One protocol's request counter and latency children per (model, code),
    looked up once and deferred (``labels()`` takes a lock and hashes its
    arguments: ~1.5 us each). The ``model`` label follows :func:`model_label`."""

    def __init__(self, metrics: ServerMetrics, protocol: str) -> None:
        self._metrics, self._protocol = metrics, protocol
        self._children: dict[tuple[str, int], tuple[DeferredCounter, DeferredHistogram]] = {}

    def of(
        self, model: str, known: Container[str], code: int
    ) -> tuple[DeferredCounter, DeferredHistogram]:
        """(requests counter, latency histogram) of a request for ``model`` answered ``code``."""
        return self.labelled(model_label(model, known), code)

    def labelled(self, label: str, code: int) -> tuple[DeferredCounter, DeferredHistogram]:
        """(requests counter, latency histogram) for a ``model`` label already decided."""
        children = self._children.get((label, code))
        if children is None:
            m = self._metrics
            children = (
                m.deferred.counter(m.requests.labels(label, self._protocol, str(code))),
                m.deferred.histogram(m.latency.labels(label, self._protocol)),
            )
            if len(self._children) < 4096:  # labels are known models: bounded anyway
                self._children[(label, code)] = children
        return children
