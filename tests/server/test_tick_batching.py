"""Tick batching: requests for a measured-fast model that arrive in one event-loop
iteration run as one merged call on the loop, each answered with its own rows.

Timing-free: each test marks the model fast (a measured run of many elements)
instead of relying on how fast this machine runs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecloud import ModelRepository
from edgecloud.errors import EdgecloudError
from edgecloud.repository import ModelConfig, TensorSpec
from edgecloud.server.batching import PROBE_EVERY
from edgecloud.server.host import ModelHost
from edgecloud.server.settings import ServerSettings
from edgecloud.tensors import InferRequest

from ..models import affine_reference

TABLE = np.arange(20, dtype=np.float32).reshape(10, 2)


def _lookup(root: Path) -> Path:
    """out = table[ids]: ids INT64 [batch, 1] -> FP32 [batch, 1, 2]; an id outside
    0..9 makes onnxruntime fail (no declared domain: the runtime is the check)."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["out"])],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1, 2])],
        initializer=[numpy_helper.from_array(TABLE, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = root / "lookup.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def host(repo: ModelRepository, tmp_path: Path) -> Iterator[ModelHost]:
    config = ModelConfig(
        name="lookup",
        max_batch_size=8,
        inputs=[TensorSpec(name="ids", datatype="INT64", shape=(1,))],
        outputs=[TensorSpec(name="out", datatype="FP32", shape=(1, 2))],
    )
    repo.add_version("lookup", _lookup(tmp_path), config=config)
    host = ModelHost(repo, ServerSettings(idempotency_db=tmp_path / "idem.db"))
    host.load_all()
    yield host


def _fast(host: ModelHost, model: str) -> None:
    """Mark ``model`` measured-fast for requests of up to 10,000 elements."""
    host.cost(host.local.load(model)).add(1e-7, 10_000)


def _executions(host: ModelHost, model: str) -> tuple[float, float]:
    """(runtime calls, rows run) from the batch-size histogram, as /metrics shows it."""
    host.metrics.deferred.flush()
    child = host.metrics.batch_size.labels(model)
    return sum(b.get() for b in child._buckets), child._sum.get()


def test_one_iterations_requests_run_as_one_call_each_with_its_own_rows(
    host: ModelHost,
) -> None:
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1 + i % 2, 4)).astype(np.float32) for i in range(5)]

    async def run() -> None:
        _fast(host, "affine")
        responses = await asyncio.gather(
            *(host.infer(InferRequest("affine", {"x": x})) for x in xs)
        )
        for x, response in zip(xs, responses, strict=True):
            y, z = affine_reference(x)
            np.testing.assert_allclose(response.outputs["y"], y, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(response.outputs["z"], z, rtol=1e-5, atol=1e-6)
            assert response.trace.spans[1].reason == "batch of 7"
        assert not host.executor._threads and not host._batchers, "left the event loop"
        await host.close()

    asyncio.run(run())
    assert _executions(host, "affine") == (1, 7)
    started = host.metrics.computations_started.labels("affine")._value.get()
    assert started == host.metrics.computations.labels("affine")._value.get() == 5


def test_a_merged_call_holds_at_most_max_batch_size_rows_and_one_kind(host: ModelHost) -> None:
    x = np.ones((1, 4), np.float32)

    async def run() -> None:
        _fast(host, "affine")
        same = [host.infer(InferRequest("affine", {"x": x * i})) for i in range(11)]
        only_y = [host.infer(InferRequest("affine", {"x": x}, outputs=["y"])) for _ in range(3)]
        responses = await asyncio.gather(*same, *only_y)
        for i, response in enumerate(responses[:11]):
            np.testing.assert_allclose(response.outputs["y"], affine_reference(x * i)[0], rtol=1e-5)
        assert all(set(r.outputs) == {"y"} for r in responses[11:])
        await host.close()

    asyncio.run(run())
    # affine's max_batch_size is 8: 8 + 3 rows of both outputs, 3 of "y" alone
    assert _executions(host, "affine") == (3, 14)


def test_a_request_the_runtime_refuses_fails_alone(host: ModelHost) -> None:
    ids = [3, 42, 7, -100]  # 42 and -100 are outside the table: onnxruntime refuses them

    async def run() -> list[object]:
        _fast(host, "lookup")
        requests = [
            host.infer(InferRequest("lookup", {"ids": np.array([[i]], np.int64)})) for i in ids
        ]
        outcomes = await asyncio.gather(*requests, return_exceptions=True)
        await host.close()
        return outcomes

    outcomes = asyncio.run(run())
    for i, outcome in zip(ids, outcomes, strict=True):
        if 0 <= i < 10:
            assert not isinstance(outcome, BaseException), outcome
            np.testing.assert_array_equal(outcome.outputs["out"], TABLE[[[i]]])  # type: ignore[attr-defined]
        else:
            assert isinstance(outcome, EdgecloudError), outcome


def test_a_cancelled_caller_leaves_its_companions_answered(host: ModelHost) -> None:
    x = np.ones((1, 4), np.float32)

    async def run() -> None:
        _fast(host, "affine")
        tasks = [
            asyncio.ensure_future(host.infer(InferRequest("affine", {"x": x}))) for _ in range(4)
        ]
        await asyncio.sleep(0)  # all four queued for this iteration's merged call
        tasks[1].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[1], asyncio.CancelledError)
        for response in (done[0], done[2], done[3]):
            np.testing.assert_allclose(
                response.outputs["y"],
                affine_reference(x)[0],
                rtol=1e-5,  # type: ignore[union-attr]
            )
        await host.close()

    asyncio.run(run())


def test_light_load_runs_inline_and_probes_for_companions(host: ModelHost) -> None:
    x = np.ones((1, 4), np.float32)

    async def run() -> None:
        _fast(host, "affine")
        await host.infer(InferRequest("affine", {"x": x}))  # a lone merged call: solo mode
        tick = host._ticks[host.local.load("affine").label]
        assert not any(tick.wanted() for _ in range(PROBE_EVERY - 1)), "not inline at once"
        # the next request is the probe: its companions of this iteration join it
        await asyncio.gather(*(host.infer(InferRequest("affine", {"x": x})) for _ in range(3)))
        assert tick.wanted(), "load came back: merge again"
        await host.close()

    asyncio.run(run())


def test_without_dynamic_batching_nothing_is_merged(repo: ModelRepository, tmp_path: Path) -> None:
    host = ModelHost(
        repo, ServerSettings(idempotency_db=tmp_path / "idem.db", dynamic_batching=False)
    )
    host.load_all()
    x = np.ones((1, 4), np.float32)

    async def run() -> None:
        _fast(host, "affine")
        await asyncio.gather(*(host.infer(InferRequest("affine", {"x": x})) for _ in range(5)))
        await host.close()

    asyncio.run(run())
    assert _executions(host, "affine") == (5, 5)
