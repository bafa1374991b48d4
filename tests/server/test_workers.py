"""``edgecloud serve --workers 2``: real worker processes, SIGKILL, SIGTERM, crash loops.

Every check here runs against a real supervisor and its real workers; the
worker that answered is read from the ``x-edgecloud-worker`` header.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgecloud import ModelRepository
from edgecloud.server.host import ModelHost
from edgecloud.server.launch import free_port
from edgecloud.server.settings import ServerSettings
from edgecloud.server.workers import Supervisor, available_cores, worker_share

from ..models import (
    CHAIN_WIDTH,
    affine_reference,
    chain_config,
    chain_onnx,
    chain_reference,
    make_repo,
)
from .conftest import TOKEN, Server, add_batching, start_server
from .test_http import (  # the trust checks, again with 2 workers (module fixture below)
    test_auth_is_required_and_checked,
    test_errors_have_status_and_message,
    test_health_needs_no_token,
    test_infer_matches_the_reference,
    test_malformed_bodies_are_400,
    test_model_ready,
    test_oversize_payload_is_413,
)

__all__ = [
    "test_auth_is_required_and_checked",
    "test_errors_have_status_and_message",
    "test_health_needs_no_token",
    "test_infer_matches_the_reference",
    "test_malformed_bodies_are_400",
    "test_model_ready",
    "test_oversize_payload_is_413",
]

X = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X.ravel().tolist()}]}
EXPECTED = affine_reference(X)[0]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Idempotency stores of these servers live here, not in $HOME."""
    monkeypatch.setenv("EDGECLOUD_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def workers_of(server: Server) -> set[int]:
    """The pids of the supervisor's live children."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(child) for child in children if _alive(int(child))}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def count(server: Server, name: str, model: str = "affine") -> float:
    text = httpx.get(server.url + "/metrics", headers=server.headers(), timeout=10).text
    pattern = rf'^{name}{{code="200",model="{model}",protocol="http"}} (\S+)$'
    match = re.search(pattern, text, re.M) or re.search(
        rf'^{name}{{model="{model}"}} (\S+)$', text, re.M
    )
    return float(match.group(1)) if match else 0.0


def wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s")


def test_a_killed_worker_is_replaced_and_no_answer_is_wrong(state: Path) -> None:
    server = start_server(make_repo(state), state, "--workers", "2")
    try:
        first = workers_of(server)
        assert len(first) == 2
        ok, wrong, refused, statuses = [0], [0], [0], set()
        stop = threading.Event()

        def keep_sending() -> None:
            with httpx.Client(timeout=10) as http:
                while not stop.is_set():
                    try:
                        reply = http.post(server.url + "/v2/models/affine/infer", json=BODY)
                    except httpx.TransportError:  # in flight on the dead worker
                        refused[0] += 1
                        continue
                    statuses.add(reply.status_code)
                    y = np.array(reply.json()["outputs"][0]["data"], np.float32)
                    if reply.status_code == 200 and np.allclose(y, EXPECTED.ravel(), rtol=1e-5):
                        ok[0] += 1
                    else:
                        wrong[0] += 1
                    # leave the GIL to the readiness probe: the not-ready window between
                    # the kill and the replacement is a few tenths of a second
                    time.sleep(0.002)

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            senders = [pool.submit(keep_sending) for _ in range(6)]
            try:  # the senders stop whatever happens: a failure must not hang the run
                wait_for(lambda: ok[0] >= 100)
                victim = min(first)
                os.kill(victim, signal.SIGKILL)
                # Not ready while one is missing, ready again once replaced.
                wait_for(lambda: httpx.get(server.url + "/v2/health/ready").status_code == 503, 5)
                wait_for(lambda: httpx.get(server.url + "/v2/health/ready").status_code == 200)
                answered = ok[0]
                wait_for(lambda: ok[0] >= answered + 100)
            finally:
                stop.set()
            for sender in senders:
                sender.result(timeout=30)
        now = workers_of(server)
        assert victim not in now and len(now) == 2 and len(now - first) == 1
        assert wrong[0] == 0 and statuses == {200}
        assert refused[0] <= 12  # the requests in flight on (or queued to) the dead worker
        # The dead worker's counts stay in the merged metrics.
        total = count(server, "edgecloud_requests_total")
        assert ok[0] <= total <= ok[0] + refused[0]
        # A worker dies and its replacement cannot load the models any more: the
        # server exits with that error instead of restarting forever.
        shutil.rmtree(server.repo.root / "affine")
        shutil.rmtree(server.repo.root / "two-input")
        os.kill(min(now), signal.SIGKILL)
        assert server.process.wait(timeout=30) == 1
        assert "error: no model in" in server.log.read_text()
        wait_for(lambda: not any(_alive(pid) for pid in now), 10)
    finally:
        if server.process.poll() is None:
            server.stop()


def test_sigterm_stops_every_worker_after_its_in_flight_requests(state: Path) -> None:
    server = start_server(make_repo(state), state, "--workers", "2")
    pids = workers_of(server)
    statuses: list[int] = []

    def keep_sending() -> None:
        with httpx.Client(timeout=10) as http:
            while True:
                try:
                    reply = http.post(server.url + "/v2/models/affine/infer", json=BODY)
                except httpx.TransportError:  # refused or closed once stopping
                    return
                statuses.append(reply.status_code)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        senders = [pool.submit(keep_sending) for _ in range(6)]
        wait_for(lambda: len(statuses) >= 100)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=20)
        stopped_in = time.monotonic() - started
        for sender in senders:
            sender.result(timeout=30)
    assert code == 0 and stopped_in < 5 + 5  # shutdown_grace_s + STOP_MARGIN_S
    assert set(statuses) == {200}
    wait_for(lambda: not any(_alive(pid) for pid in pids), 5)


def _serve(
    repo: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "edgecloud.cli", "serve", "--repo", str(repo),
            "--http-port", str(free_port()), "--grpc-port", "-1", *extra]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def test_a_worker_that_cannot_start_stops_the_server_with_its_error(state: Path) -> None:
    (state / "repo").mkdir()
    repo = make_repo(state / "repo")
    for model in ("affine", "two-input"):
        (repo.root / model / "config.yaml").write_text("name: broken\ninputs: [\n")
    result = _serve(repo.root, "--workers", "2")
    assert result.returncode == 1
    assert "can be served" in result.stderr and "Traceback" not in result.stderr
    env = {**os.environ, "EDGECLOUD_SERVER_IDEMPOTENCY_DB": ":memory:"}
    memory = _serve(repo.root, "--workers", "2", env=env)
    assert memory.returncode == 1 and ":memory:" in memory.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        taken = _serve(repo.root, "--workers", "2", "--grpc-port", port)
    assert taken.returncode == 1 and f"127.0.0.1:{port}: the port is in use" in taken.stderr


# -- idempotency across workers ----------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """conftest's ``server`` (token, request limit, a broken model) with 2 workers:
    the trust checks of test_http imported below run against it."""
    tmp = tmp_path_factory.mktemp("workers")
    repo = make_repo(tmp)
    add_batching(repo)
    (repo.root / "broken" / "1").mkdir(parents=True)
    (repo.root / "broken" / "config.yaml").write_text("name: broken\ninputs: [\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGECLOUD_STATE_DIR", str(tmp / "state"))
        running = start_server(repo, tmp, "--max-request-mb", "0.05", "--workers", "2",
                               token=TOKEN)  # fmt: skip
    yield running
    if running.process.poll() is None:
        running.stop()


def _keyed(server: Server, key: str, x: np.ndarray = X) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    headers = {**server.headers(), "Idempotency-Key": key}
    with httpx.Client(timeout=10) as http:  # a connection of its own
        return http.post(f"{server.url}/v2/models/affine/infer", json=body, headers=headers)


def test_one_key_sent_to_two_workers_at_once_is_computed_once(server: Server) -> None:
    before = count(server, "edgecloud_computations_total")
    for rounds in range(1, 21):  # noqa: B007 (until both workers took part in one round)
        keys = [uuid.uuid4().hex] * 8
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda key: _keyed(server, key), keys))
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        outputs = [r.json()["outputs"] for r in replies]
        assert all(o == outputs[0] for o in outputs)
        assert sum(not r.json()["parameters"].get("idempotent_replay") for r in replies) == 1
        if len({r.headers["x-edgecloud-worker"] for r in replies}) == 2:
            break
    else:
        pytest.fail("20 rounds of 8 connections never reached both workers")
    assert count(server, "edgecloud_computations_total") - before == rounds


def test_a_reused_key_is_422_on_the_other_worker_too(server: Server) -> None:
    key = uuid.uuid4().hex
    first = _keyed(server, key)
    assert first.status_code == 200
    other = X + 1
    seen: set[str] = set()
    for _ in range(40):
        reply = _keyed(server, key, other)
        assert reply.status_code == 422 and repr(key) in reply.json()["error"]
        seen.add(reply.headers["x-edgecloud-worker"])
        if seen - {first.headers["x-edgecloud-worker"]}:
            return
    pytest.fail("40 connections never reached the other worker")


def test_a_killed_supervisor_leaves_no_worker(server: Server) -> None:
    """Last of the module: it ends the module's server."""
    pids = workers_of(server)
    server.process.kill()
    server.process.wait()
    wait_for(lambda: not any(_alive(pid) for pid in pids), 10)


# -- compute split among workers ------------------------------------------------


@pytest.mark.parametrize(
    ("threads", "runners", "workers", "cores", "share"),
    [
        (1, 2, 1, 2, (1, 2)),  # one process: as configured
        (1, 2, 2, 2, (1, 1)),  # the default on 2 cores: 2 batches at once in all, not 4
        (0, 2, 2, 2, (1, 1)),  # all cores: one each
        (0, 2, 2, 8, (4, 1)),
        (0, 2, 3, 8, (2, 1)),
        (1, 8, 2, 8, (1, 4)),
        (2, 2, 4, 2, (2, 1)),  # explicit threads stay; a worker keeps at least 1 slot
    ],
)
def test_worker_share_splits_threads_of_0_and_runner_slots(
    threads: int, runners: int, workers: int, cores: int, share: tuple[int, int]
) -> None:
    assert worker_share(threads, runners, workers, cores) == share


def test_a_worker_gets_its_share_and_sessions_that_do_not_spin(state: Path) -> None:
    """The settings a forked worker serves with, and the onnxruntime session its host
    opens from them (the host is what every worker builds)."""
    repo = make_repo(state)
    settings = ServerSettings(runners_per_model=2, intra_op_threads=0, idempotency_window_s=0)
    worker = Supervisor(repo.root, settings, 2)._split(free_port(), None)
    expected = worker_share(0, 2, 2, available_cores())
    assert (worker.intra_op_threads, worker.runners_per_model) == expected
    assert worker.workers == 1
    host = ModelHost(repo, worker)
    try:
        options = host.local.load("affine").session.get_session_options()
        assert options.intra_op_num_threads == expected[0]
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    finally:
        host.local.close()
        host.executor.shutdown()


# -- cores shared by the workers ---------------------------------------------


def test_one_grpc_channel_gets_every_core_through_borrowed_slots(state: Path) -> None:
    """One channel is one connection, so one worker takes all its calls: with the
    other worker idle, it runs batches beyond its share (server/cores.py), counted
    in edgecloud_borrowed_batches_total; every answer is still its own."""
    import tritonclient.grpc as triton

    repo = ModelRepository(state / "repo")
    repo.add_version("chain", chain_onnx(state / "chain.onnx"), config=chain_config())
    server = start_server(repo, state, "--workers", "2")
    try:
        client = triton.InferenceServerClient(server.grpc_address)  # one channel
        rng = np.random.default_rng(3)
        xs = [rng.standard_normal((1, CHAIN_WIDTH)).astype(np.float32) for _ in range(192)]

        def infer(x: np.ndarray) -> np.ndarray:
            tensor = triton.InferInput("x", [1, CHAIN_WIDTH], "FP32")
            tensor.set_data_from_numpy(x)
            return client.infer("chain", [tensor]).as_numpy("y")  # type: ignore[no-any-return]

        # a worker borrows once it has measured the other idle (0.1 s windows):
        # bursts until it has, every answer checked
        for _ in range(10):
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                answers = list(pool.map(infer, xs))
            for x, y in zip(xs, answers, strict=True):
                np.testing.assert_allclose(y, chain_reference(x), rtol=1e-3, atol=1e-4)
            if count(server, "edgecloud_borrowed_batches_total", "chain") > 0:
                break
        assert count(server, "edgecloud_borrowed_batches_total", "chain") > 0
        assert count(server, "edgecloud_borrowed_batches_total", "chain") <= count(
            server, "edgecloud_batch_size_count", "chain"
        )
    finally:
        server.stop()
