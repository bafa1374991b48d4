"""uvicorn's httptools protocol with a response's writes handed to the kernel as one.

uvicorn writes a response's status line and headers (``http.response.start``)
and its body (``http.response.body``) with two ``transport.write`` calls;
uvloop sends each at once, so a small response costs two ``send`` system
calls and two TCP segments, and the client wakes for each. Under wrk c=64
on digits-small those writes were 15-31 % of the event loop's time (py-spy,
bench/server.py's headline case), the largest single item per request.

:class:`CoalescingTransport` holds a connection's writes until the end of
the loop iteration they were made in (``call_soon``) and hands them over
together (one ``writev`` on uvloop): the header block and the body of a
response leave in one ``send``, as do the responses to pipelined requests
answered in one iteration. Closing and half-closing send what is held
first, aborting drops it, so the order of bytes on the connection never
changes. Because ``call_soon`` callbacks run in the order they were made,
the metric updates a request recorded before its answer was written
(:class:`~.metrics.Deferred`) reach prometheus-client's files before the
answer leaves: a worker SIGKILLed after a client got its answer has counted
it. Everything else is uvicorn's: the parser, keep-alive, pipelining, flow
control, limits, ``Expect: 100-continue``, graceful shutdown.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from .._optional import require

_httptools_impl = require(
    "uvicorn.protocols.http.httptools_impl", extra="server", feature="edgecloud serve"
)
HttpToolsProtocol: Any = _httptools_impl.HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol", "CoalescingTransport"]


class CoalescingTransport:
    """A transport whose writes within one event-loop iteration leave as one.

    Wraps the connection's transport (TCP or TLS); every other attribute is the
    wrapped transport's. ``get_write_buffer_size`` counts the bytes held.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` at the end of this iteration, after what is held."""
        held = self._held
        if not held:
            self._loop.call_soon(self._flush)
        held.append(bytes(data))

    def _flush(self) -> None:
        held = self._held
        if not held:
            return
        self._held = []
        if self._transport.is_closing():
            return
        if len(held) == 1:
            self._transport.write(held[0])
        else:  # one writev on uvloop
            self._transport.writelines(held)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        held = sum(len(chunk) for chunk in self._held)
        return int(self._transport.get_write_buffer_size()) + held

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
    """uvicorn's ``HttpToolsProtocol`` over a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))
