"""The fast lane's waiter (server/http.py ``_LaneWaiter``): one answer, counted once."""

from __future__ import annotations

from typing import Any

import pytest

from edgecloud.server.http import _LaneWaiter


class _Cycle:
    def __init__(self) -> None:
        self.replies: list[int] = []

    def reply(self, status: int, body: bytes, headers: Any) -> None:
        if not self.replies:  # as _FastCycle.reply: the first answer only
            self.replies.append(status)


class _App:
    def __init__(self, answer_fails_after_reply: bool) -> None:
        self.counted: list[int] = []
        self.fails = answer_fails_after_reply

    def _direct_answer(self, cycle: _Cycle, *args: Any) -> None:
        self.counted.append(200)
        cycle.reply(200, b"{}", [])
        if self.fails:
            raise RuntimeError("after the answer")

    def _direct_failed(self, cycle: _Cycle, *args: Any) -> None:
        self.counted.append(500)
        cycle.reply(500, b"{}", [])


class _Decoded:
    class request:  # a stand-in for DecodedRequest.request
        model = "m"


def _waiter(app: _App, cycle: _Cycle) -> Any:
    return _LaneWaiter(app, cycle, "m", 0.0, 10, _Decoded())  # type: ignore[arg-type]


def test_an_error_after_the_answer_is_neither_counted_nor_answered_twice() -> None:
    """The tick batch hands an exception raised while answering to set_exception
    (as a future's would be): the request was counted and answered already."""
    app, cycle = _App(answer_fails_after_reply=True), _Cycle()
    waiter = _waiter(app, cycle)
    with pytest.raises(RuntimeError):
        waiter.set_result(object())
    assert waiter.done()
    waiter.set_exception(RuntimeError("after the answer"))
    assert app.counted == [200] and cycle.replies == [200]


def test_an_error_before_any_answer_is_counted_and_answered_once() -> None:
    app, cycle = _App(answer_fails_after_reply=False), _Cycle()
    waiter = _waiter(app, cycle)
    assert not waiter.done()
    waiter.set_exception(ValueError("bad"))
    assert app.counted == [500] and cycle.replies == [500] and waiter.done()
