"""uvicorn's httptools protocol with a response's writes handed to the kernel as one.

uvicorn writes a response's status line and headers (``http.response.start``)
and its body (``http.response.body``) with two ``transport.write`` calls;
uvloop sends each at once, so a small response costs two ``send`` system
calls and two TCP segments, and the client wakes for each. Under wrk c=64
on digits-small those writes were 15-31 % of the event loop's time (py-spy,
bench/server.py's headline case), the largest single item per request.

:class:`CoalescingTransport` holds a connection's writes until the end of
the loop iteration they were made in (:mod:`.tail`, one callback for every
connection) and hands them over together (one ``writev`` on uvloop): the
header block and the body of a response leave in one ``send``, as do the
responses to pipelined requests answered in one iteration. Closing and
half-closing send what is held first, aborting drops it, so the order of
bytes on the connection never changes. The metric updates a request recorded
before its answer was written (:class:`~.metrics.Deferred`) are applied
before the answer leaves (the tail runs them first): a worker SIGKILLed
after a client got its answer has counted it.

Beside that, three of uvicorn's per-request costs are cut, with its
behaviour kept: the keep-alive timer is armed once per idle spell, not once
per response (:meth:`CoalescingHttpToolsProtocol._keep_alive_expired`); a
response's header block up to its Content-Length is made once per status,
header list and second (:meth:`CoalescingHttpToolsProtocol.response_bytes`);
the fast lane makes uvicorn's ASGI scope only for requests it leaves.
Everything else is uvicorn's: the parser, pipelining, flow control, limits,
``Expect: 100-continue``, graceful shutdown.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import weakref
from collections.abc import Sequence
from typing import Any, Protocol, cast

from .._optional import require
from .http import CYCLE_KEY
from .tail import tail_of

_httptools_impl = require(
    "uvicorn.protocols.http.httptools_impl", extra="server", feature="edgecloud serve"
)
HttpToolsProtocol: Any = _httptools_impl.HttpToolsProtocol
FlowControl: Any = _httptools_impl.FlowControl

STATUS_LINE: dict[int, bytes] = _httptools_impl.STATUS_LINE

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_URL_BYTES",
    "PIPELINE_DEPTH",
    "CoalescingHttpToolsProtocol",
    "CoalescingTransport",
    "FastLaneProtocol",
    "fast_lane",
]


class CoalescingTransport:
    """A transport whose writes within one event-loop iteration leave as one.

    Wraps the connection's transport (TCP or TLS); every other attribute is the
    wrapped transport's. ``get_write_buffer_size`` counts the bytes held.
    """

    __slots__ = ("_held", "_tail", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._tail = tail_of(loop)
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` at the end of this iteration, after what is held."""
        held = self._held
        if not held:
            self._tail.add(self.flush)
        held.append(bytes(data))

    def flush(self) -> None:
        """Hand what is held to the transport now (after the pending metric updates)."""
        held = self._held
        if not held:
            return
        self._held = []
        if self._transport.is_closing():
            return
        self._tail.run_first()  # the metric updates made with these bytes, before they leave
        if len(held) == 1:
            self._transport.write(held[0])
        else:  # one writev on uvloop
            self._transport.writelines(held)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def get_write_buffer_size(self) -> int:
        held = sum(len(chunk) for chunk in self._held)
        return int(self._transport.get_write_buffer_size()) + held

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
    """uvicorn's ``HttpToolsProtocol`` over a :class:`CoalescingTransport`, reading no
    further from a connection with :data:`PIPELINE_DEPTH` requests queued."""

    _refused: tuple[int, str] | None = None
    #: a refusal waiting for the answers owed before it (see send_400_response)
    _refusal: tuple[tuple[int, str] | None, str] | None = None
    _header_bytes = 0
    # uvicorn's request state, typed here (its class reaches mypy as Any)
    url: bytes
    headers: list[tuple[bytes, bytes]]
    expect_100_continue: bool
    timeout_keep_alive_task: asyncio.TimerHandle | None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))
        self.flow = _CappedFlow(self.transport, self)
        self._lost = False
        self._self_ref = weakref.ref(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        super().connection_lost(exc)
        task: asyncio.TimerHandle | None = self.timeout_keep_alive_task
        self.timeout_keep_alive_task = None
        if task is not None:  # nothing of a closed connection waits for its timer
            task.cancel()
        self._abandon_queued()  # uvicorn never starts them on a closed connection

    def _after_flush(self) -> None:
        self.loop.call_soon(self._start_next)  # the next iteration: after its poll

    def _start_next(self) -> None:
        """Start the request queued next, unless the connection is gone (then every
        queued one runs as a cycle whose client is gone: counted 499, never computed)."""
        if self._lost or self.transport.is_closing():
            if self._lost:
                self._abandon_queued()
            return  # connection_lost abandons them
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._refusal is not None:  # the refusal's wait ends here too
            self._send_refusal()

    def _abandon_queued(self) -> None:
        """Requests queued behind the one in progress were read but will never run:
        each runs as a cycle whose client is gone, which the app counts (499)
        without computing it (they had been counted nowhere)."""
        while self.pipeline:
            self._abandon(*self.pipeline.pop())

    def _abandon(self, cycle: Any, app: Any) -> None:
        """Run a request that will never be answered as a cycle whose client is gone:
        the app counts it (499) and computes nothing."""
        cycle.disconnected = True
        cycle.message_event.set()
        self._start_asgi_task(cycle, app)

    # -- keep-alive: one timer per idle spell, not one per response ------------------
    # uvicorn arms a timer (call_later) after every response and cancels it when the
    # next bytes arrive; here the connection notes when it became idle, and a timer
    # armed once checks that on expiry and re-arms for what is left, so a busy
    # keep-alive connection makes a timer every timeout_keep_alive seconds, not per
    # request. The connection closes timeout_keep_alive seconds after its last
    # response, as uvicorn's does.
    _idle_since: float | None = None

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None  # bytes arrived or a request began: not idle

    def _keep_alive_expired(self) -> None:
        self.timeout_keep_alive_task = None
        since = self._idle_since
        if since is None:
            return  # busy: armed again once idle
        left = since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_expired)
        else:
            self.timeout_keep_alive_handler()

    def gone(self) -> bool:
        """The client is gone: the connection was lost or is closing (an answer
        written now would be dropped). Connection state: uvicorn marks only the
        newest cycle, and only once ``connection_lost`` runs, after the close."""
        return self._lost or self.transport.is_closing()

    def on_headers_complete(self) -> None:
        # the ASGI app reads gone() through the scope (a weak reference: no cycle),
        # to count an answer whose client left before it as 499, as the lane does
        scope: Any = self.scope
        scope[CYCLE_KEY] = self._self_ref
        super().on_headers_complete()

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        super().on_message_begin()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The body is whole. uvicorn paused reading once 64 KiB of it were held, and
        # only the app's next receive() resumed it, which never comes once the body
        # is in: a client that reset or left while its request computed was not
        # seen, and its answer counted as sent. Reading on from a request boundary
        # is bounded as before (a queued request pauses it at its head, a body at
        # 64 KiB, the queue at PIPELINE_DEPTH).
        self.flow.resume_reading()

    def on_url(self, url: bytes) -> None:
        # httptools sets no limit, and uvicorn joins the pieces with +=: an endless
        # URL grew memory and stalled the loop (hostile review, issue 17)
        if len(self.url) + len(url) > MAX_URL_BYTES:
            self._refused = (414, f"the request target is longer than {MAX_URL_BYTES} bytes")
            raise _Refused
        self.url += url  # uvicorn's on_url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refused = (431, f"the request's headers exceed {MAX_HEADER_BYTES} bytes")
            raise _Refused
        name = name.lower()  # uvicorn's on_header, inline: it runs for every header
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser refused, or 414 / 431 for one
        refused here for its size: a JSON error, then the connection closes.

        Requests read whole before the refused one are answered first, in order
        (uvicorn wrote the refusal and closed at once, so an answer still being
        computed for an earlier request in the same packet was dropped, and counted
        as a client gone). Only the newest request can be cut mid-body (HTTP/1.1
        is read in order): queued behind others, it runs as a cycle whose client is
        gone (counted 499, never computed) and the refusal waits for the others;
        being answered itself, it is uvicorn's case, refused and closed at once.
        While the refusal waits, what the client sends is read and dropped (the
        parser is spent), so a client that leaves meanwhile is seen."""
        refusal = (self._refused, msg)
        self._refused = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not _read_whole(cycle):
            queued = [entry for entry in self.pipeline if entry[0] is cycle]
            if not queued:  # the request being answered is cut: nothing to wait for
                self._send_refusal(refusal)
                return
            self.pipeline.remove(queued[0])
            self._abandon(*queued[0])
            owed = True  # it was queued behind a request still being answered
        else:
            owed = (cycle is not None and not cycle.response_complete) or bool(self.pipeline)
        if owed:
            self._refusal = refusal
            self.flow.resume_reading()  # to see the client leave (data_received drops it)
            return
        self._send_refusal(refusal)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # a refusal waits for answers owed: the parser is spent, drop the bytes
        super().data_received(data)

    def eof_received(self) -> None:
        # uvloop closes its transport when this returns, past CoalescingTransport's
        # close: what the connection holds (answers already counted) goes first, and
        # leaves with the close (a client that half-closed still reads it)
        if isinstance(self.transport, CoalescingTransport):
            self.transport.flush()

    def _send_refusal(self, refusal: tuple[tuple[int, str] | None, str] | None = None) -> None:
        """Write a refusal and close: ``refusal``, or the one waiting (``_refusal``)."""
        if refusal is None:
            refusal, self._refusal = self._refusal, None
            assert refusal is not None
        refused, msg = refusal
        if refused is None:
            super().send_400_response(msg)
            return
        status, message = refused
        body = json.dumps({"error": message}).encode()
        self.transport.write(self.response_bytes(status, _JSON_HEADERS, body, close=True))
        self.transport.close()

    def response_bytes(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        close: bool = False,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> bytes:
        """A whole response as uvicorn's ``send`` writes it: status line, the server's
        default headers (``date``), ``headers``, ``extra``, Content-Length,
        ``connection: close`` when ``close``, body."""
        defaults = self.server_state.default_headers  # a new list each second (the date)
        key = (status, id(headers), id(extra))
        cached = _HEADS.get(key)
        if cached is None or cached[0] != defaults or cached[1] != headers or cached[2] != extra:
            content = [STATUS_LINE[status]]
            for name, value in defaults:
                content += (name, b": ", value, b"\r\n")
            for name, value in headers:
                content += (name, b": ", value, b"\r\n")
            for name, value in extra:
                content += (name, b": ", value, b"\r\n")
            content.append(b"content-length: ")
            if len(_HEADS) >= _MAX_HEADS:
                _HEADS.clear()
            # copies: a list changed in place must not find its old block
            cached = _HEADS[key] = (list(defaults), list(headers), list(extra), b"".join(content))
        if close:
            return b"%s%d\r\nconnection: close\r\n\r\n%s" % (cached[3], len(body), body)
        return b"%s%d\r\n\r\n%s" % (cached[3], len(body), body)

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive timer above, and reading paused again when
        # enough requests are queued (uvicorn resumes it after every response)
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:
            # the next request starts once this answer is handed to the kernel (the
            # connection's flush comes first in the tail) and one more poll has read
            # the connection (uvicorn pauses reading while requests are queued): a
            # client that left meanwhile is seen first, and the queued requests go to
            # connection_lost, counted 499 and never computed
            tail_of(self.loop).add(self._after_flush)
        elif self._refusal is not None:  # every request before the refused one answered
            self._send_refusal()
        else:
            self._idle_since = self.loop.time()
            if self.timeout_keep_alive_task is None:
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self._keep_alive_expired
                )
        if len(self.pipeline) >= PIPELINE_DEPTH:
            self.flow.pause_reading()


#: Header blocks (up to the Content-Length value) by (status, headers, extra), each
#: kept with copies of the lists it was made of: a hit needs equal default headers
#: (uvicorn makes a new list each second, for the date), headers and extra lists.
_HEADS: dict[tuple[int, int, int], tuple[list[Any], list[Any], list[Any], bytes]] = {}
_MAX_HEADS = 64


def _read_whole(cycle: Any) -> bool:
    """Whether a cycle's request body was read whole (uvicorn's cycle: ``more_body``
    cleared by ``on_message_complete``; the lane's: ``computing``)."""
    if type(cycle) is _FastCycle:
        return cycle.computing
    return not getattr(cycle, "more_body", True)


