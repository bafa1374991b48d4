"""A cascade whose small model takes fewer features, a smaller image, a shorter token window.

Models are built in the test with onnx.helper and run by onnxruntime; the
deployment file declares each small model's inputs (``models:``), and the
answers must equal running the small model by hand on the sliced inputs and
the large one on the original rows it escalated.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import edgecloud
from edgecloud import ConfigError, InferRequest, ModelConfig, ModelRepository, TensorSpec
from edgecloud.errors import MissingInputError
from edgecloud.server.launch import serve_process

from .server.conftest import free_port, start_server

CLASSES = 3
Arrays = dict[str, np.ndarray]


def save(path: Path, nodes: list[Any], inputs: list[Any], initializers: dict[str, Any]) -> Path:
    probabilities = helper.make_tensor_value_info(
        "probabilities", TensorProto.FLOAT, ["batch", CLASSES]
    )
    graph = helper.make_graph(
        nodes,
        path.stem,
        inputs,
        [probabilities],
        initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def linear(path: Path, name: str, width: int, seed: int) -> Path:
    """probabilities = softmax(x @ W + b); x: FP32 [batch, width]."""
    rng = np.random.default_rng(seed)
    return save(
        path,
        [
            helper.make_node("MatMul", [name, "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])],
        {
            "W": rng.normal(size=(width, CLASSES)).astype(np.float32),
            "b": rng.normal(size=CLASSES).astype(np.float32),
        },
    )


def cnn(path: Path, side: int, conv: bool, seed: int) -> Path:
    """image FP32 [batch, 3, side, side] -> (Conv 3->4 + Relu) -> GlobalAveragePool -> softmax."""
    rng = np.random.default_rng(seed)
    channels = 4 if conv else 3
    nodes = [
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    weights = {"W": rng.normal(size=(channels, CLASSES)).astype(np.float32) * 4}
    if conv:
        nodes[:0] = [
            helper.make_node("Conv", ["image", "K"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["features"]),
        ]
        weights["K"] = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    else:
        nodes[:0] = [helper.make_node("Identity", ["image"], ["features"])]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, side, side])
    return save(path, nodes, [image], weights)


def tokens(path: Path, vocab: int, seed: int) -> Path:
    """softmax(sum over positions of mask * E[ids]); input_ids, attention_mask INT64 [batch, T]."""
    rng = np.random.default_rng(seed)
    return save(
        path,
        [
            helper.make_node("Gather", ["E", "input_ids"], ["embedded"]),
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
            helper.make_node("Mul", ["embedded", "mask3"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axis1"], ["logits"], keepdims=0),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "T"])
            for n in ("input_ids", "attention_mask")
        ],
        {
            "E": rng.normal(size=(vocab, CLASSES)).astype(np.float32) * 0.3,
            "axis1": np.array([1], np.int64),
            "axis2": np.array([2], np.int64),
        },
    )


def add(repo: ModelRepository, path: Path, inputs: list[TensorSpec]) -> None:
    config = ModelConfig(
        name=path.stem, max_batch_size=64, inputs=inputs,
        outputs=[TensorSpec(name="probabilities", datatype="FP32", shape=(CLASSES,))],
    )  # fmt: skip
    repo.add_version(path.stem, path, config=config)


def fp32(name: str, *shape: int) -> TensorSpec:
    return TensorSpec(name=name, datatype="FP32", shape=shape)


def int64(name: str, *shape: int) -> TensorSpec:
    return TensorSpec(name=name, datatype="INT64", shape=shape, min_value=0, max_value=99)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    """tab-large (20 features) / tab-small (4); cnn-large (64x64) / cnn-small (32x32);
    tok-large (128 tokens) / tok-small (64)."""
    tmp = tmp_path_factory.mktemp("transforms")
    repo = ModelRepository(tmp / "repo")
    add(repo, linear(tmp / "tab-large.onnx", "features", 20, 1), [fp32("features", 20)])
    add(repo, linear(tmp / "tab-small.onnx", "x", 4, 2), [fp32("x", 4)])
    add(repo, cnn(tmp / "cnn-large.onnx", 64, False, 3), [fp32("image", 3, 64, 64)])
    add(repo, cnn(tmp / "cnn-small.onnx", 32, True, 4), [fp32("image", 3, 32, 32)])
    add(repo, tokens(tmp / "tok-large.onnx", 100, 5), [int64(n, 128) for n in TOKEN_INPUTS])
    add(repo, tokens(tmp / "tok-small.onnx", 100, 6), [int64(n, 64) for n in TOKEN_INPUTS])
    return repo


TOKEN_INPUTS = ("input_ids", "attention_mask")


def tabular_request(rows: int) -> Arrays:
    return {"features": np.random.default_rng(7).normal(size=(rows, 20)).astype(np.float32)}


def image_request(rows: int) -> Arrays:
    return {"image": np.random.default_rng(8).normal(size=(rows, 3, 64, 64)).astype(np.float32)}


def token_request(rows: int) -> Arrays:
    rng = np.random.default_rng(9)
    mask = (np.arange(128)[None, :] < rng.integers(20, 128, size=(rows, 1))).astype(np.int64)
    return {"input_ids": rng.integers(0, 100, size=(rows, 128)), "attention_mask": mask}


CASES: dict[str, tuple[dict[str, Any], Callable[[int], Arrays], Callable[[Arrays], Arrays]]] = {
    # pair: (the small model's declaration, a request, the small model's inputs by hand)
    "tab": (
        {"x": {"from": "features", "columns": [0, 3, 5, 7]}},
        tabular_request,
        lambda r: {"x": r["features"][:, [0, 3, 5, 7]]},
    ),
    "cnn": (
        {"image": {"resize": [32, 32], "mode": "area"}},
        image_request,
        lambda r: {"image": r["image"].reshape(-1, 3, 32, 2, 32, 2).mean(axis=(3, 5))},
    ),
    "tok": (
        {n: {"window": 64} for n in TOKEN_INPUTS},
        token_request,
        lambda r: {n: r[n][:, :64] for n in TOKEN_INPUTS},
    ),
}


def by_hand(repo: ModelRepository, model: str, inputs: Arrays) -> np.ndarray:
    """The model's probabilities from onnxruntime directly, no edgecloud in between."""
    session = ort.InferenceSession(
        str(repo.get(model).model_path), providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run(["probabilities"], inputs)[0])


