"""The HTTP fast lane answers exactly as the ASGI route does.

One ModelHost behind two real uvicorn servers on one event loop: one on the
protocol ``edgecloud serve`` runs (:class:`FastLaneProtocol`), one on the plain
coalescing protocol (every request an ASGI cycle). The same raw requests go
to both — valid ones of every datatype, JSON and binary, and every kind of
refusal — and the status, headers (but ``date``), body and the metric deltas
must be the same. Requests the lane must leave to the ASGI path (versioned,
keyed, chunked, percent-escaped, ``Expect``, HTTP/1.0, ``Connection: close``,
duplicate or malformed length headers, too large, unauthorized) are among them,
and pipelining, keep-alive and a client that leaves mid-body are checked on the
lane itself.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn

from edgecloud import ModelRepository
from edgecloud.server.app import event_loop_factory, http_protocol
from edgecloud.server.host import ModelHost
from edgecloud.server.http import CYCLE_KEY, HttpApp
from edgecloud.server.protocol import (
    PIPELINE_DEPTH,
    CoalescingHttpToolsProtocol,
    FastLaneProtocol,
)
from edgecloud.server.settings import ServerSettings

from ..models import affine_config, affine_onnx, make_wire_repo

TOKEN = "lane-token"


@dataclass
class Pair:
    fast: int  # port of the fast-lane server
    asgi: int  # port of the ASGI-only server
    app: HttpApp
    servers: list[uvicorn.Server]


def _serve_pair(
    repo: ModelRepository, tmp: Path, token: str | None, keep_alive: float = 5
) -> Iterator[Pair]:
    settings = ServerSettings(grpc_port=None, idempotency_db=tmp / "idem.db")
    host = ModelHost(repo, settings)
    host.load_all()
    app = HttpApp(host, token=token)
    fast_protocol = http_protocol(app)
    assert issubclass(fast_protocol, FastLaneProtocol)
    assert http_protocol() is CoalescingHttpToolsProtocol
    servers, sockets = [], []
    for protocol in (fast_protocol, CoalescingHttpToolsProtocol):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        config = uvicorn.Config(
            app,
            http=protocol,
            lifespan="on",
            log_level="warning",
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=keep_alive,
        )
        servers.append(uvicorn.Server(config))

    async def both() -> None:
        await asyncio.gather(*(s.serve(sockets=[k]) for s, k in zip(servers, sockets, strict=True)))

    def run() -> None:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(both())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not all(s.started for s in servers):
        assert time.monotonic() < deadline, "servers did not start"
        time.sleep(0.01)
    yield Pair(sockets[0].getsockname()[1], sockets[1].getsockname()[1], app, servers)
    for server in servers:
        server.should_exit = True
    thread.join(15)
    for sock in sockets:
        sock.close()


def _repo(tmp: Path) -> ModelRepository:
    repo = make_wire_repo(tmp)
    repo.add_version("affine", affine_onnx(tmp / "affine.onnx"), config=affine_config())
    return repo


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("lane")
    yield from _serve_pair(_repo(tmp), tmp, None)


@pytest.fixture(scope="module")
def brief(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """A pair whose idle connections close after 1 s."""
    tmp = tmp_path_factory.mktemp("lane-brief")
    yield from _serve_pair(_repo(tmp), tmp, None, keep_alive=1)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("lane-token")
    yield from _serve_pair(_repo(tmp), tmp, TOKEN)


# -- a raw HTTP/1.1 client --------------------------------------------------------


def _read_response(conn: socket.socket, buffer: bytearray) -> tuple[int, dict[str, Any], bytes]:
    """One response from ``conn`` (``buffer`` holds bytes already read past the last)."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {bytes(buffer)!r}")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, Any] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    length = int(headers["content-length"][0])
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a body")
        rest += chunk
    buffer[:] = rest[length:]
    return status, headers, rest[:length]


def _exchange(port: int, raw: bytes, answers: int = 1) -> list[tuple[int, dict[str, Any], bytes]]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        buffer = bytearray()
        return [_read_response(conn, buffer) for _ in range(answers)]


