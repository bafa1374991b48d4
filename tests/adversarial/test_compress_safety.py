"""Compression accepts no broken model and cannot hang (issue 14, kind 6).

Members of the kind: NaN/Inf outputs or a non-finite fidelity figure passing
``--tolerance`` (every method that can produce them, and every figure);
a parent whose own outputs are not finite; graphs with control flow (refused
up front, or converted and checked on both branches); a step that never ends
(time limit); a refusal whose reason is empty. After every refusal the
repository is byte-identical (sha256 of the tree).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edgecloud import (
    CompressionError,
    ConfigError,
    DeadlineExceededError,
    EdgecloudError,
    ModelRepository,
)
from edgecloud.compress import RANDOM, Evaluation, compress
from edgecloud.compress.evaluate import check_fidelity
from edgecloud.compress.methods import METHODS, Fp16Options, Method
from edgecloud.errors import describe as reason

from ..trees import tree_sha256
from ._compress_helpers import (
    add_model,
    branch_onnx,
    cancelling_onnx,
    cli_env,
    log_onnx,
    loop_onnx,
    overflow_onnx,
    rounding_onnx,
)

ONNX_METHODS = ["int8-dynamic", "int8-static", "fp16", "int4-weight"]


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    repository = ModelRepository(tmp_path / "repo")
    add_model(repository, "cancelling", cancelling_onnx(tmp_path / "cancelling.onnx"))
    add_model(repository, "overflow", overflow_onnx(tmp_path / "overflow.onnx"))
    add_model(repository, "log", log_onnx(tmp_path / "log.onnx"))
    add_model(repository, "rounding", rounding_onnx(tmp_path / "rounding.onnx"))
    add_model(repository, "branch", branch_onnx(tmp_path / "branch.onnx"))
    add_model(repository, "loop", loop_onnx(tmp_path / "loop.onnx"))
    return repository


def _calibration(tmp_path: Path, width: int) -> Path:
    path = tmp_path / f"calib{width}.npz"
    np.savez(path, x=np.random.default_rng(1).standard_normal((64, width)).astype(np.float32))
    return path


def _refused(repo: ModelRepository, model: str, method: str, **kwargs: Any) -> EdgecloudError:
    """Compress, expecting a refusal that names a reason and leaves the repository as it was."""
    before = tree_sha256(repo.root)
    with pytest.raises(EdgecloudError) as info:
        compress(repo, model, method, data=RANDOM, **kwargs)
    assert tree_sha256(repo.root) == before
    message = info.value.message
    assert message.strip() and not message.rstrip().endswith(":"), message
    return info.value


@pytest.mark.parametrize(
    ("method", "model"),
    [("int8-dynamic", "cancelling"), ("int8-static", "cancelling"),
     ("int4-weight", "cancelling"), ("fp16", "rounding")],
)  # fmt: skip
def test_nan_outputs_fail_whatever_the_tolerance(
    repo: ModelRepository, tmp_path: Path, method: str, model: str
) -> None:
    options = {"calibration": _calibration(tmp_path, 32)} if method == "int8-static" else {}
    for tolerance in (None, 1.0, 1e9):  # 1e9: before, nan > tolerance was False and passed
        error = _refused(repo, model, method, options=options, tolerance=tolerance)
        assert isinstance(error, CompressionError)
        assert "NaN/Inf output values" in error.message


def test_fp16_out_of_range_weights_are_refused(repo: ModelRepository) -> None:
    # the converter clips 1e5 to 1e4: outputs 100x smaller, cosine still 1.0
    error = _refused(repo, "overflow", "fp16", tolerance=0.05)
    assert "output magnitudes change by up to 99" in error.message


@pytest.mark.parametrize("method", ["prune", "distill"])
def test_torch_methods_refuse_a_module_that_does_not_fit_the_graph(
    repo: ModelRepository, method: str, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    data = _calibration(tmp_path, 32)  # the 'cancelling' model's inputs
    options = {"module": "tests.compress.factories:mlp", "data": data, "epochs": 1}
    error = _refused(repo, "cancelling", method, options=options, tolerance=1.0)
    assert "does not run on the model's inputs" in error.message


def test_a_parent_with_nan_outputs_is_no_reference(repo: ModelRepository) -> None:
    error = _refused(repo, "log", "int8-dynamic")
    assert "itself gives NaN/Inf outputs" in error.message and "'y'" in error.message


def _evaluation(**figures: Any) -> Evaluation:
    base = Evaluation(
        size_bytes=10, parent_size_bytes=40, size_ratio=0.25,
        latency_ms={"1": 1.0, "32": 2.0}, parent_latency_ms={"1": 1.0, "32": 2.0},
        latency_ratio={"1": 1.0, "32": 1.0}, accuracy=0.9, parent_accuracy=0.9,
        accuracy_drop_points=0.0, cosine_min=1.0, top1_agreement=1.0, data="test",
    )  # fmt: skip
    return replace(base, **figures)


FIGURES = ["size_ratio", "accuracy", "parent_accuracy", "accuracy_drop_points", "cosine_min",
           "top1_agreement", "max_abs_error", "scale_error"]  # fmt: skip


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("figure", [*FIGURES, "latency_ratio"])
def test_every_non_finite_figure_fails(figure: str, value: float) -> None:
    bad = {"1": value, "32": 1.0} if figure == "latency_ratio" else value
    evaluation = _evaluation(**{figure: bad})
    for tolerance in (None, 0.0, 100.0):
        with pytest.raises(CompressionError, match="not finite"):
            check_fidelity(evaluation, tolerance, "m", "fp16")
    check_fidelity(_evaluation(), 0.0, "m", "fp16")  # the same, finite, passes


@pytest.mark.parametrize("tolerance", [math.nan, -0.1])
def test_a_nan_or_negative_tolerance_is_refused_before_any_work(
    repo: ModelRepository, tolerance: float
) -> None:
    error = _refused(repo, "cancelling", "int8-dynamic", tolerance=tolerance)
    assert isinstance(error, ConfigError) and "tolerance must be a number >= 0" in error.message
    with pytest.raises(ConfigError, match="tolerance must be a number >= 0"):
        check_fidelity(_evaluation(), tolerance, "m", "fp16")


def test_cosine_tolerance_without_labels_is_nan_safe() -> None:
    evaluation = _evaluation(accuracy=None, parent_accuracy=None, accuracy_drop_points=None)
    check_fidelity(replace(evaluation, cosine_min=0.999), 0.01, "m", "fp16")
    with pytest.raises(CompressionError, match="not finite"):
        check_fidelity(replace(evaluation, cosine_min=math.nan), 0.01, "m", "fp16")
    with pytest.raises(CompressionError, match="NaN/Inf output values"):
        check_fidelity(replace(evaluation, nonfinite_outputs=3), None, "m", "fp16")


CONTROL_FLOW = {"branch": ("If 'branch'", 32), "loop": ("Loop 'loop'", 8)}


@pytest.mark.parametrize("model", sorted(CONTROL_FLOW))
@pytest.mark.parametrize("method", ONNX_METHODS)  # prune/distill: the module is checked
def test_control_flow_is_refused_up_front_or_converted_on_both_branches(
    repo: ModelRepository, tmp_path: Path, method: str, model: str
) -> None:
    node, width = CONTROL_FLOW[model]
    options = {"calibration": _calibration(tmp_path, width)} if method == "int8-static" else {}
    before = tree_sha256(repo.root)
    started = time.monotonic()
    try:
        result = compress(repo, model, method, options=options, data=RANDOM, tolerance=0.05)
    except EdgecloudError as exc:
        assert tree_sha256(repo.root) == before
        if method == "fp16":
            assert f"control flow ({node})" in exc.message and "try int8-dynamic" in exc.message
            assert time.monotonic() - started < 5  # refused before any work
        assert exc.message.strip(), method
        return
    assert method != "fp16"
    # the evaluation saw one branch (sum over the batch); check both here
    parent = repo.get(model, 1, served_only=False).model_path
    x = np.random.default_rng(3).standard_normal((16, width)).astype(np.float32)
    for sign in (1.0, -1.0):
        feed = {"x": sign * np.abs(x)}
        (want,) = ort.InferenceSession(parent).run(None, feed)
        (have,) = ort.InferenceSession(result.version.model_path).run(None, feed)
        cosine = np.sum(want * have) / (np.linalg.norm(want) * np.linalg.norm(have))
        assert np.all(np.isfinite(have)) and cosine > 1 - 0.05, (method, sign, cosine)


def _slow(parent: Any, target: Path, options: Any, progress: Any) -> dict[str, Any]:
    """A method stuck in a loop (module level: the spawn worker imports it by name)."""
    time.sleep(120)
    return {}


def _mute(parent: Any, target: Path, options: Any, progress: Any) -> dict[str, Any]:
    """A method failing as onnxruntime's shape inference does on Silero VAD."""
    raise AssertionError()