class _Refused(Exception):
    """Raised in a parser callback to stop a request refused for its size."""


class _CappedFlow(FlowControl):  # type: ignore[misc]
    """uvicorn's flow control, but reading resumes only while fewer than
    :data:`PIPELINE_DEPTH` requests are queued on the connection.

    uvicorn resumes reading after every answer and whenever a cycle reads its
    body (``receive``); a client pipelining without reading its answers then had
    another read of requests queued, each a cycle holding its body, for every
    answer. Nothing waits on a paused read: queued requests were read after the
    body of the one in progress, so that body is already whole.
    """

    def __init__(self, transport: asyncio.Transport, protocol: Any) -> None:
        super().__init__(transport)
        # weak: the protocol holds this flow; a cycle between them would keep a
        # closed connection (its URL, headers, cycles) until a full collection,
        # rare under the serving GC set-up (hostile review, issue 17)
        self._protocol = weakref.ref(protocol)

    def resume_reading(self) -> None:
        protocol = self._protocol()
        if protocol is None or len(protocol.pipeline) < PIPELINE_DEPTH:
            super().resume_reading()


class FastLaneApp(Protocol):
    """What :class:`FastLaneProtocol` calls: :class:`~.http.HttpApp`'s fast-lane entry."""

    answer_headers: list[tuple[bytes, bytes]]

    def authorized(self, value: bytes | None) -> bool: ...

    def infer_direct(
        self, cycle: Any, model: str, header_length: int | None, body: bytes
    ) -> None: ...

    def infer_gone(self, model: str, started: float, size: int) -> None: ...


