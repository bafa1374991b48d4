"""Transient refusals are retryable: 408, 425, 429 and 503 (with or without
``Retry-After``) and gRPC RESOURCE_EXHAUSTED from a quota.

Before: a rate-limiting proxy's 429 (``Retry-After: 1``) was an
InvalidRequestError — the outbox dead-lettered the item at once and
``prefer_remote`` raised to the caller instead of answering on the device;
408 and 425 the same; a quota's RESOURCE_EXHAUSTED was a
PayloadTooLargeError. Now each is an :class:`UnavailableError`
(429 / quota: :class:`RateLimitedError`, fallback ``"rate-limited"``)
carrying the server's ``Retry-After``; the outbox keeps the item, holds it
until then without counting an attempt, and stops the drain.

The peer is a real HTTP server (stdlib ``http.server`` in a thread) that
answers what each test tells it to.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecloud import (
    InferRequest,
    InvalidRequestError,
    LocalBackend,
    Outbox,
    PayloadTooLargeError,
    RateLimitedError,
    RemoteBackend,
    UnavailableError,
    prefer_remote,
)
from edgecloud.errors import (
    MAX_RETRY_AFTER_S,
    error_for_grpc_code,
    error_for_http_status,
    parse_retry_after,
)

from ..models import affine_reference, make_repo
from ._outbox_helpers import Clock

X = np.arange(4, dtype=np.float32).reshape(1, 4)
NOW = 1_700_000_000.0


class Peer:
    """A stub v2 server: answers ``status`` (+ ``headers``) to every infer, or
    the affine model's real answer while ``status`` is 200."""

    def __init__(self) -> None:
        self.status = 429
        self.headers: dict[str, str] = {}
        self.hits = 0
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any], extra: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"name": "stub", "version": "2", "extensions": []}, {})

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["content-length"])))
                peer.hits += 1
                if peer.status != 200:
                    self._send(peer.status, {"error": "busy, retry later"}, peer.headers)
                    return
                x = np.array(request["inputs"][0]["data"], np.float32).reshape(-1, 4)
                y, z = affine_reference(x)
                outputs = [
                    {"name": n, "shape": list(v.shape), "datatype": "FP32",
                     "data": v.ravel().tolist()}
                    for n, v in (("y", y), ("z", z))
                ]  # fmt: skip
                self._send(200, {"model_name": "affine", "outputs": outputs}, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    stub = Peer()
    yield stub
    stub.close()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    backend = LocalBackend(make_repo(tmp_path_factory.mktemp("transient")))
    yield backend
    backend.close()


def request() -> InferRequest:
    return InferRequest("affine", {"x": X})


# -- the catalogue -------------------------------------------------------------------

REFUSALS = [(408, UnavailableError), (425, UnavailableError), (429, RateLimitedError),
            (503, UnavailableError)]  # fmt: skip


@pytest.mark.parametrize(("status", "cls"), REFUSALS)
@pytest.mark.parametrize(
    ("header", "wait"),
    [(None, None), ("1", 1.0), ("120", 120.0), ("0", 0.0),
     (format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True), 30.0),
     (format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True), 0.0),
     ("99999999999999999999", MAX_RETRY_AFTER_S), ("1.5", None), ("-3", None),
     ("soon", None), ("", None)],
)  # fmt: skip
def test_transient_statuses_are_retryable_with_their_wait(
    status: int, cls: type[UnavailableError], header: str | None, wait: float | None
) -> None:
    error = error_for_http_status(status, "busy", header, now=NOW)
    assert type(error) is cls and error.status_code == status
    assert error.fallback == ("rate-limited" if status == 429 else "unavailable")
    assert isinstance(error, UnavailableError) and error.retry_after_s == wait