def _request(
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    version: str = "1.1",
    length: bool = True,
) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "host: test"]
    if length:
        lines.append(f"content-length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _metrics(port: int) -> dict[str, float]:
    ((status, _, body),) = _exchange(port, _request("/metrics", b"", method="GET", length=False))
    assert status == 200
    found = {}
    for line in body.decode().splitlines():
        if line.startswith("edgecloud_requests_total{") and 'protocol="http"' in line:
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def _lane_count(app: HttpApp) -> list[int]:
    """Count the requests the fast lane hands to ``app`` (observed, not replaced)."""
    seen = getattr(app, "_lane_seen", None)
    if seen is None:
        seen = [0]
        direct = app.infer_direct

        def counted(*args: Any) -> None:
            seen[0] += 1
            direct(*args)

        app.infer_direct = counted  # type: ignore[method-assign]
        app._lane_seen = seen  # type: ignore[attr-defined]
    return seen


def _same(
    pair: Pair, raw: bytes, answers: int = 1, *, lane: bool
) -> list[tuple[int, dict[str, Any], bytes]]:
    """Send ``raw`` to both servers; the answers and the metric deltas must match,
    and the fast server's lane must have taken the request (``lane``) or not."""
    results, deltas = [], []
    seen = _lane_count(pair.app)
    for port in (pair.fast, pair.asgi):
        before, taken = _metrics(port), seen[0]
        got = _exchange(port, raw, answers)
        deltas.append(_delta(before, _metrics(port)))
        if port == pair.fast:
            assert (seen[0] - taken == answers) if lane else seen[0] == taken, raw[:200]
        else:
            assert seen[0] == taken
        for _, headers, _ in got:
            headers.pop("date", None)
        results.append(got)
    assert results[0] == results[1], (raw[:300], results)
    assert deltas[0] == deltas[1], (raw[:300], deltas)
    return results[0]


def _infer(model: str, payload: Any, headers: dict[str, str] | None = None) -> bytes:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return _request(
        f"/v2/models/{model}/infer", body, {"content-type": "application/json", **(headers or {})}
    )


X = [[0.5, -1.0, 2.0, 3.25], [1.0, 2.0, 3.0, 4.0]]


def _affine(data: Any = None, **extra: Any) -> dict[str, Any]:
    entry = {
        "name": "x",
        "shape": [2, 4],
        "datatype": "FP32",
        "data": data or [v for row in X for v in row],
    }
    return {"inputs": [entry], **extra}


# -- the same answers ---------------------------------------------------------------


VALID = {
    "affine": _affine(),
    "affine with id and outputs": _affine(id="req-7", outputs=[{"name": "z"}]),
    "affine binary output": _affine(parameters={"binary_data_output": True}),
    "int8": {"inputs": [{"name": "x", "shape": [3], "datatype": "INT8", "data": [-128, 0, 127]}]},
    "uint64": {
        "inputs": [
            {"name": "x", "shape": [2], "datatype": "UINT64", "data": [0, 18446744073709551615]}
        ]
    },
    "bool": {"inputs": [{"name": "x", "shape": [2], "datatype": "BOOL", "data": [True, False]}]},
    "fp16": {"inputs": [{"name": "x", "shape": [2], "datatype": "FP16", "data": [1.5, -2.0]}]},
    "fp64": {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1e300]}]},
    "bytes": {"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", "é"]}]},
    "batch beyond max_batch_size": {
        "inputs": [{"name": "x", "shape": [9, 4], "datatype": "FP32", "data": [0.25] * 36}]
    },
    "empty batch": {"inputs": [{"name": "x", "shape": [0, 4], "datatype": "FP32", "data": []}]},
}
MODEL_OF = {
    "int8": "ident-int8",
    "uint64": "ident-uint64",
    "bool": "ident-bool",
    "fp16": "ident-fp16",
    "fp64": "ident-fp64",
    "bytes": "ident-bytes",
}


@pytest.mark.parametrize("case", sorted(VALID))
def test_valid_requests_are_answered_the_same(pair: Pair, case: str) -> None:
    ((status, _, body),) = _same(pair, _infer(MODEL_OF.get(case, "affine"), VALID[case]), lane=True)
    assert status == 200, body


def test_binary_tensor_requests_are_answered_the_same(pair: Pair) -> None:
    x = np.asarray(X, dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    raw = _request(
        "/v2/models/affine/infer",
        header + x.tobytes(),
        {"inference-header-content-length": str(len(header))},
    )
    ((status, headers, body),) = _same(pair, raw, lane=True)
    assert status == 200 and headers["content-type"] == ["application/octet-stream"]
    split = int(headers["inference-header-content-length"][0])
    y = np.frombuffer(body[split:], dtype=np.float32).reshape(2, 3)
    assert np.allclose(y, x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10) + [0.5, -1, 2])