class _Event:
    """uvicorn's protocol sets ``cycle.message_event`` on a lost connection; nothing waits here."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _Event()
#: A model name the ASGI route would read as the same bytes: printable ASCII
#: without "/" and without what uvicorn's URL parsing turns into something
#: else ("%" escapes, "?" query, "#" fragment).
_INFER_URL = re.compile(rb'/v2/models/([!"$&-.0->@-~]+)/infer')  # 0x21-0x7e but # % / ?
#: Infer URLs the lane took, and the model each names (a regular expression match
#: and a decode per request, otherwise); bounded, emptied when full.
_LANE_MODELS: dict[bytes, str] = {}
_MAX_LANE_MODELS = 1024
#: The longest infer URL the lane takes (a model name of about 2 kB); longer ones
#: go through uvicorn's URL parser (the lane does not parse URLs, only matches them).
MAX_LANE_URL = 2048
#: The longest request target (path and query) read: longer is 414 and the
#: connection closes. Just under what uvicorn's URL parser takes (it refuses
#: 64 KiB with a 400), so every URL it served before is still served.
MAX_URL_BYTES = 65535
#: The most bytes of header lines read per request: more is 431 and the connection
#: closes (h11, uvicorn's other protocol, stops at 16 kB).
MAX_HEADER_BYTES = 65536
#: Requests a connection may have queued behind the one being answered before
#: reading from it pauses. uvicorn resumes reading after every response, so a
#: client that pipelines without reading its answers had another 256 kB read
#: (some hundred small requests, each a cycle holding its body) queued per
#: answer: 1.1 GB of RSS in 8 s (hostile review, issue 17).
PIPELINE_DEPTH = 16
_JSON_HEADERS = [(b"content-type", b"application/json")]
#: Headers whose requests the ASGI path answers (chunked bodies, keyed requests, upgrades).
_NOT_ON_THE_LANE = frozenset({b"transfer-encoding", b"idempotency-key", b"upgrade"})


class _FastCycle:
    """One request on the fast lane, in the place of uvicorn's ``RequestResponseCycle``
    (the protocol's ``connection_lost`` and ``shutdown`` read and set the same
    attributes: ``response_complete``, ``disconnected``, ``keep_alive``)."""

    __slots__ = (
        "_disconnected", "body", "computing", "header_length", "keep_alive", "message_event",
        "model", "protocol", "response_complete", "started",
    )  # fmt: skip

    def __init__(self, protocol: FastLaneProtocol, model: str, header_length: int | None) -> None:
        self.protocol: FastLaneProtocol | None = protocol  # dropped once answered: no cycle
        self.model = model
        self.header_length = header_length
        self.body: list[bytes] = []
        self.started = time.perf_counter()  # as the ASGI route's latency starts
        self.computing = False  # the whole body arrived and went to the app
        self.response_complete = False
        self._disconnected = False
        self.keep_alive = True
        self.message_event = _NO_EVENT

    @property
    def disconnected(self) -> bool:
        """The client is gone: this cycle was marked, or its connection is closing or
        lost (uvicorn marks only the newest cycle; one with requests pipelined
        behind it, or whose transport closed on EOF, learns it from the connection)."""
        protocol = self.protocol
        return self._disconnected or protocol is None or protocol.gone()

    @disconnected.setter
    def disconnected(self, value: bool) -> None:
        self._disconnected = value

    def reply(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Write the response once (nothing when the client is gone) and complete the cycle."""
        protocol = self.protocol
        if self.response_complete or protocol is None:
            return
        self.response_complete = True
        self.protocol = None
        protocol.fast_reply(self, status, body, headers)


