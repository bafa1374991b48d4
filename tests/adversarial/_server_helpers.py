"""Tiny models and a real server for the server-side failure kinds (issue 13).

Models (all built in code, onnxruntime only):

- ``affine`` / ``two-input`` from tests/models.py (batched, max_batch_size 8 / 4),
  ``affine`` with a 20 ms queue delay so concurrent requests really merge;
- ``pooled``: ``x`` FP32 [batch, 4] → ``y = 2x`` [batch, 4] and ``total = sum(x,
  axis 0)`` FP32 [4] — an output with no batch dimension on a batched model;
- ``lookup``: ``ids`` INT64 [batch, 3] → ``Gather(table[10, 2], ids)``: an id
  outside 0..9 is the caller's mistake that only onnxruntime can see;
- ``reshape``: ``x`` FP32 [batch, -1] → ``Reshape(x, [-1, 3])``: a row length
  that is not a multiple of 3 does not fit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgecloud import ModelConfig, ModelRepository, TensorSpec
from edgecloud.server.launch import ServerProcess, free_port, launch

from ..models import make_repo
from ..server.conftest import Server, add_batching, start_server

TABLE = np.arange(20, dtype=np.float32).reshape(10, 2)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def pooled_onnx(path: Path) -> Path:
    """y = 2x [batch, 4]; total = sum over the batch [4] (no batch dimension)."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["y"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0),
        ],
        "pooled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, [4]),
        ],
        initializer=[two, axes],
    )
    return _save(graph, path)


def lookup_onnx(path: Path) -> Path:
    """out = table[ids]; ids INT64 [batch, 3] → FP32 [batch, 3, 2]; table is 10 × 2."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["out"])],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 2])],
        initializer=[numpy_helper.from_array(TABLE, "table")],
    )
    return _save(graph, path)


def reshape_onnx(path: Path) -> Path:
    """out = reshape(x, [-1, 3]); x FP32 [batch, n] fits only when batch·n % 3 == 0."""
    shape = numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["out"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["rows", 3])],
        initializer=[shape],
    )
    return _save(graph, path)


def _spec(name: str, datatype: str, shape: tuple[int, ...]) -> TensorSpec:
    return TensorSpec(name=name, datatype=datatype, shape=shape)


def make_adversarial_repo(root: Path) -> ModelRepository:
    """tests/models.py's repository plus ``pooled``, ``lookup`` and ``reshape``."""
    repo = make_repo(root)
    add_batching(repo)
    repo.add_version(
        "pooled",
        pooled_onnx(root / "pooled.onnx"),
        config=ModelConfig(
            name="pooled",
            max_batch_size=4,
            inputs=[_spec("x", "FP32", (4,))],
            outputs=[_spec("y", "FP32", (4,)), _spec("total", "FP32", (4,))],
        ),
    )
    repo.add_version(
        "lookup",
        lookup_onnx(root / "lookup.onnx"),
        config=ModelConfig(
            name="lookup",
            max_batch_size=4,
            inputs=[_spec("ids", "INT64", (3,))],
            outputs=[_spec("out", "FP32", (3, 2))],
        ),
    )
    repo.add_version(
        "reshape",
        reshape_onnx(root / "reshape.onnx"),
        config=ModelConfig(
            name="reshape",
            max_batch_size=0,
            inputs=[_spec("x", "FP32", (-1, -1))],
            outputs=[_spec("out", "FP32", (-1, 3))],
        ),
    )
    return repo


@pytest.fixture(scope="module")
def adversarial_repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    return make_adversarial_repo(tmp_path_factory.mktemp("adversarial-repo"))


@pytest.fixture(scope="module")
def adversarial_server(
    adversarial_repo: ModelRepository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A real ``edgecloud serve`` (HTTP + gRPC, no token) on :func:`make_adversarial_repo`."""
    running = start_server(adversarial_repo, tmp_path_factory.mktemp("adversarial-server"))
    yield running
    running.stop()


def start_gateway(repo: ModelRepository, server_url: str, tmp: Path, *extra: str) -> ServerProcess:
    """``edgecloud edge`` preferring the server at ``server_url``, the device as fallback."""
    spec = {
        "repository": str(repo.root),
        "remotes": {"cloud": {"url": server_url, "timeout_s": 5}},
        "root": {"prefer_remote": {"remote": "cloud", "local": "local"}},
    }
    path = tmp / "deployment.yaml"
    path.write_text(yaml.safe_dump(spec))
    port = free_port()
    argv = [sys.executable, "-m", "edgecloud.cli", "edge", "-d", str(path), "--port", str(port)]
    return launch([*argv, *extra], f"http://127.0.0.1:{port}", log=tmp / "gateway.log")


@pytest.fixture(scope="module")
def adversarial_gateway(
    adversarial_repo: ModelRepository,
    adversarial_server: Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    """The edge gateway in front of :func:`adversarial_server`."""
    process = start_gateway(
        adversarial_repo, adversarial_server.url, tmp_path_factory.mktemp("gateway")
    )
    yield process
    process.stop()
