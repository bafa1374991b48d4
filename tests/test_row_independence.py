"""A published batched model answers each row as if it were alone (edgecloud.rows).

Dynamic batching stacks different clients' rows into one call: a model whose
rows interact would make one client's answer depend on (and leak) another's.
Every member of the kind is refused at import, from_torch and distill; the same
module is accepted unbatched, and row-wise ones pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgecloud import ConfigError, ModelRepository
from edgecloud.export import from_torch
from edgecloud.importing import import_onnx
from edgecloud.rows import check_row_independence, row_difference

torch = pytest.importorskip("torch")
F = torch.nn.functional
X = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)


class Lambda(torch.nn.Module):  # type: ignore[misc]
    def __init__(self, f: Callable[[Any], Any]) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: Any) -> Any:
        return self.f(x)


MIXING = {
    "mean over the batch": lambda x: x - x.mean(0, keepdim=True),
    "sort over the batch": lambda x: torch.sort(x, 0).values,
    "cumulative sum over the batch": lambda x: x.cumsum(0),
    "softmax over the batch": lambda x: torch.softmax(x, 0),
    "max over the batch": lambda x: x * x.amax(0, keepdim=True),
}


@pytest.mark.parametrize("kind", sorted(MIXING))
def test_from_torch_refuses_a_module_whose_rows_interact(tmp_path: Path, kind: str) -> None:
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(ConfigError) as info:
        from_torch(Lambda(MIXING[kind]), X, repo, "m", input_names=["x"], output_names=["y"])
    message = info.value.message
    assert "is not row-independent" in message and "--max-batch-size 0" in message
    assert "\n" not in message
    assert not (tmp_path / "repo" / "m").exists()
    # the fix the message names: published unbatched, the same module is accepted
    from_torch(Lambda(MIXING[kind]), X, repo, "m", input_names=["x"], output_names=["y"],
               max_batch_size=0)  # fmt: skip


def test_a_batchnorm_module_left_in_training_mode_is_published_in_eval_mode(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    repo = ModelRepository(tmp_path / "repo")
    from_torch(module, X, repo, "bn", input_names=["x"], output_names=["y"])  # checked rows
    assert not module.training


def test_dropout_forced_on_is_refused(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(ConfigError, match="dropout in training mode"):
        from_torch(Lambda(lambda x: F.dropout(x, 0.5, training=True)), X, repo, "d",
                   input_names=["x"], output_names=["y"])  # fmt: skip


def _graph(path: Path, nodes: list[Any], *, out_shape: list[Any] | None = None) -> Path:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape or ["batch", 3])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_import_refuses_an_onnx_graph_that_averages_over_the_batch(tmp_path: Path) -> None:
    path = _graph(tmp_path / "m.onnx", [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
        helper.make_node("Sub", ["x", "m"], ["y"]),
    ])  # fmt: skip
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(ConfigError, match="is not row-independent"):
        import_onnx(repo, path, "m", max_batch_size=8)
    assert not (repo.root / "m").exists()
    import_onnx(repo, path, "m", max_batch_size=0)  # unbatched: one request is one client


def test_import_refuses_a_random_graph_as_not_deterministic(tmp_path: Path) -> None:
    path = _graph(tmp_path / "r.onnx", [
        helper.make_node("RandomUniformLike", ["x"], ["n"]),
        helper.make_node("Add", ["x", "n"], ["y"]),
    ])  # fmt: skip
    with pytest.raises(ConfigError, match="not deterministic"):
        import_onnx(ModelRepository(tmp_path / "repo"), path, "r", max_batch_size=4)


def test_import_refuses_a_graph_that_fixes_its_batch_size(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [4, -1])
    path = _graph(tmp_path / "f.onnx", [
        helper.make_node("Constant", [], ["s"], value=shape),
        helper.make_node("Reshape", ["x", "s"], ["y"]),
    ], out_shape=[4, 3])  # fmt: skip
    with pytest.raises(ConfigError, match="fails on a batch of .* --max-batch-size 0"):
        import_onnx(ModelRepository(tmp_path / "repo"), path, "f", max_batch_size=8)
    assert capfd.readouterr().err == ""  # onnxruntime's own log stays off stderr


def test_a_row_wise_model_passes_and_nan_or_inf_rows_compare_equal() -> None:
    def row_wise(feed: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        x = feed["x"]
        return {"y": x - x.mean(1, keepdims=True), "whole": np.array([1.0, 2.0])}

    x = np.array([[np.nan, 1, 2], [np.inf, 0, 0], [1, 2, 3]], np.float32)
    with np.errstate(invalid="ignore"):
        assert row_difference(row_wise, {"x": x}) is None
    assert row_difference(row_wise, {"x": x[:1]}) is None  # one row: nothing to mix
    check_row_independence(row_wise, {"x": X}, "row-wise")


def test_a_mixing_model_is_named_with_its_largest_difference() -> None:
    def mixing(feed: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        return {"y": feed["x"] - feed["x"].mean(0, keepdims=True)}

    found = row_difference(mixing, {"x": X})
    assert found is not None and found[0] > 0.1 and "alone" in found[1]


def test_identical_sample_rows_do_not_hide_a_batch_mean(tmp_path: Path) -> None:
    np.savez(tmp_path / "same.npz", x=np.ones((8, 3), np.float32))
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(ConfigError, match="is not row-independent"):
        from_torch(Lambda(MIXING["mean over the batch"]), X, repo, "m", input_names=["x"],
                   output_names=["y"], samples=tmp_path / "same.npz")  # fmt: skip


class MixAbove(torch.nn.Module):  # type: ignore[misc]
    """Row-wise on batches of up to ``size`` rows; above, rows mix (a branch on the batch)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 3)
        self.size = size

    def forward(self, x: Any) -> Any:
        z = self.linear(x)
        big = (torch.ones_like(x[:, :1]).sum() > self.size).float()  # traced: stays dynamic
        return torch.softmax(z - big * 5 * z.mean(0, keepdim=True), -1)


