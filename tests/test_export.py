"""edgecloud.export.from_torch: a torch module into the repository, checked against torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecloud import ConfigError, InferRequest, LocalBackend, ModelRepository
from edgecloud.export import from_torch

from .trees import tree_sha256

torch = pytest.importorskip("torch")
RNG = np.random.default_rng(0)


class TwoInputs(torch.nn.Module):  # type: ignore[misc]
    """(features FP32 [b, 6], tokens INT64 [b, 5]) -> (scores FP32 [b, 3], pooled FP32 [b, 4])."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.linear = torch.nn.Linear(6 + 4, 3)

    def forward(self, features: Any, tokens: Any) -> tuple[Any, Any]:
        pooled = self.embed(tokens).mean(dim=1)
        return self.linear(torch.cat([features, pooled], dim=1)), pooled


class RowCount(torch.nn.Module):  # type: ignore[misc]
    """Adds the batch size as a Python number: tracing freezes it into the graph."""

    def forward(self, x: Any) -> Any:
        return x + float(x.shape[0])


def test_a_two_input_two_output_module_is_added_with_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = TwoInputs().eval()
    features = RNG.standard_normal((4, 6)).astype(np.float32)
    tokens = RNG.integers(0, 10, (4, 5)).astype(np.int64)
    np.savez(tmp_path / "samples.npz", features=features, tokens=tokens)
    repo = ModelRepository(tmp_path / "repo")
    imported = from_torch(
        module, [features, tokens], repo, "two", input_names=["features", "tokens"],
        output_names=["scores", "pooled"], samples=tmp_path / "samples.npz", max_batch_size=16,
    )  # fmt: skip
    config = imported.version.config
    assert [(s.name, s.datatype, s.shape) for s in config.inputs] == [
        ("features", "FP32", (6,)), ("tokens", "INT64", (5,))
    ]  # fmt: skip
    assert [s.name for s in config.outputs] == ["scores", "pooled"]
    assert config.max_batch_size == 16 and imported.rows == 4
    x = RNG.standard_normal((9, 6)).astype(np.float32)
    t = RNG.integers(0, 10, (9, 5)).astype(np.int64)
    with LocalBackend(repo) as local:
        got = local.infer(InferRequest("two", {"features": x, "tokens": t})).outputs
    with torch.no_grad():
        want = module(torch.from_numpy(x), torch.from_numpy(t))
    np.testing.assert_allclose(got["scores"], want[0].numpy(), rtol=1e-5, atol=1e-5)


def test_a_module_tracing_freezes_is_refused_with_the_difference(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(ConfigError) as info:
        from_torch(RowCount(), np.zeros((4, 3), np.float32), repo, "frozen",
                   input_names=["x"], output_names=["y"])  # fmt: skip
    # right on the 4 example rows, 3 off on the 1-row batch
    assert "disagrees with torch on 1 row(s): output 'y' differs by up to 3" in info.value.message
    assert not (repo.root / "frozen").exists()


@pytest.mark.parametrize(
    ("inputs", "input_names", "output_names", "expected"),
    [
        ([np.zeros((2, 6), np.float32)], ["features", "tokens"], ["s", "p"],
         "1 example input(s) for 2 input name(s)"),
        ([np.zeros((0, 6), np.float32), np.zeros((0, 5), np.int64)], ["f", "t"], ["s", "p"],
         "example input 'f' must be a numpy array with at least one row"),
        ([np.zeros((2, 6), np.float32), np.zeros((2, 5), np.int64)], ["f", "f"], ["s", "p"],
         "input names must be given, each once"),
        ([np.zeros((2, 6), np.float32), np.zeros((2, 5), np.int64)], ["f", "t"], ["s"],
         "the module returns 2 output(s), but 1 output name(s) were given"),
    ],
)  # fmt: skip
def test_names_and_examples_that_do_not_fit_are_clear_errors(
    tmp_path: Path, inputs: list[Any], input_names: list[str], output_names: list[str],
    expected: str,
) -> None:  # fmt: skip
    repo = ModelRepository(tmp_path / "repo")
    repo.root.mkdir(parents=True)
    before = tree_sha256(repo.root)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        from_torch(TwoInputs().eval(), inputs, repo, "two", input_names=input_names,
                   output_names=output_names)  # fmt: skip
    assert tree_sha256(repo.root) == before


def test_samples_that_do_not_fit_leave_nothing(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 7), np.float32))
    module = torch.nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="bad.npz"):
        from_torch(module, np.zeros((2, 3), np.float32), repo, "lin", input_names=["x"],
                   output_names=["y"], samples=tmp_path / "bad.npz")  # fmt: skip
    assert repo.model_names() == []


class DictOut(torch.nn.Module):  # type: ignore[misc]
    def forward(self, x: Any) -> Any:
        return {"y": x * 2}


class Embed(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 3)

    def forward(self, ids: Any) -> Any:
        return self.embed(ids).sum(1)


class FixedBatch(torch.nn.Module):  # type: ignore[misc]
    """Hard-codes the examples' 4 rows: exported, onnxruntime fails on 1 row."""

    def forward(self, x: Any) -> Any:
        return x.reshape(4, -1) * 2


class Nan(torch.nn.Module):  # type: ignore[misc]
    def forward(self, x: Any) -> Any:
        return x * float("nan")


X4 = np.ones((4, 3), np.float32)
IDS = np.array([[1, 2], [3, 4]], np.int64)


@pytest.mark.parametrize(
    ("module", "example", "names", "kwargs", "expected"),
    [
        (lambda x: x, X4, ("x", "y"), {}, "exports a torch.nn.Module, got function"),
        (DictOut(), X4, ("x", "y"), {}, "returns dict"),
        (Embed(), IDS + 10, ("ids", "y"), {}, "fails on the example inputs: IndexError"),
        (torch.nn.Linear(3, 2), X4.astype(np.float64), ("x", "y"), {},
         "are float64, the module's weights most likely float32"),
        (torch.nn.Linear(3, 2), X4, ("x", "x"), {}, "named both an input and an output"),
        (FixedBatch(), X4, ("x", "y"), {}, "the ONNX model fails on them"),
        (Nan(), X4, ("x", "y"), {}, "holds NaN or Inf on the example inputs"),
        (torch.nn.Linear(3, 2), X4, ("x", "y"), {"max_batch_size": -1},
         "max_batch_size must be a whole number >= 0"),
    ],
)  # fmt: skip
def test_every_failure_is_a_config_error_with_nothing_on_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], module: Any, example: Any,
    names: tuple[str, str], kwargs: dict[str, Any], expected: str,
) -> None:  # fmt: skip
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(ConfigError) as info:
        from_torch(module, example, repo, "m", input_names=[names[0]],
                   output_names=[names[1]], **kwargs)  # fmt: skip
    assert expected in info.value.message
    assert "\n" not in info.value.message
    assert capfd.readouterr().err == ""  # onnxruntime's own log lines stay quiet
    assert repo.model_names() == []
