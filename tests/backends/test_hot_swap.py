"""LocalBackend.open/publish: swapping served sessions under load, with real onnxruntime."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgecloud import (
    ConfigError,
    InferRequest,
    LocalBackend,
    ModelLoadError,
    ModelNotFoundError,
    ModelRepository,
)

from ..models import BIAS, WEIGHTS, affine_config, affine_onnx

X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


def shifted_onnx(path: Path, shift: float) -> Path:
    """The affine model with ``shift`` added to its bias: y = x @ W + b + shift."""
    model = onnx.load(str(affine_onnx(path)))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "b":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(BIAS + shift, "b"))
    onnx.save(model, str(path))
    return path


def expected_y(version: int) -> np.ndarray:
    return X @ WEIGHTS + BIAS + version  # version v is built with shift v


@pytest.fixture
def swap_repo(tmp_path: Path) -> ModelRepository:
    """``affine`` versions 1, 2, 3, each with its bias shifted by its number."""
    repo = ModelRepository(tmp_path / "repo")
    for v in (1, 2, 3):
        onnx_file = shifted_onnx(tmp_path / f"v{v}.onnx", float(v))
        repo.add_version("affine", onnx_file, config=affine_config() if v == 1 else None)
    return repo


def y_of(local: LocalBackend, version: int | None = None) -> tuple[str, np.ndarray]:
    response = local.infer(InferRequest("affine", {"x": X}, version=version))
    return response.version, response.outputs["y"]


def test_publish_serves_exactly_the_published_versions(swap_repo: ModelRepository) -> None:
    with LocalBackend(swap_repo, intra_op_threads=1) as local:
        assert local.published("affine") is None
        assert y_of(local)[0] == "3"  # the policy: latest 1
        v1, v2 = local.open("affine", 1), local.open("affine", 2)  # outside the policy
        local.publish("affine", {1: v1, 2: v2})
        version, y = y_of(local)
        assert version == "2"
        np.testing.assert_allclose(y, expected_y(2), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y_of(local, 1)[1], expected_y(1), rtol=1e-5, atol=1e-5)
        with pytest.raises(ModelNotFoundError, match=r"version 3 \(published: \[1, 2\]\)"):
            local.infer(InferRequest("affine", {"x": X}, version=3))
        assert local.published("affine") == {1: v1, 2: v2}
        local.publish("affine", {1: v1, 2: v2}, latest=1)
        assert y_of(local)[0] == "1"
        local.publish("affine", {})
        with pytest.raises(ModelNotFoundError, match="does not serve any version"):
            y_of(local)
        local.unload("affine")  # back to the version policy
        assert local.published("affine") is None
        assert y_of(local)[0] == "3"


def test_open_is_fresh_and_not_served(swap_repo: ModelRepository) -> None:
    with LocalBackend(swap_repo) as local:
        served = local.load("affine")
        opened = local.open("affine", 3)
        assert opened is not served and opened.session is not served.session
        assert local.loaded() == [served]
        with pytest.raises(ModelNotFoundError, match="no version 9"):
            local.open("affine", 9)
        with pytest.raises(ModelNotFoundError, match="no model 'nope'"):
            local.open("nope", 1)


def test_publish_refuses_a_mismatched_table_and_changes_nothing(
    swap_repo: ModelRepository,
) -> None:
    with LocalBackend(swap_repo) as local:
        v1, v2 = local.open("affine", 1), local.open("affine", 2)
        local.publish("affine", {1: v1})
        with pytest.raises(ConfigError, match="version 2 is given a session of model 'affine' v"):
            local.publish("affine", {2: v1})
        with pytest.raises(ConfigError, match=r"latest version 5 is not among .* \[1, 2\]"):
            local.publish("affine", {1: v1, 2: v2}, latest=5)
        assert local.published("affine") == {1: v1}
        assert y_of(local)[0] == "1"


def test_a_failing_open_leaves_the_published_set_untouched(swap_repo: ModelRepository) -> None:
    with LocalBackend(swap_repo) as local:
        v2 = local.open("affine", 2)
        local.publish("affine", {2: v2})
        (swap_repo.root / "affine" / "3" / "model.onnx").write_bytes(b"not a model")
        with pytest.raises(ModelLoadError, match="is corrupt"):
            local.open("affine", 3)
        assert local.published("affine") == {2: v2}
        assert y_of(local)[0] == "2"
    unchecked = LocalBackend(swap_repo, verify=False)  # onnxruntime's own refusal
    with unchecked, pytest.raises(ModelLoadError, match="onnxruntime cannot load"):
        unchecked.open("affine", 3)


def test_a_request_holding_the_old_session_finishes_on_it(swap_repo: ModelRepository) -> None:
    """A request resolves its session once (``load``), then runs: a publish in
    between does not move it, nor free the session under it."""
    with LocalBackend(swap_repo) as local:
        local.publish("affine", {1: local.open("affine", 1)})
        in_flight = local.load("affine")
        local.publish("affine", {2: local.open("affine", 2)})
        batch, inputs = in_flight.validator.check({"x": X})
        y = in_flight.run(inputs, None, batch)["y"]
        np.testing.assert_allclose(y, expected_y(1), rtol=1e-5, atol=1e-5)
        assert y_of(local)[0] == "2"


def test_fifty_swaps_under_eight_threads_fail_no_request(swap_repo: ModelRepository) -> None:
    with LocalBackend(swap_repo, intra_op_threads=1) as local:
        sessions = {v: local.open("affine", v) for v in (1, 2, 3)}
        local.publish("affine", {1: sessions[1]})
        stop = threading.Event()
        failures: list[BaseException] = []
        seen: set[str] = set()
        counts = [0] * 8

        def client(slot: int) -> None:
            while not stop.is_set():
                try:
                    version, y = y_of(local)
                    np.testing.assert_allclose(
                        y, expected_y(int(version)), rtol=1e-5, atol=1e-5
                    )  # outputs of the version the response names: no mix
                    seen.add(version)
                    counts[slot] += 1
                except BaseException as exc:  # every failure counts
                    failures.append(exc)

        def swapper() -> None:
            for i in range(50):
                # fresh sessions half the time: the old ones are dropped while in use
                v = 1 + i % 3
                loaded = local.open("affine", v) if i % 2 else sessions[v]
                local.publish("affine", {v: loaded})
                stop.wait(0.002)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        swaps = threading.Thread(target=swapper)
        swaps.start()
        swaps.join()
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert seen == {"1", "2", "3"} and min(counts) > 0