def write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cascade_file(
    tmp_path: Path, repo: ModelRepository, pair: str, threshold: float, **extra: Any
) -> Path:
    declaration = extra.pop("declaration", CASES[pair][0])
    return write(tmp_path, {
        "repository": str(repo.root),
        **extra.pop("top", {}),
        "models": {f"{pair}-small": {"inputs": declaration}},
        "root": {"cascade": {
            "small": "local", "large": extra.pop("large", "local"),
            "small_model": f"{pair}-small", "large_model": f"{pair}-large",
            "threshold": threshold,
        }},
    })  # fmt: skip


@pytest.mark.parametrize("pair", list(CASES))
def test_a_cascade_answers_through_the_small_models_derived_inputs(
    repo: ModelRepository, tmp_path: Path, pair: str
) -> None:
    _, request_for, sliced = CASES[pair]
    request = request_for(24)
    small = by_hand(repo, f"{pair}-small", sliced(request))
    large = by_hand(repo, f"{pair}-large", request)
    threshold = float(np.median(small.max(axis=1)))  # about half the rows escalate
    unsure = small.max(axis=1) < threshold
    assert 0 < unsure.sum() < len(unsure)

    with edgecloud.load(cascade_file(tmp_path, repo, pair, threshold), ready=True) as tree:
        response = tree.infer(InferRequest(pair, request))
    expected = np.where(unsure[:, None], large, small)
    np.testing.assert_allclose(response.outputs["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert response.parameters["escalated_rows"] == int(unsure.sum())
    assert f"local:{pair}-small/1 + local:{pair}-large/1" == response.trace.served_by


def test_the_large_model_on_a_server_gets_the_original_rows(
    repo: ModelRepository, tmp_path: Path
) -> None:
    request = tabular_request(16)
    small = by_hand(repo, "tab-small", {"x": request["features"][:, [0, 3, 5, 7]]})
    large = by_hand(repo, "tab-large", request)
    threshold = float(np.median(small.max(axis=1)))
    unsure = small.max(axis=1) < threshold
    server = start_server(repo, tmp_path)
    try:
        path = cascade_file(
            tmp_path, repo, "tab", threshold, large="cloud",
            top={"remotes": {"cloud": {"url": server.url, "timeout_s": 10}}},
        )  # fmt: skip
        with edgecloud.load(path, ready=True) as tree:
            response = tree.infer(InferRequest("tab", request))
    finally:
        server.stop()
    expected = np.where(unsure[:, None], large, small)
    np.testing.assert_allclose(response.outputs["probabilities"], expected, rtol=1e-5, atol=1e-6)
    network = [s for s in response.trace.spans if s.kind == "network"]
    # The escalation carried the unsure rows of all 20 features (FP32), not the 4 columns.
    assert network and network[0].bytes_up >= int(unsure.sum()) * 20 * 4


def test_zero_rows_and_a_missing_source_through_the_cascade(
    repo: ModelRepository, tmp_path: Path
) -> None:
    with edgecloud.load(cascade_file(tmp_path, repo, "tab", 0.5), ready=True) as tree:
        empty = tree.infer(InferRequest("tab", tabular_request(0)))
        assert empty.outputs["probabilities"].shape == (0, CLASSES)
        with pytest.raises(MissingInputError, match="'tab-small': input 'x' \\(from 'features'\\)"):
            tree.infer(InferRequest("tab", {"pixels": np.zeros((1, 20), np.float32)}))


@pytest.mark.parametrize(
    ("pair", "declaration", "match"),
    [
        ("tab", {"x": {"from": "features", "columns": [0, 3, 5]}}, "derives shape \\[\\?, 3\\]"),
        ("tab", {"x": {"from": "features", "columns": "16:24"}}, "beyond the request's 20"),
        ("tab", {"x": {"columns": [0, 1, 2, 3]}}, "the request has no tensor 'x'"),
        ("tab", {"y": {"from": "features"}}, "takes inputs \\['x'\\]"),
        ("cnn", {"image": {"resize": [24, 24]}}, "not by an integer factor"),
        ("cnn", {"image": {"resize": [32, 32], "cast": "FP16"}}, "derives datatype FP16"),
        ("tok", {n: {"window": 32} for n in TOKEN_INPUTS}, "derives shape \\[\\?, 32\\]"),
    ],
)
def test_a_declaration_that_does_not_fit_the_model_fails_at_check_ready(
    repo: ModelRepository, tmp_path: Path, pair: str, declaration: dict[str, Any], match: str
) -> None:
    path = cascade_file(tmp_path, repo, pair, 0.5, declaration=declaration)
    edgecloud.load(path).close()  # building is lazy: only check_ready reads the configs
    with pytest.raises(ConfigError, match=f"deployment.yaml: models.{pair}-small.inputs.*{match}"):
        edgecloud.load(path, ready=True)


def test_a_deferred_escalation_is_derived_when_the_outbox_drains(
    repo: ModelRepository, tmp_path: Path
) -> None:
    """The large model is declared too (FP64 request -> FP32): what the outbox stored is
    the original escalation, and the drain derives it like the live path would have."""
    features = tabular_request(6)["features"].astype(np.float64)
    port = free_port()
    path = write(tmp_path, {
        "repository": str(repo.root),
        "remotes": {"cloud": {"url": f"http://127.0.0.1:{port}", "timeout_s": 10}},
        "outbox": {"path": "outbox.db"},
        "models": {
            "tab-small": {"inputs": {"x": {"from": "features", "columns": "0:4", "cast": "FP32"}}},
            "tab-large": {"inputs": {"features": {"cast": "FP32"}}},
        },
        "root": {"cascade": {
            "small": "local", "large": "cloud", "small_model": "tab-small",
            "large_model": "tab-large", "threshold": 1.0, "defer_failed_escalations": True,
        }},
    })  # fmt: skip
    with edgecloud.load(path, ready=True) as tree:
        answer = tree.infer(InferRequest("tab", {"features": features}))  # the cloud is down
        assert tree.outbox is not None
        (item,) = tree.outbox.items()
        server = serve_process(repo.root, http_port=port, log=tmp_path / "server.log")
        try:
            result = tree.drain_outbox()
        finally:
            server.stop()
    small = by_hand(repo, "tab-small", {"x": features[:, :4].astype(np.float32)})
    np.testing.assert_allclose(answer.outputs["probabilities"], small, rtol=1e-5, atol=1e-6)
    assert item.model == "tab-large"
    assert result is not None and (result.delivered, result.dead_lettered) == (1, 0)
