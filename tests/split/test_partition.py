"""Partitioning: every cut of a branched model and of resnet18-like reproduces the full model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecloud import ConfigError, ModelRepository
from edgecloud.split import cut_points, extract, find_cut, verify_split

RNG = np.random.default_rng(0)


def branched_onnx(path: Path) -> Path:
    """a = relu(x W1); b = x W2; y = (a + b) W3 — a residual-style branch."""
    w1, w2, w3 = (RNG.standard_normal(s).astype(np.float32) for s in ((8, 8), (8, 8), (8, 4)))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
            helper.make_node("Relu", ["h1"], ["a"], name="relu"),
            helper.make_node("MatMul", ["x", "w2"], ["b"], name="mm2"),
            helper.make_node("Add", ["a", "b"], ["s"], name="add"),
            helper.make_node("MatMul", ["s", "w3"], ["y"], name="mm3"),
        ],
        "branched",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_branch_cuts_carry_every_live_tensor(tmp_path: Path) -> None:
    path = branched_onnx(tmp_path / "m.onnx")
    cuts = {c.index: c for c in cut_points(path)}
    assert set(cuts[0].tensors) == {"x", "h1"}  # after mm1: x is still needed by mm2
    assert set(cuts[1].tensors) == {"x", "a"}
    assert set(cuts[2].tensors) == {"a", "b"}
    assert cuts[3].tensors == ("s",) and cuts[3].nbytes == 8 * 4
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    for cut in cuts.values():
        head, tail = extract(path, cut, tmp_path / cut.name)
        assert verify_split(path, head, tail, {"x": x}) < 1e-4


def test_resnet18_like_splits_exactly(zoo_repo: ModelRepository, tmp_path: Path) -> None:
    path = zoo_repo.get("resnet18-like").model_path
    cuts = cut_points(path)
    singles = [c for c in cuts if len(c.tensors) == 1]
    assert len(singles) >= 8  # after every residual block, one activation crosses
    image = RNG.standard_normal((1, 3, 224, 224)).astype(np.float32)
    for cut in (singles[0], singles[len(singles) // 2], singles[-1]):
        head, tail = extract(path, cut, tmp_path / cut.name)
        assert verify_split(path, head, tail, {"image": image}, rtol=1e-3, atol=1e-3) < 1e-2
    assert singles[0].nbytes is not None and singles[0].nbytes > singles[-1].nbytes


def test_bad_cut_names_list_the_valid_ones(tmp_path: Path) -> None:
    path = branched_onnx(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match=r"no cut point 'cut99'.*valid cuts: cut0, cut1"):
        find_cut(path, "cut99")
    assert find_cut(path, "cut3").tensors == ("s",)


def test_uses_include_what_nested_subgraphs_capture() -> None:
    """A Loop body holding an If that reads the top-level ``t``: the Loop node uses ``t``."""
    from edgecloud.split.partition import uses

    value = helper.make_tensor_value_info
    branch = helper.make_graph(
        [helper.make_node("Add", ["v_in", "t"], ["out"])], "then", [],
        [value("out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Identity", ["v_in"], ["same"])], "else", [],
        [value("same", TensorProto.FLOAT, None)],
    )  # fmt: skip
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("If", ["cond_in"], ["v_out"], then_branch=branch, else_branch=other),
        ],
        "body",
        [value("i", TensorProto.INT64, []), value("cond_in", TensorProto.BOOL, []),
         value("v_in", TensorProto.FLOAT, None)],
        [value("cond_out", TensorProto.BOOL, []), value("v_out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    loop = helper.make_node("Loop", ["trips", "go", "x"], ["v"], body=body)
    assert uses(loop) == ["trips", "go", "x", "t"]  # v_in, cond_in, i: the body's own
