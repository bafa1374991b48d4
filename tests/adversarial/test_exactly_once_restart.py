"""Issue 14, kind 2: exactly-once in effect holds across server crashes and restarts.

The outbox delivers at least once (an item is deleted only after the server
answered); the server's durable idempotency store turns a re-send into a
replay. Here both ends die by SIGKILL between the answer and the delete:
the edge process after it received the answer, the server right after. A
restarted server on the same store answers the re-sent item from the store,
without computing, with the same bytes. Past the window (documented:
``idempotency_window_s``, default 7 days = the outbox's TTL) a re-send is
computed again. A store that cannot be written refuses keyed requests with
a retryable 503 rather than computing without the promise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from edgecloud import (
    IdempotencyKeyReuseError,
    InferRequest,
    InferResponse,
    Outbox,
    RemoteBackend,
    UnavailableError,
)
from edgecloud.advisor import advise, scenario, scenario_names
from edgecloud.advisor.deploy import deployment_for, server_env, server_settings_for
from edgecloud.server.idempotency import IdempotencyStore, IdempotentRunner
from edgecloud.server.launch import free_port, launch
from edgecloud.server.metrics import ServerMetrics
from edgecloud.server.settings import IDEMPOTENCY_WINDOW_S, ServerSettings
from edgecloud.tensors import RequestContext, Trace
from edgecloud.wire.fingerprint import binding

from ..models import affine_reference, make_repo
from ..server.conftest import Server, add_batching, start_server

X = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)

#: The edge: drain the outbox; on the server's answer save it, then die by
#: SIGKILL before the outbox can delete the item.
EDGE = """
import os, signal, sys
import numpy as np
from edgecloud import Outbox, RemoteBackend
outbox_path, url, answer_path = sys.argv[1:4]
outbox = Outbox(outbox_path)
with RemoteBackend(url, timeout=10) as remote:
    def send(request):
        response = remote.infer(request)
        np.save(answer_path, response.outputs["y"])
        os.kill(os.getpid(), signal.SIGKILL)
    outbox.drain(send)
"""


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Servers started here keep their stores in tmp (the default path, by repository)."""
    monkeypatch.setenv("EDGECLOUD_STATE_DIR", str(tmp_path / "state"))
    yield tmp_path


def metric(server: Server, name: str, labels: str = "") -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def computations(server: Server) -> float:
    return metric(server, "edgecloud_computations_total", '{model="affine"}')


def sigkill(server: Server) -> None:
    server.process.send_signal(signal.SIGKILL)
    assert server.process.wait(timeout=10) == -signal.SIGKILL