REFUSED = {
    "unknown model": ("nope", _affine()),
    "wrong shape": (
        "affine",
        {"inputs": [{"name": "x", "shape": [8], "datatype": "FP32", "data": [0.0] * 8}]},
    ),
    "wrong datatype": (
        "affine",
        {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "INT32", "data": [1] * 8}]},
    ),
    "string in floats": ("affine", _affine(["1.5"] * 8)),
    "bool in floats": ("affine", _affine([True] * 8)),
    "finite becomes infinite": ("affine", _affine([1e39] * 8)),
    "int beyond int64": (
        "ident-int64",
        {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [2**64]}]},
    ),
    "too few values": ("affine", _affine([1.0] * 7)),
    "unknown input": (
        "affine",
        {"inputs": [{"name": "q", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]},
    ),
    "unknown output": ("affine", _affine(outputs=[{"name": "nope"}])),
    "not json": ("affine", b"{not json"),
    "empty body": ("affine", b""),
    "json array": ("affine", b"[1, 2]"),
    "lone surrogate id": ("affine", b'{"id": "\\ud800", "inputs": []}'),
    "lone surrogate name": (
        "affine",
        b'{"inputs": [{"name": "\\udfff", "shape": [1], "datatype": "FP32", "data": [1]}]}',
    ),
    "invalid utf-8": ("affine", b'{"id": "\xff\xfe", "inputs": []}'),
    "no inputs": ("affine", {"inputs": []}),
    "model name with dots": ("..", _affine()),
    "model name with a quote": ('a"b', _affine()),
    "binary size beyond the body": (
        "affine",
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 32},
                }
            ]
        },
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals_are_answered_the_same(pair: Pair, case: str) -> None:
    model, payload = REFUSED[case]
    ((status, _, body),) = _same(pair, _infer(model, payload), lane=True)
    assert 400 <= status < 500, (status, body)
    assert json.loads(body)["error"]


LEFT_TO_ASGI = {
    "versioned": _request("/v2/models/affine/versions/1/infer", json.dumps(_affine()).encode()),
    "percent-escaped name": _infer("aff%69ne", _affine()),
    "query string": _request("/v2/models/affine/infer?x=1", json.dumps(_affine()).encode()),
    "http/1.0": _request("/v2/models/affine/infer", json.dumps(_affine()).encode(), version="1.0"),
    "connection close": _infer("affine", _affine(), {"connection": "close"}),
    "duplicate content-length": _request("/v2/models/affine/infer", b"{}", {"content-length": "2"}),
    "bad header length": _infer("affine", _affine(), {"inference-header-content-length": "+5"}),
    "two header lengths": _infer(
        "affine",
        _affine(),
        {"inference-header-content-length": "1", "Inference-Header-Content-Length": "2"},
    ),
    "header length beyond the lane": _infer(
        "affine", _affine(), {"inference-header-content-length": "300000"}
    ),
    "get on infer": _request("/v2/models/affine/infer", b"", method="GET", length=False),
    "put on infer": _request("/v2/models/affine/infer", b"{}", method="PUT"),
    "no model name": _request("/v2/models//infer", b"{}"),
    "too large": _infer("affine", b" " * (300 * 1024) + json.dumps(_affine()).encode()),
}


@pytest.mark.parametrize("case", sorted(LEFT_TO_ASGI))
def test_requests_left_to_the_asgi_path_are_answered_the_same(pair: Pair, case: str) -> None:
    ((status, _, body),) = _same(pair, LEFT_TO_ASGI[case], lane=False)
    assert status in (200, 400, 404, 405, 413), (status, body)


def test_keyed_requests_keep_their_idempotency(pair: Pair) -> None:
    raw = _infer("affine", _affine(), {"idempotency-key": "k-lane-1"})
    first, second = (_exchange(pair.fast, raw)[0] for _ in range(2))
    assert first[0] == second[0] == 200
    assert json.loads(first[2])["parameters"] == {}
    assert json.loads(second[2])["parameters"] == {"idempotent_replay": True}


def test_a_header_length_beyond_the_body_is_refused_the_same(pair: Pair) -> None:
    raw = _infer("affine", _affine(), {"inference-header-content-length": "100000"})
    ((status, _, body),) = _same(pair, raw, lane=True)
    assert status == 400, body


def test_chunked_bodies_go_the_asgi_path(pair: Pair) -> None:
    body = json.dumps(_affine()).encode()
    raw = _request("/v2/models/affine/infer", b"", {"transfer-encoding": "chunked"}, length=False)
    raw += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    ((status, _, _),) = _same(pair, raw, lane=False)
    assert status == 200


