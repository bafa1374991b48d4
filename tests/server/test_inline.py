"""The fast paths of the request path: inline runs of measured-fast models, the lone
request that skips the batcher's queue. Same answers, same checks, same metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import math
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


def test_run_cost_needs_a_full_window_of_fast_runs() -> None:
    cost = RunCost()
    for _ in range(INLINE_WINDOW - 1):
        cost.add(1e-6, 1)
        assert not cost.inline(1), "decided before the window was full"
    cost.add(1e-6, 1)
    assert cost.inline(1)
    rows = math.ceil(INLINE_BELOW_S / 1e-6)
    assert not cost.inline(rows), "a large request of a fast model must go to the pool"


def test_run_cost_follows_the_fastest_recent_run_and_goes_back_to_the_pool() -> None:
    cost = RunCost()
    for i in range(INLINE_WINDOW):
        cost.add(1e-3 if i % 2 else 2e-6, 1)  # preempted runs among fast ones
    assert cost.inline(1) and cost.per_row_s == pytest.approx(2e-6)
    for _ in range(INLINE_WINDOW):  # every recent run slow: the fast one left the window
        cost.add(1e-3, 1)
    assert not cost.inline(1) and cost.per_row_s == pytest.approx(1e-3)
    cost.add(0.0, 0)  # an empty batch counts as one row, never a division by zero
    assert cost.per_row_s == 0.0


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
        for i in range(INLINE_WINDOW + 8):
            x = rng.standard_normal((2, 4)).astype(np.float32)
            response = await host.infer(InferRequest("affine", {"x": x}))
            np.testing.assert_allclose(response.outputs["y"], affine_reference(x)[0], rtol=1e-5)
            assert response.trace.spans[1].reason == "batch of 2"
            if i == INLINE_WINDOW + 7:
                assert host.cost(loaded).inline(2), "a ~us model never went inline"
        with pytest.raises(InvalidRequestError):  # validation runs before the inline run
            await host.infer(InferRequest("affine", {"x": np.zeros((1, 5), np.float32)}))
        assert not host._computing, "inline requests left computations behind"
        await host.close()

    asyncio.run(run())
    started = host.metrics.computations_started.labels("affine")._value.get()
    done = host.metrics.computations.labels("affine")._value.get()
    assert started == done == INLINE_WINDOW + 8


def test_a_version_swapped_in_under_the_same_label_starts_unmeasured(
    repo: ModelRepository, tmp_path: Path
) -> None:
    host = _host(repo, tmp_path)
    loaded = host.local.load("affine")
    for _ in range(INLINE_WINDOW):
        host.cost(loaded).add(1e-6, 1)
    assert host.cost(loaded).inline(1)
    fresh = ort.InferenceSession(str(loaded.entry.model_path), providers=["CPUExecutionProvider"])
    swapped = dataclasses.replace(loaded, session=fresh)
    assert swapped.label == loaded.label and not host.cost(swapped).inline(1)
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
            outputs, queued, _ = await batcher.submit({"x": x}, None, 3)
            np.testing.assert_allclose(outputs["y"], affine_reference(x)[0], rtol=1e-5)
            assert queued == 0.0 or queued < 0.05
            assert batcher._task is None, "a lone request went through the batcher's task"
            many = [batcher.submit({"x": x[:1]}, None, 1) for _ in range(6)]
            await asyncio.gather(*many)  # concurrent ones still queue and merge
            await batcher.close()

        asyncio.run(run())
    assert seen[0][1] == 3 and batcher.stats.requests == 7
    assert batcher.stats.batches < 7, "concurrent requests were not merged"
