"""The end-of-iteration tail (edgecloud.server.tail): order, one handle, failures, metrics first."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from edgecloud.server.metrics import Deferred
from edgecloud.server.protocol import CoalescingTransport
from edgecloud.server.tail import Tail, tail_of


async def _iteration() -> None:
    """Let the loop finish the iteration in progress and run the callbacks it queued."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_callbacks_run_in_order_at_the_end_of_the_iteration() -> None:
    tail = tail_of(asyncio.get_running_loop())
    ran: list[str] = []
    tail.add(lambda: ran.append("a"))
    tail.add(lambda: ran.append("b"))
    assert ran == []  # not before the iteration ends
    await _iteration()
    assert ran == ["a", "b"]


async def test_callbacks_added_while_it_runs_run_in_the_same_pass() -> None:
    loop = asyncio.get_running_loop()
    tail = tail_of(loop)
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        tail.add(lambda: ran.append("added while running"))
        loop.call_soon(lambda: ran.append("next iteration"))

    tail.add(first)
    await _iteration()
    assert ran == ["first", "added while running", "next iteration"]


async def test_one_loop_handle_per_iteration_however_many_callbacks() -> None:
    loop = asyncio.get_running_loop()
    tail = Tail(loop)
    scheduled: list[Any] = []
    original = loop.call_soon

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        scheduled.append(callback)
        return original(callback, *args, **kwargs)

    loop.call_soon = counting  # type: ignore[method-assign]
    try:
        for _ in range(100):
            tail.add(lambda: None)
    finally:
        loop.call_soon = original  # type: ignore[method-assign]
    assert len(scheduled) == 1
    await _iteration()


async def test_a_failing_callback_is_reported_and_the_others_run() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        tail = tail_of(loop)
        ran: list[int] = []
        tail.add(lambda: ran.append(1))
        tail.add(lambda: 1 / 0)
        tail.add(lambda: ran.append(3))
        await _iteration()
    finally:
        loop.set_exception_handler(None)
    assert ran == [1, 3]
    assert len(reported) == 1 and isinstance(reported[0]["exception"], ZeroDivisionError)


async def test_first_callbacks_overtake_those_queued_before_them() -> None:
    tail = tail_of(asyncio.get_running_loop())
    ran: list[str] = []
    tail.add(lambda: ran.append("write"))
    tail.add(lambda: ran.append("metrics"), first=True)

    def during() -> None:
        ran.append("tick")
        tail.add(lambda: ran.append("late metrics"), first=True)

    tail.add(during)
    tail.add(lambda: ran.append("late write"))
    await _iteration()
    assert ran == ["metrics", "write", "tick", "late metrics", "late write"]


class _RecordingTransport:
    """A transport that notes, for each send, what the counter held when it left."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self.sent: list[tuple[bytes, float]] = []

    def write(self, data: bytes) -> None:
        self.sent.append((data, self.counter._value.get()))

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def write_eof(self) -> None:
        pass


def _counted_connection() -> tuple[Any, _RecordingTransport, CoalescingTransport]:
    """A deferred counter, and a connection whose sends note what it held at the time."""
    child = Counter("answers", "answers", registry=CollectorRegistry())
    raw = _RecordingTransport(child)
    transport = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    return Deferred().counter(child), raw, transport


async def test_a_response_never_leaves_before_its_metric_updates() -> None:
    """The case FIFO handles got wrong: a connection's flush was queued (an answer
    written before any metric update of the iteration), then a request updated its
    metrics and wrote its answer on the same connection. Its bytes leave with the
    flush queued first, and must find its count applied."""
    counter, raw, transport = _counted_connection()
    transport.write(b"first answer")  # queues the connection's flush
    counter.inc()  # a request counts itself...
    transport.write(b"second answer")  # ...then answers on the same connection
    await _iteration()
    assert raw.sent == [(b"first answersecond answer", 1.0)]


@pytest.mark.parametrize("how", ["close", "write_eof"])
async def test_an_answer_sent_at_once_by_a_close_carries_its_counts(how: str) -> None:
    """A connection closed (Connection: close, HTTP/1.0, a shutdown) or half-closed
    right after its answer sends what it holds at once, outside the tail: the
    metric updates made before must be applied first."""
    counter, raw, transport = _counted_connection()
    counter.inc()
    transport.write(b"answer")
    getattr(transport, how)()
    assert raw.sent == [(b"answer", 1.0)]
    await _iteration()  # the tail's own pass finds nothing left to apply twice
    assert raw.counter._value.get() == 1.0


async def test_a_tail_does_not_keep_its_loop_alive() -> None:
    loop = asyncio.new_event_loop()
    tail_of(loop)
    loop.close()
    tail_of(asyncio.get_running_loop())  # the module's last-used cache moves on
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None


def test_a_tail_of_a_closed_loop_schedules_nothing() -> None:
    loop = asyncio.new_event_loop()
    tail = Tail(loop)
    loop.close()
    tail.add(lambda: None)  # no RuntimeError from call_soon on a closed loop


@pytest.mark.parametrize("first", [False, True])
async def test_a_base_exception_leaves_the_rest_for_the_next_pass(first: bool) -> None:
    tail = Tail(asyncio.get_running_loop())
    ran: list[str] = []

    def stop() -> None:
        raise KeyboardInterrupt

    tail.add(stop, first=first)
    tail.add(lambda: ran.append("after"))
    with pytest.raises(KeyboardInterrupt):
        tail._run()
    assert ran == []
    await _iteration()
    assert ran == ["after"]
