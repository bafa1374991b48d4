"""Deferred metric updates: what /metrics shows is what per-request updates would show."""

from __future__ import annotations

import asyncio
import math

from edgecloud.server.metrics import LATENCY_BUCKETS, ServerMetrics

VALUES = [0.0, 0.0005, 0.00050001, 1, 10, 11, math.inf, -1.0, 3e-7, 0.02, 0.02, 5, math.nan]


def _exposition(metrics: ServerMetrics) -> list[str]:
    return [
        line
        for line in metrics.exposition().decode().splitlines()
        if not line.startswith("#") and "_created" not in line
    ]


def test_deferred_updates_expose_what_direct_updates_would() -> None:
    direct, deferred = ServerMetrics(), ServerMetrics()
    for value in VALUES + list(LATENCY_BUCKETS):
        direct.latency.labels("m", "http").observe(value)
        direct.requests.labels("m", "http", "200").inc()
    direct.requests.labels("m", "http", "200").inc(2.5)

    async def record() -> None:
        latency = deferred.deferred.histogram(deferred.latency.labels("m", "http"))
        count = deferred.deferred.counter(deferred.requests.labels("m", "http", "200"))
        for value in VALUES + list(LATENCY_BUCKETS):
            latency.observe(value)
            count.inc()
        count.inc(2.5)
        await asyncio.sleep(0)  # the flush runs at the end of the iteration

    asyncio.run(record())
    assert _exposition(deferred) == _exposition(direct)


def test_a_flush_is_due_by_the_next_iteration_and_an_exposition_flushes_first() -> None:
    metrics = ServerMetrics()
    child = metrics.requests.labels("m", "grpc", "200")

    async def record() -> None:
        count = metrics.deferred.counter(child)
        count.inc()
        assert child._value.get() == 0, "applied per update, not per iteration"
        await asyncio.sleep(0)
        assert child._value.get() == 1
        count.inc()
        assert 'edgecloud_requests_total{code="200",model="m",protocol="grpc"} 2.0' in (
            metrics.exposition().decode()
        )

    asyncio.run(record())


def test_without_an_event_loop_an_update_is_applied_at_once() -> None:
    metrics = ServerMetrics()
    child = metrics.queue.labels("m")
    metrics.deferred.histogram(child).observe(0.25)
    assert child._sum.get() == 0.25
