"""The coalescing httptools protocol: same bytes, same order, one send per small response.

A real uvicorn server (the protocol ``edgecloud serve`` runs) on loopback,
driven with raw sockets: pipelined requests, streamed bodies, HEAD, ``Expect:
100-continue``, ``Connection: close`` and a large body must arrive exactly as
uvicorn's own protocol would send them.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from edgecloud.server.app import event_loop_factory, http_protocol
from edgecloud.server.protocol import CoalescingHttpToolsProtocol

BIG = bytes(range(256)) * 8192  # 2 MiB


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    answer = BIG if path == "/big" else b"echo:" + body + b":" + path.encode()
    headers = [(b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    assert http_protocol() is CoalescingHttpToolsProtocol
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, http=CoalescingHttpToolsProtocol, lifespan="off", log_level="warning",
        date_header=False, server_header=False,
    )  # fmt: skip
    server = uvicorn.Server(config)

    def run() -> None:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)
    sock.close()


def _exchange(port: int, data: bytes, *, until_closed: bool = False, expect: int = 0) -> bytes:
    """Send ``data``; read until the peer closes or ``expect`` bytes arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        got = b""
        while until_closed or len(got) < expect:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            got += chunk
        return got


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def test_pipelined_requests_arrive_in_order(port: int) -> None:
    requests = b"".join(_post(f"/{i}", b"x" * i) for i in range(5))
    requests += _post("/last", b"bye", "connection: close\r\n")
    got = _exchange(port, requests, until_closed=True)
    answers = [part for part in got.split(b"HTTP/1.1 200 OK\r\n") if part]
    assert len(answers) == 6
    for i, answer in enumerate(answers[:5]):
        assert answer.endswith(b"echo:" + b"x" * i + f":/{i}".encode()), answer
    assert b"connection: close" in answers[5] and answers[5].endswith(b"echo:bye:/last")


def test_a_streamed_body_keeps_its_order_and_chunking(port: int) -> None:
    got = _exchange(port, b"GET /stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                    until_closed=True)  # fmt: skip
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"


def test_a_large_body_arrives_whole(port: int) -> None:
    got = _exchange(port, b"GET /big HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                    until_closed=True)  # fmt: skip
    head, _, body = got.partition(b"\r\n\r\n")
    assert f"content-length: {len(BIG)}".encode() in head and body == BIG


def test_head_answers_headers_only(port: int) -> None:
    got = _exchange(port, b"HEAD /h HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                    until_closed=True)  # fmt: skip
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\n")


def test_expect_100_continue_is_answered_before_the_body(port: int) -> None:
    head = b"POST /e HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head)
        interim = conn.recv(1 << 16)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(b"data")
        got = b""
        while not got.endswith(b"echo:data:/e"):
            chunk = conn.recv(1 << 16)
            assert chunk, got
            got += chunk
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_malformed_request_gets_uvicorns_400_then_close(port: int) -> None:
    got = _exchange(port, b"NOT HTTP\r\n\r\n", until_closed=True)
    assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n")


def _reference_response(
    defaults: list[tuple[bytes, bytes]], status: int, headers: list[tuple[bytes, bytes]],
    body: bytes, close: bool, extra: list[tuple[bytes, bytes]],
) -> bytes:  # fmt: skip
    """uvicorn's byte layout, built from scratch: status line, headers, length, close, body."""
    from edgecloud.server.protocol import STATUS_LINE

    lines = [STATUS_LINE[status]]
    lines += [b"%s: %s\r\n" % pair for pair in [*defaults, *headers, *extra]]
    lines.append(b"content-length: %d\r\n" % len(body))
    if close:
        lines.append(b"connection: close\r\n")
    return b"".join([*lines, b"\r\n", body])


def test_cached_header_blocks_follow_the_date_and_every_header_list() -> None:
    """response_bytes keeps each header block it made, and must never answer with a
    stale one: uvicorn puts a new default-header list (the date) in place each
    second, binary answers carry a header list of their own, and lists are reused."""
    from types import SimpleNamespace

    state = SimpleNamespace(default_headers=[(b"date", b"Mon, 30 Nov 2026 10:00:00 GMT")])
    protocol: Any = SimpleNamespace(server_state=state)
    build = CoalescingHttpToolsProtocol.response_bytes
    json_headers = [(b"content-type", b"application/json")]
    extra = [(b"x-worker", b"1")]
    for second in range(3):
        state.default_headers = [(b"date", b"Mon, 30 Nov 2026 10:00:0%d GMT" % second)]
        for status in (200, 400, 503):
            for body in (b"", b"{}", b"x" * 1000):
                for close in (False, True):
                    for headers in (
                        json_headers,
                        [(b"inference-header-content-length", b"%d" % len(body))],
                    ):
                        got = build(protocol, status, headers, body, close=close, extra=extra)
                        want = _reference_response(
                            state.default_headers, status, headers, body, close, extra
                        )
                        assert got == want


def test_a_header_list_changed_in_place_gets_a_new_header_block() -> None:
    from types import SimpleNamespace

    state = SimpleNamespace(default_headers=[(b"date", b"Mon, 30 Nov 2026 10:00:00 GMT")])
    protocol: Any = SimpleNamespace(server_state=state)
    extra = [(b"x-worker", b"1")]
    build = CoalescingHttpToolsProtocol.response_bytes
    first = build(protocol, 200, [], b"{}", extra=extra)
    extra[0] = (b"x-worker", b"2")  # the same list object, new content
    state.default_headers.append((b"server", b"edgecloud"))
    second = build(protocol, 200, [], b"{}", extra=extra)
    assert b"x-worker: 1" in first and b"x-worker: 2" in second
    assert second == _reference_response(state.default_headers, 200, [], b"{}", False, extra)
