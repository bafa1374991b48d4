"""Kind 1: dynamic batching answers every request with its own rows.

The kind: whatever the mix of row counts sent at once — empty batches
(``shape [0, 4]``), one row, up to and beyond ``max_batch_size``, several
batched inputs — each client gets exactly the answer for its own rows, and a
model whose output has no batch dimension is never merged nor split. Checked
through the real server (JSON and binary over HTTP, gRPC), the in-process
DynamicBatcher and LocalBackend's splitting of oversized batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecloud import InferRequest, InvalidRequestError, LocalBackend, ModelRepository
from edgecloud.backends.remote import RemoteBackend
from edgecloud.server.batching import DynamicBatcher

from ..models import affine_reference
from ..server.conftest import Server, start_server
from ._server_helpers import adversarial_repo, adversarial_server

__all__ = ["adversarial_repo", "adversarial_server"]

#: Row counts per request: empty batches, ordinary ones, and (affine's limit is 8) oversized.
ROWS = st.lists(st.integers(0, 12), min_size=2, max_size=10)
PROPERTY = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def batch(rows: int, seed: int) -> np.ndarray:
    """``rows`` distinct rows of 4 floats; seeds keep requests apart."""
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)


def check_own_rows(x: np.ndarray, y: np.ndarray) -> None:
    assert y.shape == (x.shape[0], 3), f"{x.shape[0]} rows in, got {y.shape}"
    np.testing.assert_allclose(y, affine_reference(x)[0], rtol=1e-5, atol=1e-6)


def json_infer(server: Server, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}], "outputs": [{"name": "y"}]}  # fmt: skip
    answer = httpx.post(f"{server.url}/v2/models/affine/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


@PROPERTY
@given(rows=ROWS)
def test_http_json_clients_get_their_own_rows(adversarial_server: Server, rows: list[int]) -> None:
    inputs = [batch(n, seed) for seed, n in enumerate(rows)]
    with ThreadPoolExecutor(len(inputs)) as pool:
        answers = list(pool.map(lambda x: json_infer(adversarial_server, x), inputs))
    for x, y in zip(inputs, answers, strict=True):
        check_own_rows(x, y)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
@PROPERTY
@given(rows=ROWS)
def test_remote_clients_get_their_own_rows(
    adversarial_server: Server, scheme: str, rows: list[int]
) -> None:
    address = (
        adversarial_server.http_address if scheme == "http" else adversarial_server.grpc_address
    )
    inputs = [batch(n, seed) for seed, n in enumerate(rows)]
    with (
        RemoteBackend(f"{scheme}://{address}", timeout=30) as remote,
        ThreadPoolExecutor(8) as pool,
    ):
        answers = list(
            pool.map(
                lambda x: remote.infer(InferRequest("affine", {"x": x}, outputs=["y"])), inputs
            )
        )
    for x, answer in zip(inputs, answers, strict=True):
        check_own_rows(x, answer.outputs["y"])


@PROPERTY
@given(rows=st.lists(st.integers(0, 6), min_size=2, max_size=8))
def test_several_batched_inputs_split_by_rows(adversarial_server: Server, rows: list[int]) -> None:
    """two-input (max_batch_size 4): both inputs merged and split together."""
    rng = np.random.default_rng(sum(rows))
    pairs = [
        (rng.standard_normal((n, 2)).astype(np.float32), rng.integers(-5, 5, (n, 2))) for n in rows
    ]
    url = f"http://{adversarial_server.http_address}"
    with RemoteBackend(url, timeout=30) as remote, ThreadPoolExecutor(len(pairs)) as pool:
        answers = list(
            pool.map(
                lambda p: remote.infer(InferRequest("two-input", {"a": p[0], "b": p[1]})), pairs
            )
        )
    for (a, b), answer in zip(pairs, answers, strict=True):
        np.testing.assert_allclose(answer.outputs["out"], a * b.astype(np.float32), rtol=1e-6)


def test_output_without_batch_dimension_is_never_merged(adversarial_server: Server) -> None:
    """pooled's ``total`` sums its request's rows: merged, every client would get the sum
    of everyone's; each must get the sum of its own."""
    inputs = [batch(n, seed) for seed, n in enumerate([1, 2, 3, 3, 1, 4, 2, 1])]
    with RemoteBackend(f"http://{adversarial_server.http_address}", timeout=30) as remote:
        with ThreadPoolExecutor(len(inputs)) as pool:
            answers = list(
                pool.map(lambda x: remote.infer(InferRequest("pooled", {"x": x})), inputs)
            )
        for x, answer in zip(inputs, answers, strict=True):
            np.testing.assert_allclose(answer.outputs["total"], x.sum(axis=0), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(answer.outputs["y"], 2 * x, rtol=1e-6)
        # Asking only for the batched output may merge; the rows still come back right.
        only_y = remote.infer(InferRequest("pooled", {"x": inputs[3]}, outputs=["y"]))
        np.testing.assert_allclose(only_y.outputs["y"], 2 * inputs[3], rtol=1e-6)
        # An empty batch is never run (tests/adversarial/test_zero_size.py): ``total`` has
        # no batch dimension, so its answer to 0 rows is unknown without a run — a 400.
        with pytest.raises(InvalidRequestError, match="cannot answer an empty batch"):
            remote.infer(InferRequest("pooled", {"x": batch(0, 0)}))
        empty_y = remote.infer(InferRequest("pooled", {"x": batch(0, 0)}, outputs=["y"]))
        assert empty_y.outputs["y"].shape == (0, 4)


@PROPERTY
@given(rows=ROWS)
def test_in_process_batcher_splits_by_each_requests_rows(
    adversarial_repo: ModelRepository, rows: list[int]
) -> None:
    inputs = [batch(n, seed) for seed, n in enumerate(rows)]
    with LocalBackend(adversarial_repo) as local, ThreadPoolExecutor(2) as pool:
        loaded = local.load("affine")
        batcher = DynamicBatcher(loaded, pool, max_batch_size=8, max_queue_delay_us=5000)

        async def run() -> list[dict[str, np.ndarray]]:
            sizes = [loaded.validator.validate({"x": x}) for x in inputs]
            assert sizes == rows  # an empty batch is 0 rows, not 1
            done = await asyncio.gather(
                *(batcher.submit({"x": x}, None, n) for x, n in zip(inputs, sizes, strict=True))
            )
            await batcher.close()
            return [outputs for outputs, _, _, _ in done]

        answers = asyncio.run(run())
    for x, outputs in zip(inputs, answers, strict=True):
        check_own_rows(x, outputs["y"])


@pytest.fixture(scope="module")
def local(adversarial_repo: ModelRepository) -> Iterator[LocalBackend]:
    with LocalBackend(adversarial_repo) as backend:
        yield backend


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(0, 30))
def test_local_backend_splits_oversized_batches_by_rows(local: LocalBackend, rows: int) -> None:
    x = batch(rows, rows)
    answer = local.infer(InferRequest("affine", {"x": x}))  # max_batch_size 8
    check_own_rows(x, answer.outputs["y"])
    pooled = local.infer(InferRequest("pooled", {"x": x[:4]}, outputs=["y"]))
    np.testing.assert_allclose(pooled.outputs["y"], 2 * x[:4], rtol=1e-6)
    if rows > 4:  # pooled takes 4 rows per run; y alone splits, total cannot
        split = local.infer(InferRequest("pooled", {"x": x}, outputs=["y"]))
        np.testing.assert_allclose(split.outputs["y"], 2 * x, rtol=1e-6)
        with pytest.raises(InvalidRequestError, match="no batch dimension.*send at most 4 rows"):
            local.infer(InferRequest("pooled", {"x": x}))


@pytest.fixture(scope="module")
def zoo_server(
    zoo_repo: ModelRepository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    running = start_server(zoo_repo, tmp_path_factory.mktemp("zoo-batching"))
    yield running
    running.stop()


def test_zoo_digits_with_empty_batches_mixed_in(
    zoo_repo: ModelRepository, zoo_server: Server
) -> None:
    """The issue's case: digits-small, default config, zero-row requests among ordinary ones."""
    rng = np.random.default_rng(13)
    sizes = [0, 1, 2, 0, 1, 3, 0, 1] * 6
    inputs = [rng.random((n, 64), dtype=np.float32) * 16 for n in sizes]
    with LocalBackend(zoo_repo) as local:
        expected = [local.infer(InferRequest("digits-small", {"pixels": x})) for x in inputs]
    url = f"http://{zoo_server.http_address}"
    with RemoteBackend(url, timeout=30) as remote, ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(lambda x: remote.infer(InferRequest("digits-small", {"pixels": x})), inputs)
        )
    for want, got in zip(expected, answers, strict=True):
        for name, value in want.outputs.items():
            np.testing.assert_allclose(got.outputs[name], value, rtol=1e-4, atol=1e-5)
