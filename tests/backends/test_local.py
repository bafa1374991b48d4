from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgecloud import (
    DatatypeMismatchError,
    FunctionBackend,
    InferRequest,
    InvalidRequestError,
    LocalBackend,
    ModelLoadError,
    ModelNotFoundError,
    ModelRepository,
    ShapeMismatchError,
    TensorSpec,
)

from ..models import affine_config, affine_onnx, affine_reference

RNG = np.random.default_rng(0)


def x(batch: int) -> np.ndarray:
    return RNG.standard_normal((batch, 4)).astype(np.float32)


def test_matches_bare_onnxruntime_and_the_reference(repo: ModelRepository) -> None:
    inputs = x(5)
    session = ort.InferenceSession(str(repo.get("affine").model_path))
    bare_y, bare_z = session.run(None, {"x": inputs})
    with LocalBackend(repo, intra_op_threads=1) as local:
        response = local.infer(InferRequest("affine", {"x": inputs}))
    np.testing.assert_array_equal(response.outputs["y"], bare_y)
    np.testing.assert_array_equal(response.outputs["z"], bare_z)
    ref_y, ref_z = affine_reference(inputs)
    np.testing.assert_allclose(response.outputs["y"], ref_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(response.outputs["z"], ref_z, rtol=1e-5, atol=1e-6)
    assert (response.model, response.version) == ("affine", "2")


def test_trace_says_who_served_and_how_long(repo: ModelRepository) -> None:
    with LocalBackend(repo) as local:
        response = local.infer(InferRequest("affine", {"x": x(1)}, id="req-7"))
    assert response.id == "req-7"
    assert response.trace.served_by == "local:affine/2"
    (span,) = response.trace.spans
    assert span.kind == "compute" and 0 < span.seconds < 1


def test_batches_above_the_limit_are_split_and_joined(repo: ModelRepository) -> None:
    inputs = x(19)  # max_batch_size is 8: three runtime calls
    with LocalBackend(repo) as local:
        out = local.infer(InferRequest("affine", {"x": inputs})).outputs
    np.testing.assert_allclose(out["y"], affine_reference(inputs)[0], rtol=1e-5, atol=1e-6)
    assert out["z"].shape == (19, 3)


def test_requested_outputs_only(repo: ModelRepository) -> None:
    with LocalBackend(repo) as local:
        out = local.infer(InferRequest("affine", {"x": x(2)}, outputs=["z"])).outputs
        assert list(out) == ["z"]
        with pytest.raises(InvalidRequestError, match=r"no output\(s\) \['w'\].*\['y', 'z'\]"):
            local.infer(InferRequest("affine", {"x": x(2)}, outputs=["w"]))


def test_explicit_version_and_unknown_model(repo: ModelRepository) -> None:
    with LocalBackend(repo) as local:
        assert local.infer(InferRequest("affine", {"x": x(1)}, version="2")).version == "2"
        with pytest.raises(ModelNotFoundError, match="no model 'ghost'"):
            local.infer(InferRequest("ghost", {"x": x(1)}))


def test_bad_inputs_raise_typed_errors(repo: ModelRepository) -> None:
    with LocalBackend(repo) as local:
        with pytest.raises(DatatypeMismatchError, match="expects datatype FP32, got FP64"):
            local.infer(InferRequest("affine", {"x": x(1).astype(np.float64)}))
        with pytest.raises(ShapeMismatchError, match=r"got \[1, 5\]"):
            local.infer(InferRequest("affine", {"x": np.zeros((1, 5), np.float32)}))


def test_async_requests_run_concurrently_and_agree(repo: ModelRepository) -> None:
    batches = [x(3) for _ in range(16)]

    async def run_all(local: LocalBackend) -> list[np.ndarray]:
        requests = [InferRequest("affine", {"x": b}) for b in batches]
        responses = await asyncio.gather(*(local.infer_async(r) for r in requests))
        return [r.outputs["y"] for r in responses]

    with LocalBackend(repo) as local:
        results = asyncio.run(run_all(local))
    for batch, y in zip(batches, results, strict=True):
        np.testing.assert_allclose(y, affine_reference(batch)[0], rtol=1e-5, atol=1e-6)


def test_garbage_model_file_is_a_load_error(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    repo.add_version("affine", b"\x08\x01garbage", config=affine_config())
    with (
        LocalBackend(repo) as local,
        pytest.raises(ModelLoadError, match=r"onnxruntime cannot load .*model\.onnx"),
    ):
        local.load("affine")


def test_config_that_disagrees_with_the_graph_is_a_load_error(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    config = affine_config().model_copy(
        update={"inputs": [TensorSpec(name="pixels", datatype="FP32", shape=(4,))]}
    )
    repo.add_version("affine", affine_onnx(tmp_path / "m.onnx"), config=config)
    with (
        LocalBackend(repo) as local,
        pytest.raises(ModelLoadError, match=r"graph inputs \['x'\], config inputs \['pixels'\]"),
    ):
        local.load("affine")


def test_corruption_after_listing_is_caught_at_load(repo: ModelRepository) -> None:
    path = repo.get("affine").model_path
    path.write_bytes(path.read_bytes()[:-10])
    with LocalBackend(repo) as local, pytest.raises(ModelLoadError, match="is corrupt"):
        local.load("affine")


def test_sessions_are_cached_and_unloadable(repo: ModelRepository) -> None:
    with LocalBackend(repo, preload=["affine"]) as local:
        assert [m.label for m in local.loaded()] == ["local:affine/2"]
        assert local.load("affine") is local.load("affine", 2)
        local.unload("affine")
        assert local.loaded() == []


def test_session_threads_are_applied(repo: ModelRepository) -> None:
    with LocalBackend(repo, intra_op_threads=1) as local:
        options = local.load("affine").session.get_session_options()
    assert options.intra_op_num_threads == 1


def test_function_backend_is_a_real_backend() -> None:
    backend = FunctionBackend(lambda inputs: {"twice": inputs["v"] * 2}, name="doubler")
    response = backend.infer(InferRequest("any", {"v": np.arange(3)}))
    np.testing.assert_array_equal(response.outputs["twice"], [0, 2, 4])
    assert response.trace.served_by == "doubler"
    assert asyncio.run(backend.infer_async(InferRequest("any", {"v": np.ones(1)}))).outputs


def test_explicit_versions_are_served_from_the_session_cache(repo: ModelRepository) -> None:
    with LocalBackend(repo) as local:
        first = local.load("affine", 2)
        (repo.root / "affine" / "config.yaml").unlink()  # no disk access once loaded
        assert local.load("affine", "2") is first
        assert local.infer(InferRequest("affine", {"x": x(1)}, version="2")).version == "2"