def test_tokens_are_checked_the_same(guarded: Pair) -> None:
    for headers, expected in [
        ({}, 401),
        ({"authorization": "Bearer wrong"}, 401),
        ({"authorization": f"Basic {TOKEN}"}, 401),
        ({"authorization": f"bearer  {TOKEN} "}, 200),
    ]:
        raw = _infer("affine", _affine(), headers)
        answers = []
        for port in (guarded.fast, guarded.asgi):
            ((status, got, body),) = _exchange(port, raw)
            got.pop("date", None)
            answers.append((status, got, body))
        assert answers[0] == answers[1] and answers[0][0] == expected, answers


# -- the lane's own connection handling ---------------------------------------------------


def test_pipelined_requests_are_answered_in_order(pair: Pair) -> None:
    raws = []
    for i in range(12):
        if i % 4 == 3:  # an ASGI route between lane requests
            raws.append(_request("/v2/health/ready", b"", method="GET", length=False))
        elif i % 5 == 4:
            raws.append(_infer("nope", _affine(id=f"r{i}")))
        else:
            raws.append(_infer("affine", _affine(id=f"r{i}")))
    got = _exchange(pair.fast, b"".join(raws), answers=len(raws))
    for i, (status, _, body) in enumerate(got):
        if i % 4 == 3:
            assert (status, body) == (200, b'{"ready":true}')
        elif i % 5 == 4:
            assert status == 404
        else:
            assert status == 200 and json.loads(body)["id"] == f"r{i}"


def test_concurrent_clients_get_their_own_rows(pair: Pair) -> None:
    """Tick-merged runs split back per request: each client gets its own answer."""
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(48)]
    answers: list[Any] = [None] * len(inputs)

    def client(i: int) -> None:
        x = inputs[i]
        payload = {
            "id": f"c{i}",
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ],
        }
        with socket.create_connection(("127.0.0.1", pair.fast), timeout=10) as conn:
            buffer = bytearray()
            for _ in range(5):
                conn.sendall(_infer("affine", payload))
                answers[i] = _read_response(conn, buffer)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    weights = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0
    for i, x in enumerate(inputs):
        status, _, body = answers[i]
        answer = json.loads(body)
        assert status == 200 and answer["id"] == f"c{i}"
        y = next(o for o in answer["outputs"] if o["name"] == "y")
        assert np.allclose(
            np.reshape(y["data"], y["shape"]), x @ weights + [0.5, -1.0, 2.0], atol=1e-5
        )


def test_keep_alive_serves_many_requests_on_one_connection(pair: Pair) -> None:
    with socket.create_connection(("127.0.0.1", pair.fast), timeout=10) as conn:
        buffer = bytearray()
        for i in range(50):
            conn.sendall(_infer("affine", _affine(id=str(i))))
            status, headers, body = _read_response(conn, buffer)
            assert status == 200 and json.loads(body)["id"] == str(i)
            assert "connection" not in headers and headers["date"]


