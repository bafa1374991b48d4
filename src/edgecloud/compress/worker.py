"""Long compression steps in a worker process: a time limit that holds, and progress.

A Python thread cannot be stopped, and third-party converters can loop forever
(onnxconverter-common's float16 converter did on Silero VAD's subgraphs), so
:func:`run_limited` runs the step in a ``multiprocessing`` *spawn* worker and
kills it when ``limit_s`` passes. While it runs, the worker's own progress
reports are forwarded, and between them the caller hears the elapsed time
every half second, so a long step never looks like a hang.

Errors cross the process boundary as edgecloud errors (they pickle); any
other exception becomes a :class:`CompressionError` with :func:`reason` as its
text — never an empty one.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar, cast

from ..errors import (
    CompressionError,
    ConfigError,
    DeadlineExceededError,
    EdgecloudError,
    describe,
)

__all__ = ["Progress", "run_limited"]

T = TypeVar("T")
Progress = Callable[[float, str], None]

TICK_S = 0.5
"""How often the caller hears the elapsed time while the worker is silent."""


def _child(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Worker entry point: run ``fn(*args, progress)`` and send back its result or error."""

    def progress(fraction: float, text: str) -> None:
        conn.send(("progress", (float(fraction), str(text))))

    try:
        conn.send(("result", fn(*args, progress)))
    except EdgecloudError as exc:
        conn.send(("error", type(exc)(exc.message)))
    except BaseException as exc:  # anything a converter raises, KeyboardInterrupt included
        conn.send(("error", CompressionError(describe(exc))))
    finally:
        conn.close()


def run_limited(
    fn: Callable[..., T],
    args: tuple[Any, ...],
    *,
    limit_s: float | None,
    what: str,
    progress: Progress | None = None,
) -> T:
    """``fn(*args, progress)`` in a spawn worker, killed after ``limit_s`` seconds.

    ``fn`` and ``args`` must pickle (a module-level function; plain data).
    Raises :class:`DeadlineExceededError` when the limit passes (the worker is
    killed), the worker's edgecloud error as it was raised, or
    :class:`CompressionError` when the worker dies without an answer.
    """
    if limit_s is not None and limit_s <= 0:
        raise ConfigError(f"the time limit must be positive, got {limit_s:g} s")
    report = progress or (lambda fraction, text: None)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    worker = context.Process(target=_child, args=(sender, fn, args), daemon=True)
    started = time.monotonic()
    worker.start()
    sender.close()
    try:
        return cast(T, _wait(worker, receiver, started, limit_s, what, report))
    finally:
        if worker.is_alive():
            worker.kill()
        worker.join()
        receiver.close()


def _wait(
    worker: Any,
    receiver: Connection,
    started: float,
    limit_s: float | None,
    what: str,
    report: Progress,
) -> Any:
    fraction, text = 0.0, what
    while True:
        elapsed = time.monotonic() - started
        if limit_s is not None and elapsed >= limit_s:
            raise DeadlineExceededError(
                f"{what} did not finish within the time limit of {limit_s:g} s "
                f"(at: {text}); it was stopped and the repository is unchanged"
            )
        wait = TICK_S if limit_s is None else min(TICK_S, limit_s - elapsed)
        if receiver.poll(max(wait, 0.0)):
            try:
                kind, payload = receiver.recv()
            except EOFError:
                raise CompressionError(
                    f"{what} stopped without an answer (worker exit code {worker.exitcode})"
                ) from None
            if kind == "result":
                return payload
            if kind == "error":
                raise payload
            fraction, text = payload
        elif not worker.is_alive() and not receiver.poll():
            raise CompressionError(
                f"{what} stopped without an answer (worker exit code {worker.exitcode})"
            )
        report(fraction, f"{text} ({time.monotonic() - started:.0f} s)")