@pytest.mark.parametrize("mixes_above", [2, 8, 12])
def test_a_model_that_mixes_rows_only_in_large_batches_is_refused(
    tmp_path: Path, mixes_above: int
) -> None:
    # the batch sizes the server may form are checked, not only 8 rows
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(ConfigError, match=r"not row-independent: .* in a batch of (\d+)") as info:
        from_torch(MixAbove(mixes_above), X, repo, "m", input_names=["x"], output_names=["y"],
                   max_batch_size=16)  # fmt: skip
    assert int(info.value.message.split("in a batch of ")[1].split(";")[0]) > mixes_above
    assert not (repo.root / "m").exists()
    # a server that never forms a batch above that size cannot mix its clients' rows
    if mixes_above >= 2:
        from_torch(MixAbove(mixes_above), X, repo, "ok", input_names=["x"], output_names=["y"],
                   max_batch_size=mixes_above)  # fmt: skip


def test_the_check_runs_distinct_rows_up_to_its_bound() -> None:
    from edgecloud.repository import ModelConfig
    from edgecloud.rows import ROWS, batch_sizes, check_rows
    from edgecloud.tensors import TensorSpec

    assert batch_sizes(64) == [2, 8, 64] and batch_sizes(5) == [2, 5] and batch_sizes(1) == []
    config = ModelConfig(
        name="m", max_batch_size=1000,
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[3])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[3])],
    )  # fmt: skip
    same = {"x": np.ones((100, 3), np.float32)}
    few = {"x": np.concatenate([X, X])}  # 4 distinct rows, then repeated
    for inputs in (None, same, few, {"x": X[:1]}):
        rows = check_rows(config, inputs, ROWS)["x"]
        assert rows.shape == (ROWS, 3) and rows.dtype == np.float32
        assert len(np.unique(rows, axis=0)) == ROWS  # distinct: a mean cannot hide
    np.testing.assert_array_equal(check_rows(config, few, ROWS)["x"][:4], X)  # samples first
    many = {"x": np.random.default_rng(1).standard_normal((100, 3)).astype(np.float32)}
    np.testing.assert_array_equal(check_rows(config, many, ROWS)["x"], many["x"][:ROWS])