def test_a_body_cut_short_is_never_computed_and_counts_as_499(pair: Pair) -> None:
    def computed() -> float:
        text = _exchange(pair.fast, _request("/metrics", b"", method="GET", length=False))[0][2]
        match = re.search(rb'edgecloud_computations_total\{model="affine"\} (\S+)', text)
        return float(match.group(1)) if match else 0.0

    body = json.dumps(_affine()).encode()
    before, runs = _metrics(pair.fast), computed()
    with socket.create_connection(("127.0.0.1", pair.fast), timeout=10) as conn:
        conn.sendall(_infer("affine", body)[: -len(body) // 2])
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    key = 'edgecloud_requests_total{code="499",model="affine",protocol="http"}'
    while _delta(before, _metrics(pair.fast)).get(key) != 1.0:
        assert time.monotonic() < deadline, _delta(before, _metrics(pair.fast))
        time.sleep(0.05)
    assert computed() == runs


def test_a_client_gone_before_its_answer_loses_nothing_else(pair: Pair) -> None:
    """Requests sent and abandoned at once: the server answers the next clients."""
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", pair.fast), timeout=10) as conn:
            conn.sendall(_infer("affine", _affine()) * 3)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ((status, _, _),) = _exchange(pair.fast, _infer("affine", _affine()))
    assert status == 200


def test_a_request_behind_an_answer_in_one_packet_is_not_cut_by_the_idle_timer(
    brief: Pair,
) -> None:
    """An answer written while the same bytes still hold the next request must not
    leave the keep-alive timer armed while that request is in progress."""
    valid = _infer("affine", _affine(id="second"))
    cut = len(valid) - 20
    for port in (brief.fast, brief.asgi):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(_infer("nope", _affine()) + valid[:cut])  # 404 at once, then part
            time.sleep(1.6)  # past the 1 s keep-alive timeout
            conn.sendall(valid[cut:])
            buffer = bytearray()
            first = _read_response(conn, buffer)
            second = _read_response(conn, buffer)
        assert first[0] == 404, (port, first)
        assert second[0] == 200 and json.loads(second[2])["id"] == "second", (port, second)


def test_a_client_that_never_reads_has_few_requests_queued(pair: Pair) -> None:
    """uvicorn resumes reading after each answer; without a cap a client pipelining
    and never reading had hundreds of requests (each holding its body) queued per
    answer (1.1 GB in 8 s)."""
    one = _infer("affine", _affine())
    blob = one * 400
    deepest = 0
    conn = socket.create_connection(("127.0.0.1", pair.fast), timeout=10)
    conn.setblocking(False)
    try:
        stop, offset = time.monotonic() + 3, 0
        while time.monotonic() < stop:
            try:
                offset = (offset + conn.send(blob[offset:])) % len(blob)
            except BlockingIOError:
                time.sleep(0.01)
            for server in pair.servers:
                for protocol in list(server.server_state.connections):
                    deepest = max(deepest, len(getattr(protocol, "pipeline", ())))
    finally:
        conn.close()
    per_read = 256 * 1024 // len(one) + 1  # what one read can add before the pause
    assert deepest <= PIPELINE_DEPTH + per_read, deepest


def test_a_client_gone_before_its_answer_counts_as_499_on_both_paths(
    tmp_path: Path,
) -> None:
    """The lane and the ASGI route count an answer nobody receives alike: 499."""
    settings = ServerSettings(grpc_port=None, idempotency_db=tmp_path / "idem.db")
    host = ModelHost(_repo(tmp_path), settings)
    host.load_all()
    app = HttpApp(host)
    body = json.dumps(_affine()).encode()

    class Cycle:  # the lane's cycle, and (gone) the protocol the ASGI scope points to
        disconnected = True
        started = time.perf_counter()

        def __init__(self) -> None:
            self.replies: list[int] = []

        def reply(self, status: int, payload: bytes, headers: Any) -> None:
            self.replies.append(status)

        def gone(self) -> bool:
            return True

    async def both() -> None:
        cycle = Cycle()
        scope = {
            "type": "http", "method": "POST", "path": "/v2/models/affine/infer",
            "headers": [(b"content-length", b"%d" % len(body))], "query_string": b"",
            CYCLE_KEY: weakref.ref(cycle),
        }  # fmt: skip

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            pass

        await app(scope, receive, send)  # the ASGI route
        app.infer_direct(cycle, "affine", None, body)  # the lane
        for _ in range(500):  # the first runs of a model go to the pool
            if cycle.replies:
                break
            await asyncio.sleep(0.01)
        assert cycle.replies == [200]  # written, to no one

    asyncio.run(both())
    text = host.metrics.exposition().decode()
    assert 'edgecloud_requests_total{code="499",model="affine",protocol="http"} 2.0' in text
    assert 'code="200",model="affine",protocol="http"' not in text


def test_an_answer_to_a_client_that_closed_counts_as_499(pair: Pair) -> None:
    """The client sends its request and closes its side while it computes: uvicorn
    closes the connection on that EOF, so the answer can go nowhere; both paths
    count it 499 (the connection's state, not a flag set later on one cycle)."""
    key = 'edgecloud_requests_total{code="499",model="ident-fp32",protocol="http"}'
    body = json.dumps({"inputs": [{"name": "x", "shape": [3000], "datatype": "FP32",
                                   "data": [0.5] * 3000}]}).encode()  # fmt: skip
    executor = pair.app.host.executor  # type: ignore[attr-defined]
    for port, path in ((pair.fast, "/v2/models/ident-fp32/infer"),
                       (pair.asgi, "/v2/models/ident-fp32/infer?x=1")):  # fmt: skip
        gate = threading.Event()
        held = [executor.submit(gate.wait) for _ in range(executor._max_workers)]
        before = _metrics(port)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(_request(path, body))
                conn.shutdown(socket.SHUT_WR)
                time.sleep(0.3)  # computing: the pool's threads are held
                gate.set()
                assert conn.recv(65536) == b""  # no answer: the server closed on EOF
        finally:
            gate.set()
        for future in held:
            future.result(10)
        deadline = time.monotonic() + 10
        while True:
            delta = _delta(before, _metrics(port))
            counted = {k: v for k, v in delta.items() if 'model="ident-fp32"' in k}
            if counted:
                break
            assert time.monotonic() < deadline, delta
            time.sleep(0.05)
        assert counted == {key: 1.0}, (port, counted)


def test_closed_connections_are_freed_without_a_full_collection(pair: Pair) -> None:
    """No reference cycle keeps a closed connection's protocol (its URL, headers and
    cycles) for the rare full collection of the serving GC set-up."""
    import gc

    def alive() -> int:
        # type(), not isinstance(): the latter reads __class__, which some objects
        # (torch's deprecated reduce_op) answer with a warning
        return sum(issubclass(type(o), FastLaneProtocol) for o in gc.get_objects())

    gc.collect()
    gc.disable()
    try:
        base = alive()
        for _ in range(20):
            _exchange(pair.fast, _infer("affine", _affine()))  # the lane's last answer
            _exchange(pair.fast, _request("/v2/health/ready", b"", method="GET", length=False))
        time.sleep(0.3)
        assert alive() - base <= 2, (base, alive())
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", 414),
        (b"GET /v2 HTTP/1.1\r\n" + b"x-pad: " + b"b" * 70000 + b"\r\n\r\n", 431),
        (b"GET /v2 HTTP/1.1\r\n" + b"x-pad: bbbb\r\n" * 6000 + b"\r\n", 431),
    ],
    ids=["url", "one header", "many headers"],
)
def test_oversized_request_heads_are_refused_and_the_connection_closed(
    pair: Pair, raw: bytes, status: int
) -> None:
    with socket.create_connection(("127.0.0.1", pair.fast), timeout=10) as conn:
        conn.sendall(raw)
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), got[:200]
    assert b"connection: close" in head and json.loads(body)["error"]


