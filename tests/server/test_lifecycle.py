"""Starting, refusing bad settings, and stopping gracefully on SIGTERM."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgecloud import ModelRepository

from ..models import CHAIN_WIDTH, chain_config, chain_onnx, chain_reference, make_repo
from .conftest import Server, start_server


def test_sigterm_drains_in_flight_requests_and_exits(tmp_path: Path) -> None:
    server = start_server(make_repo(tmp_path), tmp_path)
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    answered: list[int] = []

    def keep_sending() -> list[object]:
        outcomes: list[object] = []
        with httpx.Client(timeout=10) as http:
            while True:
                try:
                    status = http.post(
                        server.url + "/v2/models/affine/infer", json=body
                    ).status_code
                except httpx.TransportError as exc:  # refused or closed once shutting down
                    outcomes.append(exc)
                    return outcomes
                outcomes.append(status)
                answered.append(status)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(keep_sending) for _ in range(8)]
        deadline = time.monotonic() + 20
        while len(answered) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = server.process.wait(timeout=15)
        stopped_in = time.monotonic() - started
        outcomes = [o for f in futures for o in f.result(timeout=20)]
    statuses = [o for o in outcomes if isinstance(o, int)]
    assert len(statuses) >= 50
    assert set(statuses) == {200}, "a request was answered with an error during shutdown"
    assert stopped_in < 10
    assert code == 0, "the server died of the signal instead of finishing its shutdown"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_lets_a_grpc_call_in_flight_finish(tmp_path: Path, workers: str) -> None:
    """gRPC drains within shutdown_grace_s as HTTP does, and the process exits 0 after
    its whole shutdown (uvicorn re-raised the signal once HTTP had drained, which
    killed the process before gRPC drained: the call got "Stream removed")."""

    repo = ModelRepository(tmp_path / "repo")
    repo.add_version("chain", chain_onnx(tmp_path / "chain.onnx"), config=chain_config())
    server = start_server(repo, tmp_path, "--workers", workers)
    x = np.random.default_rng(5).standard_normal((4096, CHAIN_WIDTH)).astype(np.float32)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = grpc_call_in_flight(pool, server, x)
        server.process.send_signal(signal.SIGTERM)  # 256 runs of 16 rows still to go
        assert not call.done(), "the call ended before the signal: make it longer"
        answer = call.result(timeout=60).as_numpy("y")
    np.testing.assert_allclose(answer, chain_reference(x), rtol=1e-3, atol=1e-4)
    assert server.process.wait(timeout=30) == 0


def test_serve_refuses_an_empty_repository(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "serve", "--repo", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "edgecloud zoo build" in result.stderr


def test_serve_reports_a_bad_token_file(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "serve", "--repo", str(repo.root),
         "--token-file", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "cannot read a token" in result.stderr
    assert "Traceback" not in result.stderr


def test_repository_object_is_unchanged_by_serving(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in repo.root.rglob("*") if p.is_file()}
    server = start_server(repo, tmp_path)
    server.stop()
    after = {
        p: p.stat().st_mtime_ns for p in ModelRepository(repo.root).root.rglob("*") if p.is_file()
    }
    assert before == after


def test_an_http_request_cut_by_the_grace_period_gets_a_503_to_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past shutdown_grace_s uvicorn cancels what still runs: the client gets a JSON
    503 saying to retry, not uvicorn's plain-text 500, and no traceback is logged."""
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    monkeypatch.setenv("EDGECLOUD_SERVER_SHUTDOWN_GRACE_S", "0.5")  # HTTP: 1 s (whole)
    repo = ModelRepository(tmp_path / "repo")
    slow = chain_onnx(tmp_path / "chain.onnx", depth=240)  # 8192 rows: several seconds
    repo.add_version("chain", slow, config=chain_config())
    server = start_server(repo, tmp_path, "--workers", "1")
    x = np.random.default_rng(6).standard_normal((8192, CHAIN_WIDTH)).astype(np.float32)
    tensor = triton_http.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    client = triton_http.InferenceServerClient(
        server.url.removeprefix("http://"), network_timeout=60
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(client.infer, "chain", [tensor])
        wait_until_computing(server, "chain")
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(InferenceServerException) as refused:
            call.result(timeout=60)
    assert refused.value.status() == "503", refused.value
    assert "retry" in str(refused.value)
    assert server.process.wait(timeout=60) == 0
    log = server.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    """Ctrl-C twice (uvicorn's force exit): the server does not wait for the
    computation in flight, and exits 130 without a traceback."""

    repo = ModelRepository(tmp_path / "repo")
    slow = chain_onnx(tmp_path / "chain.onnx", depth=240)
    repo.add_version("chain", slow, config=chain_config())
    server = start_server(repo, tmp_path, "--workers", "1")
    # seconds of work even where the metrics poll that finds it computing is slow
    # (a loaded machine): 8192 rows once finished inside the 0.3 s between signals
    x = np.zeros((16384, CHAIN_WIDTH), np.float32)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = grpc_call_in_flight(pool, server, x)
        server.process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert not call.done(), "the computation ended before the second Ctrl-C"
        server.process.send_signal(signal.SIGINT)
        begun = time.monotonic()
        code = server.process.wait(timeout=30)
        waited = time.monotonic() - begun
        with pytest.raises(Exception):  # noqa: B017 (cut: UNAVAILABLE or a reset)
            call.result(timeout=30)
    # 130 is the forced path's own exit (os._exit): a graceful stop exits 0
    assert code == 130, (code, waited)
    assert "Traceback" not in server.log.read_text()


def wait_until_computing(server: Server, model: str) -> None:
    """Until the server has handed ``model`` 's first request to the runtime
    (``edgecloud_computations_started_total``), at most 30 s."""
    started = f'edgecloud_computations_started_total{{model="{model}"}} 1.0'
    deadline = time.monotonic() + 30
    while started not in httpx.get(server.url + "/metrics", timeout=10).text:
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.005)


def grpc_call_in_flight(
    pool: concurrent.futures.ThreadPoolExecutor, server: Server, x: np.ndarray
) -> concurrent.futures.Future[Any]:
    """A gRPC infer of ``x`` on ``chain`` (one channel) in ``pool``, returned once
    the server computes it (:func:`wait_until_computing`)."""
    import tritonclient.grpc as triton

    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    client = triton.InferenceServerClient(server.grpc_address)
    call = pool.submit(client.infer, "chain", [tensor], client_timeout=60)
    wait_until_computing(server, "chain")
    return call