def test_an_item_resent_after_both_ends_were_killed_is_computed_once(state: Path) -> None:
    repo = make_repo(state)
    first = start_server(repo, state)
    outbox = Outbox(state / "outbox.db")
    key = outbox.put(InferRequest("affine", {"x": X}), kind="escalation")
    try:
        edge = subprocess.run(
            [sys.executable, "-c", EDGE, str(state / "outbox.db"), first.url,
             str(state / "answer.npy")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert edge.returncode == -signal.SIGKILL, edge.stderr
        answered = np.load(state / "answer.npy")
        assert computations(first) == 1
    finally:
        sigkill(first)
    assert [item.key for item in outbox.items()] == [key]  # the edge died before deleting

    second = start_server(repo, state)  # same repository: same store
    try:
        responses: list[InferResponse] = []
        with RemoteBackend(second.url, timeout=10) as remote:
            result = outbox.drain(lambda request: responses.append(remote.infer(request)))
        assert result.delivered == 1 and len(outbox) == 0
        assert responses[0].parameters["idempotent_replay"] is True
        np.testing.assert_array_equal(responses[0].outputs["y"], answered)  # same bytes
        np.testing.assert_allclose(answered, affine_reference(X)[0], rtol=1e-5)
        assert computations(second) == 0  # one computation in all: the killed server's
        assert metric(second, "edgecloud_idempotent_replays_total", '{model="affine"}') == 1
    finally:
        second.stop()
        outbox.close()


def test_an_item_resent_after_the_window_is_computed_again(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The promise lasts ``idempotency_window_s`` (here 1 s): a re-send after that
    is a new computation, as documented. Generated deployments keep the window
    at least as long as the outbox's TTL, so an outbox never re-sends that late."""
    monkeypatch.setenv("EDGECLOUD_SERVER_IDEMPOTENCY_WINDOW_S", "1")
    repo = make_repo(state)
    request = InferRequest("affine", {"x": X}, context=RequestContext(idempotency_key="late-1"))
    first = start_server(repo, state)
    try:
        with RemoteBackend(first.url, timeout=10) as remote:
            remote.infer(request)
            assert remote.infer(request).parameters["idempotent_replay"] is True  # in window
    finally:
        sigkill(first)
    time.sleep(1.1)
    second = start_server(repo, state)
    try:
        with RemoteBackend(second.url, timeout=10) as remote:
            again = remote.infer(request)
        assert "idempotent_replay" not in again.parameters
        assert computations(second) == 1
    finally:
        second.stop()


def test_the_default_window_covers_the_outbox_ttl(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    assert ServerSettings().idempotency_window_s >= outbox.ttl_s
    assert outbox.ttl_s <= IDEMPOTENCY_WINDOW_S
    outbox.close()


def test_advise_writes_a_server_window_at_least_the_outbox_ttl() -> None:
    checked = 0
    for name in scenario_names():
        decision = advise(scenario(name))
        if decision.recommended is None:
            continue
        outbox = deployment_for(decision).outbox
        settings = server_settings_for(decision)
        if outbox is None:
            continue
        assert settings is not None, name
        server = ServerSettings(**settings)
        assert server.idempotency_window_s >= outbox.ttl_s, name
        env = server_env(decision)
        assert env is not None and "EDGECLOUD_SERVER_IDEMPOTENCY_WINDOW_S=" in env
        checked += 1
    assert checked >= 1


def test_an_unwritable_store_refuses_keyed_requests_with_503(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file where the store's directory should be: the server starts and serves
    unkeyed requests; keyed ones get 503 naming the store (retryable: an outbox
    keeps the item), counted in edgecloud_idempotency_store_errors_total."""
    (state / "not-a-dir").write_text("")
    monkeypatch.setenv("EDGECLOUD_SERVER_IDEMPOTENCY_DB", str(state / "not-a-dir" / "i.db"))
    server = start_server(make_repo(state), state)
    try:
        with RemoteBackend(server.url, timeout=10) as remote:
            plain = remote.infer(InferRequest("affine", {"x": X}))
            keyed = InferRequest("affine", {"x": X}, context=RequestContext(idempotency_key="k"))
            with pytest.raises(UnavailableError, match="idempotency store .*not-a-dir"):
                remote.infer(keyed)
        assert plain.outputs["y"].shape == (2, 3)
        assert metric(server, "edgecloud_idempotency_store_errors_total") == 1
        assert computations(server) == 1  # the keyed request was not computed
    finally:
        server.stop()
    assert "idempotency store" in server.log.read_text()


def _answer(request: InferRequest, size: int) -> InferResponse:
    return InferResponse(
        request.model, "1", {"y": np.ones(size, np.float32)}, Trace("t", []), id=request.id
    )


def test_a_full_store_refuses_then_recovers_without_computing_twice(tmp_path: Path) -> None:
    """SQLITE_FULL (the database's page limit standing in for a full disk): the
    answer is not sent (503), so nothing was computed "once" for anyone; once
    there is room again the retry is computed and stored."""
    metrics = ServerMetrics()
    store = IdempotencyStore(
        tmp_path / "i.db", window_s=60, max_entries=1000, max_bytes=1 << 30
    )  # fmt: skip
    runner = IdempotentRunner(lambda: store, describe="i.db", metrics=metrics)
    runner.open()
    calls: list[str] = []

    async def send(key: str) -> InferResponse:
        request = InferRequest("m", {"x": X}, context=RequestContext(idempotency_key=key))

        async def compute() -> InferResponse:
            calls.append(key)
            return _answer(request, 64_000)

        return await runner.run(request, compute)

    async def scenario() -> None:
        await send("a")
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(UnavailableError, match="failed .*full"):
            await send("b")
        store._db.execute("PRAGMA max_page_count = 1073741823")
        assert "idempotent_replay" not in (await send("b")).parameters
        assert (await send("b")).parameters["idempotent_replay"] is True
        await runner.close()

    asyncio.run(scenario())
    assert calls == ["a", "b", "b"]
    assert metrics.idempotency_store_errors._value.get() == 1


def test_the_store_is_bounded_and_says_when_it_evicts_unexpired_answers(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    store = IdempotencyStore(
        tmp_path / "i.db", window_s=100, max_entries=3, max_bytes=1 << 20, clock=lambda: now[0]
    )
    request = InferRequest("m", {"x": X})
    for i in range(3):
        assert store.put("m", f"k{i}", "fp", _answer(request, 10)) == 0
        now[0] += 1
    assert store.put("m", "k3", "fp", _answer(request, 10)) == 1  # the oldest, unexpired
    assert store.get("m", "k0") is None and store.get("m", "k3") is not None
    now[0] += 200  # every record expired: they go first, nothing unexpired is evicted
    assert store.put("m", "k4", "fp", _answer(request, 10)) == 0
    assert len(store) == 1 and store.evicted_expired == 3
    store.close()
    reopened = IdempotencyStore(
        tmp_path / "i.db", window_s=100, max_entries=3, max_bytes=1 << 20, clock=lambda: now[0]
    )
    stored = reopened.get("m", "k4")
    assert stored is not None and stored.fingerprint == "fp"
    np.testing.assert_array_equal(stored.response.outputs["y"], np.ones(10, np.float32))
    reopened.close()


def test_concurrent_answers_are_committed_together_and_all_durable(tmp_path: Path) -> None:
    """Group commit: answers arriving while a commit waits for its fsync share the
    next one; every answer is on disk before its caller gets it."""
    store = IdempotencyStore(tmp_path / "i.db", window_s=60, max_entries=1000, max_bytes=1 << 30)
    runner = IdempotentRunner(lambda: store, describe="i.db", metrics=ServerMetrics())
    runner.open()
    requests = [
        InferRequest("m", {"x": X + i}, context=RequestContext(idempotency_key=f"k{i}"))
        for i in range(64)
    ]

    async def scenario() -> list[InferResponse]:
        async def one(request: InferRequest) -> InferResponse:
            async def compute() -> InferResponse:
                return _answer(request, 3)

            return await runner.run(request, compute)

        answers = await asyncio.gather(*(one(r) for r in requests))
        await runner.close()
        return answers

    assert len(asyncio.run(scenario())) == 64
    reopened = IdempotencyStore(tmp_path / "i.db", window_s=60, max_entries=1000, max_bytes=1 << 30)
    assert len(reopened) == 64 and all(reopened.get("m", f"k{i}") for i in range(64))
    reopened.close()


def test_the_gateway_keeps_its_promise_across_a_sigkill(state: Path) -> None:
    """`edgecloud edge` answering on the device (no server at all) stores keyed
    answers the same way: killed and restarted, it replays them."""
    repo = make_repo(state)
    path = state / "deployment.yaml"
    path.write_text(yaml.safe_dump({"repository": str(repo.root), "root": "local"}))

    def start() -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        argv = [sys.executable, "-m", "edgecloud.cli", "edge", "-d", str(path), "--port", str(port)]
        running = launch(argv, f"http://127.0.0.1:{port}", log=state / f"edge-{port}.log")
        return running.process, running.url

    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                        "data": X.ravel().tolist()}]}  # fmt: skip
    headers = {"Idempotency-Key": "edge-key-1"}
    process, url = start()
    try:
        first = httpx.post(f"{url}/v2/models/affine/infer", json=body, headers=headers).json()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    process, url = start()
    try:
        again = httpx.post(f"{url}/v2/models/affine/infer", json=body, headers=headers).json()
        other = httpx.post(f"{url}/v2/models/affine/infer", headers=headers,
                           json={"inputs": [{**body["inputs"][0], "data": [0.0] * 8}]})  # fmt: skip
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=15)
    # a graceful stop runs the gateway's shutdown (agent, outbox drainer, store)
    # and exits 0; uvicorn had re-raised the signal, which killed it before that
    assert code == 0
    assert "idempotent_replay" not in first["parameters"]
    assert again["parameters"]["idempotent_replay"] is True
    assert again["outputs"] == first["outputs"]
    assert other.status_code == 422 and "'edge-key-1'" in other.json()["error"]


# -- issue 14 b: one arbiter across processes sharing a store file ---------------


def test_two_servers_on_one_store_compute_a_key_once(state: Path) -> None:
    """Two ``edgecloud serve`` processes on one repository share its store file.
    Concurrent requests under one key, two bodies, spread over both: one body is
    bound and computed once in all (before: each process computed it), every
    request with it gets that answer, every other a 422."""
    repo = make_repo(state)
    add_batching(repo)  # a computation takes >= 20 ms: the other process must wait
    servers = [start_server(repo, state) for _ in range(2)]
    try:
        for trial in range(3):
            before = sum(computations(s) for s in servers)
            _race(servers, f"two-servers-{trial}-{time.time_ns()}")
            assert sum(computations(s) for s in servers) - before == 1
    finally:
        for server in servers:
            server.stop()


def _race(servers: list[Server], key: str) -> None:
    """16 requests at once under ``key``, alternating servers and two bodies."""
    bodies = [X, X + 1]
    jobs = [(i % 2, (i // 2) % 2) for i in range(16)]  # (server, body)
    barrier = threading.Barrier(len(jobs))

    def send(job: tuple[int, int]) -> tuple[int, httpx.Response]:
        server, body = job
        x = bodies[body]
        tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32",
                  "data": x.ravel().tolist()}  # fmt: skip
        barrier.wait()
        reply = httpx.post(
            f"{servers[server].url}/v2/models/affine/infer",
            json={"inputs": [tensor]}, headers={"Idempotency-Key": key}, timeout=30,
        )  # fmt: skip
        return body, reply

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    winners = {body for body, reply in results if reply.status_code == 200}
    assert len(winners) == 1, [(b, r.status_code, r.text[:200]) for b, r in results]
    (winner,) = winners
    expected = affine_reference(bodies[winner])[0]
    for body, reply in results:
        if body != winner:
            assert reply.status_code == 422, reply.text
            continue
        assert reply.status_code == 200, reply.text
        y = np.array(reply.json()["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(y.reshape(expected.shape), expected, rtol=1e-5)


#: Another process on the store: claim a key, say so, wait for a line on stdin,
#: then either store an answer ("put") or exit without one.
CLAIMER = """
import sys
import numpy as np
from edgecloud.server.idempotency import IdempotencyStore
from edgecloud.tensors import InferResponse, Trace
path, key, fingerprint = sys.argv[1:4]
store = IdempotencyStore(path, window_s=60, max_entries=100, max_bytes=1 << 20)
print(store.claim("m", key, fingerprint, stale_after_s=60).kind, flush=True)
if sys.stdin.readline().strip() == "put":
    store.put("m", key, fingerprint, InferResponse("m", "1", {"y": np.full(3, 7, np.float32)},
                                                   Trace("other", [])))
store.close()
"""


def _claimer(path: Path, key: str, fingerprint: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", CLAIMER, str(path), key, fingerprint],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stdout.readline().strip() == "ours"
    return process


def _store(path: Path) -> IdempotencyStore:
    return IdempotencyStore(path, window_s=60, max_entries=100, max_bytes=1 << 20)


def test_a_claim_of_a_live_process_binds_and_one_of_a_gone_or_stale_process_is_taken_over(
    tmp_path: Path,
) -> None:
    path = tmp_path / "i.db"
    store = _store(path)
    other = _claimer(path, "k", "fp-other")
    try:
        held = store.claim("m", "k", "fp-mine", stale_after_s=60)
        assert (held.kind, held.fingerprint) == ("pending", "fp-other")
        stale = store.claim("m", "k", "fp-mine", stale_after_s=0.0)  # older than the timeout
        assert (stale.kind, stale.fingerprint) == ("ours", "fp-mine")
    finally:
        other.communicate("exit\n", timeout=30)
    gone = _claimer(path, "k2", "fp-gone")
    gone.communicate("exit\n", timeout=30)  # the process ends holding its claim (a crash)
    taken = store.claim("m", "k2", "fp-mine", stale_after_s=60)
    assert (taken.kind, taken.fingerprint) == ("ours", "fp-mine")
    store.close()


def test_a_request_waits_for_the_answer_another_process_is_computing(tmp_path: Path) -> None:
    """Same key and payload, the other process claimed it first: this one computes
    nothing and replays that process's answer once stored; another payload is a
    422; if the other process dies without answering, a retryable 503, then the
    retry computes."""
    path = tmp_path / "i.db"
    request = InferRequest("m", {"x": X}, context=RequestContext(idempotency_key="k"))
    calls: list[str] = []

    async def compute() -> InferResponse:
        calls.append("computed")
        return _answer(request, 3)

    async def scenario(other: subprocess.Popen[str], then: str) -> InferResponse:
        runner = IdempotentRunner(lambda: _store(path), describe="i.db", metrics=ServerMetrics())
        runner.open()
        try:
            waiting = asyncio.ensure_future(runner.run(request, compute))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            mismatch = InferRequest("m", {"x": X + 1}, context=request.context)
            with pytest.raises(IdempotencyKeyReuseError, match="another process"):
                await runner.run(mismatch, compute)
            await asyncio.to_thread(other.communicate, then + "\n", 30)  # ends, reaped
            return await waiting
        finally:
            await runner.close()

    other = _claimer(path, "k", binding(request))
    answer = asyncio.run(scenario(other, "put"))
    assert answer.parameters["idempotent_replay"] is True and calls == []
    np.testing.assert_array_equal(answer.outputs["y"], np.full(3, 7, np.float32))

    request = InferRequest("m", {"x": X}, context=RequestContext(idempotency_key="k3"))
    other = _claimer(path, "k3", binding(request))
    with pytest.raises(UnavailableError, match="another process"):
        asyncio.run(scenario(other, "exit"))
    assert calls == []

    async def retry() -> InferResponse:
        runner = IdempotentRunner(lambda: _store(path), describe="i.db", metrics=ServerMetrics())
        runner.open()
        try:
            return await runner.run(request, compute)
        finally:
            await runner.close()

    assert "idempotent_replay" not in asyncio.run(retry()).parameters
    assert calls == ["computed"]