def _closed_after(conn: socket.socket, since: float) -> float:
    """Seconds from ``since`` until the server closed ``conn`` (EOF)."""
    conn.settimeout(10)
    assert conn.recv(1) == b"", "the server sent bytes, not a close"
    return time.monotonic() - since


def test_an_idle_connection_closes_after_the_keep_alive_timeout(brief: Pair) -> None:
    """One timer per idle spell (not per response) still closes the connection
    timeout_keep_alive seconds after its last answer, on both paths."""
    for port in (brief.fast, brief.asgi):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            buffer = bytearray()
            conn.sendall(_infer("affine", _affine()))
            assert _read_response(conn, buffer)[0] == 200
            waited = _closed_after(conn, time.monotonic())
        assert 0.9 <= waited < 3.0, (port, waited)


def test_a_busy_connection_outlives_the_keep_alive_timeout(brief: Pair) -> None:
    """Requests 0.4 s apart for 3 s on a 1 s timeout: the timer armed after the first
    answer finds the connection busy or recently answered each time it expires and
    re-arms for what is left; the connection closes 1 s after its last answer."""
    for port in (brief.fast, brief.asgi):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            buffer = bytearray()
            for i in range(8):
                conn.sendall(_infer("affine", _affine(id=str(i))))
                status, _, body = _read_response(conn, buffer)
                assert status == 200 and json.loads(body)["id"] == str(i), (port, i)
                last = time.monotonic()
                time.sleep(0.4)
            waited = _closed_after(conn, last)
        assert 0.9 <= waited < 3.0, (port, waited)


def test_the_lanes_url_map_stays_bounded_and_answers_each_url_as_its_own(pair: Pair) -> None:
    """The lane maps each infer URL it takes to its model name; a client naming ever
    new models cannot grow that map past its bound, and every URL still names its
    own model (404 for each unknown one, the served model answered in between)."""
    from edgecloud.server import protocol

    with socket.create_connection(("127.0.0.1", pair.fast), timeout=10) as conn:
        buffer = bytearray()
        for i in range(protocol._MAX_LANE_MODELS + 100):
            conn.sendall(_infer(f"nope-{i}", _affine()))
            status, _, body = _read_response(conn, buffer)
            assert status == 404 and f"nope-{i}" in body.decode(), (i, body)
            if i % 300 == 0:
                conn.sendall(_infer("affine", _affine(id=str(i))))
                status, _, body = _read_response(conn, buffer)
                assert status == 200 and json.loads(body)["id"] == str(i)
    assert 0 < len(protocol._LANE_MODELS) <= protocol._MAX_LANE_MODELS


