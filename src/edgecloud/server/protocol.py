"""uvicorn's httptools protocol with a response's writes handed to the kernel as one.

uvicorn writes a response's status line and headers (``http.response.start``)
and its body (``http.response.body``) with two ``transport.write`` calls;
uvloop sends each at once, so a small response costs two ``send`` system
calls and two TCP segments, and the client wakes for each. Under wrk c=64
on digits-small those writes were 15-31 % of the event loop's time (py-spy,
bench/server.py's headline case), the largest single item per request.

:class:`CoalescingTransport` keeps the first write of a loop iteration and
joins the next one to it: the header block and the body of a response leave
in one ``send`` when the body follows within the same iteration (a plain
ASGI app sends both messages without waiting in between); a write that is
not followed by another is sent at the end of the iteration (``call_soon``),
before anything else of the connection can happen. Closing, aborting and
half-closing send (or drop, for abort) what is held first, so the order of
bytes on the connection never changes. Everything else is uvicorn's: the
parser, keep-alive, pipelining, flow control, limits, ``Expect:
100-continue``, graceful shutdown.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` after what is held: joined to it now, or held until the
        end of this iteration when nothing is."""
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._held = None
            self._transport.write(held + data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        held = self._held
        return self._transport.get_write_buffer_size() + (len(held) if held else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` over a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))
