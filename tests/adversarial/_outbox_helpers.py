"""Shared pieces of the outbox failure and privacy matrices (issue 14)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecloud import InferRequest, ModelConfig, ModelRepository, RequestContext, TensorSpec
from edgecloud.tensors import DEFAULT_CONTEXT

from ..models import make_repo
from ..server.conftest import Server, start_server

#: ``lookup`` answers table[idx]; an index outside [-4, 3] makes onnxruntime fail
#: at run time, so the server answers that one request with a 500, forever.
TABLE = np.array([10.0, 20.0, 30.0, 40.0], dtype=np.float32)


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lookup_repo(root: Path) -> ModelRepository:
    """The tiny models of tests/models.py plus ``lookup`` (Gather; INT64 idx [1, 1])."""
    repo = make_repo(root)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["value"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 1])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, [1, 1])],
        initializer=[numpy_helper.from_array(TABLE, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, root / "lookup.onnx")
    config = ModelConfig(
        name="lookup",
        max_batch_size=0,
        inputs=[TensorSpec(name="idx", datatype="INT64", shape=(1, 1))],
        outputs=[TensorSpec(name="value", datatype="FP32", shape=(1, 1))],
    )
    repo.add_version("lookup", root / "lookup.onnx", config=config)
    # ``lookup-broken``: the same model with its file damaged after it was added,
    # so the server answers every request for it with 503 (a server fault that
    # no retry of the item can fix) while ``lookup`` keeps serving.
    broken = repo.add_version(
        "lookup-broken",
        root / "lookup.onnx",
        config=config.model_copy(update={"name": "lookup-broken"}),
    )
    broken.model_path.write_bytes(broken.model_path.read_bytes()[:40])
    return repo


def lookup(
    index: int, context: RequestContext = DEFAULT_CONTEXT, model: str = "lookup"
) -> InferRequest:
    return InferRequest(model, {"idx": np.array([[index]], np.int64)}, context=context)


def affine(value: float, context: RequestContext = DEFAULT_CONTEXT) -> InferRequest:
    return InferRequest("affine", {"x": np.full((1, 4), value, np.float32)}, context=context)


@pytest.fixture(scope="module")
def outbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``edgecloud serve`` on the tiny models and ``lookup``."""
    tmp = tmp_path_factory.mktemp("outbox-server")
    server = start_server(lookup_repo(tmp), tmp)
    yield server
    server.stop()