@pytest.mark.parametrize(
    "bad",
    [
        b"GARBAGE\r\n\r\n",  # the parser refuses it: uvicorn's 400
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n",  # 414
        b"GET / HTTP/1.1\r\n" + b"x-filler: " + b"y" * 70_000 + b"\r\n\r\n",  # 431
    ],
    ids=["400", "414", "431"],
)
def test_requests_before_a_refused_one_are_answered_first(pair: Pair, bad: bytes) -> None:
    """Whole requests in the same packet as a refused one get their answers, in order,
    counted 200, then the refusal, then the close: the refusal used to close at once
    and drop (and count as 499) an answer still being computed."""
    first = _infer("affine", _affine(id="first"))
    second = _request(
        "/v2/models/affine/versions/1/infer", json.dumps(_affine(id="second")).encode()
    )
    for port in (pair.fast, pair.asgi):
        before = _metrics(port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(first + second + bad)
            buffer = bytearray()
            answers = [_read_response(conn, buffer) for _ in range(3)]
            conn.settimeout(10)
            assert conn.recv(1) == b"" and not buffer  # closed after the refusal
        assert [a[0] for a in answers[:2]] == [200, 200], (port, answers)
        assert [json.loads(a[2])["id"] for a in answers[:2]] == ["first", "second"]
        assert answers[2][0] == int(bad_status(bad)), (port, answers[2])
        key = 'edgecloud_requests_total{code="200",model="affine",protocol="http"}'
        deadline = time.monotonic() + 5
        while _delta(before, _metrics(port)) != {key: 2.0}:
            assert time.monotonic() < deadline, _delta(before, _metrics(port))
            time.sleep(0.05)


def bad_status(bad: bytes) -> int:
    return (
        400 if bad.startswith(b"GARBAGE") else 414 if len(bad.split(b"\r\n")[0]) > 60_000 else 431
    )


def test_a_request_cut_mid_body_by_a_refusal_is_refused_at_once(pair: Pair) -> None:
    """A chunked body the parser refuses midway cannot be answered: 400 and close at
    once, as uvicorn does (nothing waits for a body that will never come)."""
    head = (
        b"POST /v2/models/affine/infer HTTP/1.1\r\nhost: x\r\n"
        b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    for port in (pair.fast, pair.asgi):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(head + b'5\r\n{"inp\r\nZZZ\r\n')  # a chunk size that is not hex
            buffer = bytearray()
            status, _, _ = _read_response(conn, buffer)
            conn.settimeout(10)
            assert status == 400 and conn.recv(1) == b""


@pytest.mark.parametrize("leaves", ["eof", "reset"])
def test_requests_queued_behind_a_departed_client_are_counted(pair: Pair, leaves: str) -> None:
    """Two requests in one packet, then the client leaves (its EOF, which uvicorn
    takes as gone and closes on, or a reset): uvicorn never started the queued one,
    which was counted nowhere. Every request read is counted once: 200 if its answer
    was written, else 499, and the queued one is never computed."""
    body = json.dumps(_affine()).encode()
    one = _request("/v2/models/affine/infer?q=1", body)  # the ASGI path (a query string)
    for port in (pair.fast, pair.asgi):
        before = _metrics(port)
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(one + one)
                if leaves == "eof":
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(10)
                    while conn.recv(65536):
                        pass
                else:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        deadline = time.monotonic() + 5
        while sum(_delta(before, _metrics(port)).values()) < 20:
            assert time.monotonic() < deadline, _delta(before, _metrics(port))
            time.sleep(0.05)
        time.sleep(0.3)  # nothing counted twice arrives late
        counted = _delta(before, _metrics(port))
        assert sum(counted.values()) == 20, counted
        assert {k.split('code="')[1][:3] for k in counted} <= {"200", "499"}, counted


def _computations(port: int, model: str) -> float:
    text = _exchange(port, _request("/metrics", b"", method="GET", length=False))[0][2]
    match = re.search(rb'edgecloud_computations_total\{model="%s"\} (\S+)' % model.encode(), text)
    return float(match.group(1)) if match else 0.0


def _counted(port: int, before: dict[str, float], total: float) -> dict[str, float]:
    """The request counts added since ``before`` once ``total`` of them arrived (and a
    moment more, so nothing counted twice arrives unseen)."""
    deadline = time.monotonic() + 10
    while sum(_delta(before, _metrics(port)).values()) < total:
        assert time.monotonic() < deadline, _delta(before, _metrics(port))
        time.sleep(0.05)
    time.sleep(0.3)
    return {k.split('code="')[1][:3] + " " + k.split('model="')[1].split('"')[0]: v
            for k, v in _delta(before, _metrics(port)).items()}  # fmt: skip


_SLOW_BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [3000], "datatype": "FP32", "data": [0.5] * 3000}]}
).encode()  # ident-fp32: 3000 elements, more than any fast run, so a pool run