class FastLaneProtocol(CoalescingHttpToolsProtocol):
    """:class:`CoalescingHttpToolsProtocol` with a fast lane for the infer route.

    uvicorn runs every request as an ASGI cycle: a scope, a ``RequestResponseCycle``
    with an ``asyncio.Event``, a task, ``receive`` and two ``send`` messages whose
    headers are checked against regular expressions. For a small model's request
    that machinery cost about as much as the model, decode and encode together
    (bench/request_cpu.py). A request that is exactly
    ``POST /v2/models/{model}/infer`` over keep-alive HTTP/1.1, with one valid
    Content-Length within the fast-lane size (``fast_bytes``: small bodies that
    decode on the loop anyway), no ``Transfer-Encoding``, ``Expect``,
    ``Idempotency-Key``, query string or percent-escape, a valid single
    ``Inference-Header-Content-Length`` if any, and an ``Authorization`` the app
    accepts, arriving when nothing is pipelined before it and the connection can
    take writes, is answered by ``app.infer_direct`` from the parser's callbacks:
    the same decode, host call, encode, status codes and metrics as the ASGI
    route (:meth:`~.http.HttpApp.infer_direct`), with no task unless the model
    runs off the loop. Everything else — other routes, the refusals of the
    conditions above (401, 411, 413, the length header's 400s), pipelined
    requests behind a pending one, upgrades — is uvicorn's ASGI path unchanged.
    Keep-alive timeouts, pipelining order, graceful shutdown (a pending fast
    request finishes, then the connection closes) and ``limit_max_requests``
    behave as on the ASGI path; ``limit_concurrency`` turns the lane off.
    """

    fast_app: FastLaneApp
    fast_bytes: int
    #: the app checks a token (``authorized``); without one every request passes
    fast_guarded: bool
    lane_open = False

    def on_headers_complete(self) -> None:
        cycle = self._fast_cycle()
        if cycle is None:  # the ASGI path, with the scope uvicorn makes at message begin
            url: bytes = self.url
            headers: list[tuple[bytes, bytes]] = self.headers
            expect: bool = self.expect_100_continue
            HttpToolsProtocol.on_message_begin(self)  # resets what the request read: kept
            self.url, self.headers, self.expect_100_continue = url, headers, expect
            self.scope["headers"] = headers
            super().on_headers_complete()
        else:
            self.cycle = cycle

    def _fast_cycle(self) -> _FastCycle | None:
        """The fast-lane cycle of the request whose headers just ended, or None."""
        url = self.url
        if len(url) > MAX_LANE_URL:  # a model name this long: the ASGI path decides
            return None
        model = _LANE_MODELS.get(url)
        if model is None:
            match = _INFER_URL.fullmatch(url)
            if match is None:
                return None
            if len(_LANE_MODELS) >= _MAX_LANE_MODELS:
                _LANE_MODELS.clear()
            model = _LANE_MODELS[url] = match.group(1).decode("ascii")
        if self.expect_100_continue or not self.lane_open:
            return None
        parser = self.parser
        if (
            parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
            or parser.should_upgrade()
            or self.flow.write_paused
            or not (self.cycle is None or self.cycle.response_complete)
        ):
            return None
        declared = length = authorization = None
        for key, value in self.headers:  # lower-cased by on_header
            if key == b"content-length":
                if declared is not None or not value.isdigit() or len(value) > 19:
                    return None
                declared = int(value)
            elif key == b"inference-header-content-length":
                if length is not None or not value.isdigit() or len(value) > 19:
                    return None
                length = int(value)
            elif key == b"authorization":
                if authorization is not None:
                    return None
                authorization = value
            elif key in _NOT_ON_THE_LANE:
                return None
        if (
            declared is None
            or declared > self.fast_bytes
            or (length is not None and length > self.fast_bytes)
            or (self.fast_guarded and not self.fast_app.authorized(authorization))
        ):
            return None
        return _FastCycle(self, model, length)

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        # uvicorn's 503 for limit_concurrency and root_path's prefix: the ASGI path's
        self.lane_open = self.limit_concurrency is None and not self.root_path

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is _FastCycle:
            cycle.body.append(body)  # at most fast_bytes in all: Content-Length frames it
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is not _FastCycle:
            super().on_message_complete()
            return
        chunks = cycle.body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        cycle.body = []
        cycle.computing = True
        self.fast_app.infer_direct(cycle, cycle.model, cycle.header_length, body)

    def on_message_begin(self) -> None:
        # A request is in progress from here: uvicorn cancels the keep-alive timer
        # only when bytes arrive, and a lane answer written from inside the parser
        # (data_received) arms it while the same bytes still hold the next request.
        self._idle_since = None
        self._header_bytes = 0
        # uvicorn's, but its ASGI scope (a dict of ten keys and a copy of the app
        # state, for every request) is made only for a request the lane leaves
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        if type(cycle) is _FastCycle and not cycle.computing and not cycle.response_complete:
            # gone mid-body: never computed, counted as the ASGI route counts it (499)
            cycle.response_complete = True
            cycle.protocol = None
            self.fast_app.infer_gone(cycle.model, cycle.started, sum(map(len, cycle.body)))
        super().connection_lost(exc)

    def fast_reply(
        self, cycle: _FastCycle, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Write a fast-lane response (:meth:`response_bytes`, with the app's
        ``answer_headers``) and complete the request as uvicorn's ``send`` does."""
        transport = self.transport
        if not cycle._disconnected and not self.gone():
            close = not cycle.keep_alive  # the server is shutting down
            extra = self.fast_app.answer_headers
            transport.write(self.response_bytes(status, headers, body, close=close, extra=extra))
            if close:
                transport.close()
        self.on_response_complete()


def fast_lane(app: Any, fast_bytes: int) -> type[FastLaneProtocol]:
    """:class:`FastLaneProtocol` bound to ``app`` (an :class:`~.http.HttpApp`), the lane
    taking bodies of at most ``fast_bytes``."""
    guarded = not app.authorized(None)
    attributes = {"fast_app": app, "fast_bytes": fast_bytes, "fast_guarded": guarded}
    return type("FastLaneProtocol", (FastLaneProtocol,), attributes)
