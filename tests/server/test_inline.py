"""The fast paths of the request path: inline runs of measured-fast models, the lone
request that skips the batcher's queue. Same answers, same checks, same metrics."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgecloud import LocalBackend, ModelRepository
from edgecloud.errors import InvalidRequestError
from edgecloud.server.batching import DynamicBatcher
from edgecloud.server.host import INLINE_BELOW_S, INLINE_WINDOW, ModelHost, RunCost
from edgecloud.server.settings import ServerSettings
from edgecloud.tensors import InferRequest

from ..models import affine_reference


def test_only_a_fast_run_at_least_as_large_sends_a_request_inline() -> None:
    cost = RunCost()
    assert not cost.inline(1), "unmeasured: the pool measures first"
    cost.add(INLINE_BELOW_S * 10, 64)  # slow runs are no evidence
    assert not cost.inline(1)
    cost.add(INLINE_BELOW_S / 4, 64)
    assert cost.inline(64) and cost.inline(1)
    assert not cost.inline(65), "a larger request than any fast run goes to the pool"


def test_a_cheap_batch_never_sends_a_model_with_a_large_fixed_cost_inline() -> None:
    cost = RunCost()
    for _ in range(INLINE_WINDOW):
        cost.add(200e-6, 64 * 64)  # a merged batch: 3 us per row, 200 us per call
    assert not cost.inline(64), "extrapolated from a batch's cost per row"


def test_the_evidence_leaves_with_the_window() -> None:
    cost = RunCost()
    cost.add(1e-6, 640)
    cost.add(1e-6, 64)
    for i in range(INLINE_WINDOW - 2):
        cost.add(1e-3, 640 + i)
    assert cost.inline(640)
    cost.add(1e-3, 640)  # the fast 640-element run leaves the window
    assert not cost.inline(640) and cost.inline(64)
    cost.add(1e-3, 640)  # and then the fast 64-element one
    assert not cost.inline(1)


def _host(repo: ModelRepository, tmp_path: Path, **settings: object) -> ModelHost:
    host = ModelHost(repo, ServerSettings(idempotency_db=tmp_path / "idem.db", **settings))
    host.load_all()
    return host


@pytest.mark.parametrize("batching", [True, False])
def test_a_fast_model_runs_inline_with_the_same_answers_and_checks(
    repo: ModelRepository, tmp_path: Path, batching: bool
) -> None:
    host = _host(repo, tmp_path, dynamic_batching=batching)
    rng = np.random.default_rng(0)

    async def run() -> None:
        loaded = host.local.load("affine")
        host.cost(loaded).add(1e-6, 8)  # a measured fast run of 2 rows (timing-free test)
        for _ in range(10):
            x = rng.standard_normal((2, 4)).astype(np.float32)
            response = await host.infer(InferRequest("affine", {"x": x}))
            np.testing.assert_allclose(response.outputs["y"], affine_reference(x)[0], rtol=1e-5)
            assert response.trace.spans[1].reason == "batch of 2"
        assert not host.executor._threads and not host._batchers, "not run inline"
        with pytest.raises(InvalidRequestError):  # validation runs before the inline run
            await host.infer(InferRequest("affine", {"x": np.zeros((1, 5), np.float32)}))
        x = rng.standard_normal((3, 4)).astype(np.float32)  # larger than any fast run
        response = await host.infer(InferRequest("affine", {"x": x}))
        np.testing.assert_allclose(response.outputs["y"], affine_reference(x)[0], rtol=1e-5)
        assert host.executor._threads, "a request larger than the evidence ran inline"
        assert not host._computing, "computations left behind"
        await host.close()

    asyncio.run(run())
    started = host.metrics.computations_started.labels("affine")._value.get()
    done = host.metrics.computations.labels("affine")._value.get()
    assert started == done == 11


def test_a_version_swapped_in_under_the_same_label_starts_unmeasured(
    repo: ModelRepository, tmp_path: Path
) -> None:
    host = _host(repo, tmp_path)
    loaded = host.local.load("affine")
    host.cost(loaded).add(1e-6, 4)
    assert host.cost(loaded).inline(4)
    fresh = ort.InferenceSession(str(loaded.entry.model_path), providers=["CPUExecutionProvider"])
    swapped = dataclasses.replace(loaded, session=fresh)
    assert swapped.label == loaded.label and not host.cost(swapped).inline(4)
    asyncio.run(host.close())


def test_a_lone_request_skips_the_batcher_queue(repo: ModelRepository) -> None:
    with LocalBackend(repo) as local, ThreadPoolExecutor(2) as pool:
        seen: list[tuple[float, int]] = []
        batcher = DynamicBatcher(
            local.load("affine"), pool, max_batch_size=8,
            observe=lambda s, n: seen.append((s, n)),
        )  # fmt: skip
        x = np.ones((3, 4), np.float32)

        async def run() -> None:
            outputs, queued, _, _ = await batcher.submit({"x": x}, None, 3)
            np.testing.assert_allclose(outputs["y"], affine_reference(x)[0], rtol=1e-5)
            assert queued == 0.0 or queued < 0.05
            assert batcher._task is None, "a lone request went through the batcher's task"
            many = [batcher.submit({"x": x[:1]}, None, 1) for _ in range(6)]
            await asyncio.gather(*many)  # concurrent ones still queue and merge
            await batcher.close()

        asyncio.run(run())
    assert seen[0][1] == x.size and batcher.stats.requests == 7
    assert batcher.stats.batches < 7, "concurrent requests were not merged"