@contextmanager
def _pool_held(pair: Pair) -> Iterator[threading.Event]:
    """Hold every pool thread until the event is set: a pool-run request waits."""
    executor = pair.app.host.executor  # type: ignore[attr-defined]
    gate = threading.Event()
    held = [executor.submit(gate.wait) for _ in range(executor._max_workers)]
    try:
        yield gate
    finally:
        gate.set()
        for future in held:
            future.result(10)


def test_a_request_queued_behind_a_client_that_left_is_never_computed(pair: Pair) -> None:
    """A slow request, one queued behind it, then the client half-closes (an EOF: a
    client gone, as uvicorn takes it). Reading goes on to the end of each request,
    so the EOF is seen while the slow one computes, on the lane and the ASGI path
    alike: both count 499, nothing is sent, and the queued one is never computed
    (it had been computed once the slow answer was queued, for nobody)."""
    for port, slow in ((pair.fast, "/v2/models/ident-fp32/infer"),
                       (pair.asgi, "/v2/models/ident-fp32/infer?q=1")):  # fmt: skip
        before, runs = _metrics(port), _computations(port, "affine")
        with _pool_held(pair) as gate, socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(_request(slow, _SLOW_BODY) + _infer("affine", _affine()))
            conn.shutdown(socket.SHUT_WR)
            time.sleep(0.3)
            gate.set()
            conn.settimeout(10)
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
        assert received == b"", (port, received[:80])
        assert _counted(port, before, 2) == {"499 ident-fp32": 1.0, "499 affine": 1.0}, port
        assert _computations(port, "affine") == runs, port


def test_a_client_that_leaves_while_a_refusal_waits_is_seen(pair: Pair) -> None:
    """A slow request, then a request the parser refuses, then the client resets: the
    refusal waits for the slow answer but reading goes on (dropped), so the reset is
    seen and the slow answer, which can go nowhere, counts 499, not 200."""
    for port in (pair.fast, pair.asgi):
        before = _metrics(port)
        with _pool_held(pair) as gate:
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(_infer("ident-fp32", _SLOW_BODY) + b"GARBAGE\r\n\r\n")
                time.sleep(0.2)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            time.sleep(0.2)
            gate.set()
        assert _counted(port, before, 1) == {"499 ident-fp32": 1.0}, port


def test_a_request_cut_mid_body_behind_a_whole_one_does_not_take_its_answer(pair: Pair) -> None:
    """A slow request, then a chunked one the parser refuses mid-body: the whole one is
    answered (200), then the 400, then the close; the cut one counts 499 and is never
    computed (the refusal used to be sent at once for both)."""
    cut = (
        b"POST /v2/models/affine/infer HTTP/1.1\r\nhost: x\r\n"
        b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        b'5\r\n{"inp\r\nZZZ\r\n'
    )
    for port in (pair.fast, pair.asgi):
        before, runs = _metrics(port), _computations(port, "affine")
        with _pool_held(pair) as gate, socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(_infer("ident-fp32", _SLOW_BODY) + cut)
            time.sleep(0.3)
            gate.set()
            buffer = bytearray()
            answers = [_read_response(conn, buffer)[0] for _ in range(2)]
            conn.settimeout(10)
            assert answers == [200, 400] and conn.recv(1) == b"", (port, answers)
        assert _counted(port, before, 2) == {"200 ident-fp32": 1.0, "499 affine": 1.0}, port
        assert _computations(port, "affine") == runs, port


def test_a_client_that_resets_while_a_large_request_computes_is_seen(pair: Pair) -> None:
    """A body over 64 KiB (here 1.2 MB, read in many chunks) made uvicorn pause
    reading, and nothing resumed it once the body was whole: a client that reset
    while its request computed went unseen and its answer counted 200. Reading now
    resumes at the end of each request."""
    values = [0.5] * 300000  # about 1.2 MB of JSON: read in many chunks
    body = json.dumps({"inputs": [{"name": "x", "shape": [300000], "datatype": "FP32",
                                   "data": values}]}).encode()  # fmt: skip
    for port in (pair.fast, pair.asgi):
        before = _metrics(port)
        with _pool_held(pair) as gate:
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(_request("/v2/models/ident-fp32/infer", body))
                time.sleep(0.2)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            time.sleep(0.2)
            gate.set()
        assert _counted(port, before, 1) == {"499 ident-fp32": 1.0}, port