@pytest.mark.parametrize("status", [400, 404, 410, 418, 422, 451])
def test_other_4xx_stay_the_callers_mistake(status: int) -> None:
    error = error_for_http_status(status, "no", "5")
    assert error.fallback is None and not isinstance(error, UnavailableError)
    assert status == 404 or isinstance(error, InvalidRequestError)


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        ("Received message larger than max (5000000 vs. 4194304)", PayloadTooLargeError),
        ("Sent message larger than max (9 vs. 4)", PayloadTooLargeError),
        ("request body of 9 bytes exceeds the server's limit of 4", PayloadTooLargeError),
        ("Quota exceeded for quota metric 'requests'", RateLimitedError),
        ("rate limit reached, slow down", RateLimitedError),
        ("Bandwidth exhausted or memory limit", RateLimitedError),
    ],
)
def test_grpc_resource_exhausted_is_size_only_when_it_says_so(
    message: str, cls: type[Exception]
) -> None:
    """The size wording (grpc core's "larger than max", this server's "exceeds")
    is a 413; anything else is load. A quota text that says "exceeded"
    is load ("exceeded" is not this server's "exceeds")."""
    assert type(error_for_grpc_code("RESOURCE_EXHAUSTED", message)) is cls


def test_parse_retry_after_bounds() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37") is None  # no zone: not an HTTP-date


# -- the clients and the combinators ---------------------------------------------------


@pytest.mark.parametrize(("status", "cls"), REFUSALS)
def test_remote_backend_raises_the_retryable_class_with_retry_after(
    peer: Peer, status: int, cls: type[UnavailableError]
) -> None:
    peer.status, peer.headers = status, {"Retry-After": "2"}
    with RemoteBackend(peer.url, timeout=5) as remote, pytest.raises(cls) as caught:
        remote.infer(request())
    assert caught.value.retry_after_s == 2.0 and caught.value.status_code == status


@pytest.mark.parametrize(("status", "cls"), REFUSALS)
@pytest.mark.parametrize("retry_after", [None, "1"])
def test_prefer_remote_answers_on_the_device(
    peer: Peer, local: LocalBackend, status: int, cls: type[UnavailableError],
    retry_after: str | None,
) -> None:  # fmt: skip
    peer.status, peer.headers = status, ({"Retry-After": retry_after} if retry_after else {})
    with RemoteBackend(peer.url, timeout=5) as remote:
        response = prefer_remote(remote, local).infer(request())
    np.testing.assert_allclose(response.outputs["y"], affine_reference(X)[0], rtol=1e-5)
    decision = response.trace.spans[0]
    assert decision.reason.startswith(f"fallback:{cls.fallback} ("), decision


# -- the outbox --------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "cls"), REFUSALS)
def test_outbox_holds_the_item_until_retry_after_without_an_attempt(
    peer: Peer, tmp_path: Path, status: int, cls: type[UnavailableError]
) -> None:
    monotonic = Clock()
    box = Outbox(tmp_path / "o.db", max_attempts=1, monotonic=monotonic)
    first, second = box.put(request()), box.put(InferRequest("affine", {"x": X + 1}))
    peer.status, peer.headers = status, {"Retry-After": "30"}
    with RemoteBackend(peer.url, timeout=5) as remote:
        refused = box.drain(remote.infer)
        assert (refused.delivered, refused.dead_lettered, refused.remaining) == (0, 0, 2)
        assert refused.stopped_by is not None and peer.hits == 1  # the drain stopped at once
        monotonic.now += 10
        assert box.drain(remote.infer).delivered == 0 and peer.hits == 1  # not before 30 s
        peer.status = 200
        monotonic.now += 21
        done = box.drain(remote.infer)
    assert (done.delivered, done.remaining) == (2, 0)  # max_attempts=1: no attempt was spent
    assert box.dead_letters() == [] and {first, second}


def test_outbox_429_without_retry_after_keeps_the_item(peer: Peer, tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_attempts=1, monotonic=Clock())
    box.put(request())
    peer.status = 429
    with RemoteBackend(peer.url, timeout=5) as remote:
        refused = box.drain(remote.infer)
        assert (refused.dead_lettered, refused.remaining) == (0, 1)
        peer.status = 200
        assert box.drain(remote.infer).delivered == 1
    assert box.dead_letters() == []