@pytest.fixture
def test_methods() -> Iterator[None]:
    for name, fn in (("test-slow", _slow), ("test-mute", _mute)):
        METHODS[name] = Method(name, fn, Fp16Options, needs=())
    yield
    del METHODS["test-slow"], METHODS["test-mute"]


@pytest.mark.usefixtures("test_methods")
def test_time_limit_stops_a_stuck_step_and_shows_progress(repo: ModelRepository) -> None:
    seen: list[str] = []
    started = time.monotonic()
    before = tree_sha256(repo.root)
    with pytest.raises(DeadlineExceededError, match="time limit of 4 s") as info:
        compress(repo, "cancelling", "test-slow", time_limit_s=4, data=RANDOM,
                 progress=lambda fraction, text: seen.append(text))  # fmt: skip
    assert time.monotonic() - started < 15
    assert "repository is unchanged" in info.value.message
    assert tree_sha256(repo.root) == before
    assert any(text.startswith("compressing (") for text in seen), seen  # elapsed ticks


@pytest.mark.usefixtures("test_methods")
def test_an_exception_without_text_still_gives_a_reason(repo: ModelRepository) -> None:
    error = _refused(repo, "cancelling", "test-mute")
    assert error.message.endswith("AssertionError (no message)"), error.message
    assert reason(ValueError()) == "ValueError (no message)"
    assert reason(CompressionError("")) == "CompressionError (no message)"
    assert reason(KeyError("w")) == "KeyError: 'w'"


def test_cli_refuses_nan_and_control_flow_with_one_line(repo: ModelRepository) -> None:
    before = tree_sha256(repo.root)
    for model, method, expected in [
        ("cancelling", "int8-dynamic", "NaN/Inf output values"),
        ("branch", "fp16", "control flow"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "edgecloud.cli", "compress", model, "-m", method,
             "--repo", str(repo.root), "--tolerance", "1", "--time-limit", "120",
             "--data", "random"],
            capture_output=True, text=True, timeout=180, env=cli_env(),
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert expected in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
        assert tree_sha256(repo.root) == before


def test_zoo_vad_fp16_is_refused_at_once(zoo_repo: ModelRepository, tmp_path: Path) -> None:
    """The reported hang: fp16 on Silero VAD ran for over ten minutes."""
    repo = ModelRepository(tmp_path / "zoo")
    shutil.copytree(zoo_repo.root / "vad", repo.root / "vad")
    started = time.monotonic()
    error = _refused(repo, "vad", "fp16", tolerance=0.05)
    assert "control flow (If 'If_0')" in error.message
    assert time.monotonic() - started < 5
