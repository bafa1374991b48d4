"""Value domains the runtime cannot check: declared on TensorSpec, refused before the run.

The kind: values that fit the datatype and shape but not the model, and that
onnxruntime accepts silently — ONNX ``Gather`` wraps a negative index, so
minilm's token id -5 answered 200 with the embedding of id 30517; an attention
mask of 2 weighs a token double; silero-vad branches on ``sr`` and only 8000
and 16000 exist. ``TensorSpec.min_value``/``max_value`` (inclusive) and
``allowed_values`` declare the domain; ``InputValidator`` refuses anything
outside it (TensorValueError, 400, naming tensor, element index, datatype,
value and the allowed values), NaN included. Checked as a hypothesis property
on the validator, on a Gather model built in code (LocalBackend, server JSON,
binary and gRPC), and on the zoo's minilm and vad.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from edgecloud import (
    InferRequest,
    InvalidRequestError,
    LocalBackend,
    ModelConfig,
    ModelRepository,
    TensorSpec,
    TensorValueError,
)
from edgecloud.backends.remote import RemoteBackend
from edgecloud.repository import config_from_onnx
from edgecloud.server.http import triton_config
from edgecloud.tensors import InputValidator

from ..models import affine_onnx
from ..server.conftest import Server, start_server

TABLE = np.arange(20, dtype=np.float32).reshape(10, 2)


def lookup_onnx(path: Path) -> Path:
    """out = table[ids]; ids INT64 [batch, 3] → FP32 [batch, 3, 2]; table is 10 × 2.

    Gather takes indices in [-10, 9]: a negative one silently counts from the end.
    """
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["out"])],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 2])],
        initializer=[numpy_helper.from_array(TABLE, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def lookup_config(name: str, **domain: int) -> ModelConfig:
    return ModelConfig(
        name=name,
        max_batch_size=4,
        inputs=[TensorSpec(name="ids", datatype="INT64", shape=(3,), **domain)],
        outputs=[TensorSpec(name="out", datatype="FP32", shape=(3, 2))],
    )


@pytest.fixture(scope="module")
def domain_repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    """``lookup`` declares ids in [0, 9]; ``lookup-open`` is the same graph without."""
    root = tmp_path_factory.mktemp("domains")
    repo = ModelRepository(root / "repo")
    path = lookup_onnx(root / "lookup.onnx")
    repo.add_version("lookup", path, config=lookup_config("lookup", min_value=0, max_value=9))
    repo.add_version("lookup-open", path, config=lookup_config("lookup-open"))
    return repo


@pytest.fixture(scope="module")
def domain_server(
    domain_repo: ModelRepository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    running = start_server(domain_repo, tmp_path_factory.mktemp("domain-server"))
    yield running
    running.stop()


WRAPPED = np.array([[1, -2, 3]], dtype=np.int64)


def test_gather_wraps_a_negative_index_without_a_declared_domain(
    domain_repo: ModelRepository,
) -> None:
    """Why the domain exists: onnxruntime answers -2 with row 8, no error."""
    with LocalBackend(domain_repo) as local:
        out = local.infer(InferRequest("lookup-open", {"ids": WRAPPED})).outputs["out"]
        np.testing.assert_array_equal(out[0, 1], TABLE[8])
        with pytest.raises(TensorValueError) as refused:
            local.infer(InferRequest("lookup", {"ids": WRAPPED}))
    message = str(refused.value)
    for part in ("'ids'", "element 1", "INT64", "-2", "[0, 9]"):
        assert part in message, message


@pytest.mark.parametrize("front", ["json", "binary", "grpc"])
@pytest.mark.parametrize("ids", [[1, -2, 3], [0, 10, 1], [-(2**63), 0, 0], [0, 0, 2**63 - 1]])
def test_server_refuses_out_of_domain_values(
    domain_server: Server, front: str, ids: list[int]
) -> None:
    array = np.array([ids], dtype=np.int64)
    if front == "json":
        body = {"inputs": [{"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": ids}]}
        answer = httpx.post(f"{domain_server.url}/v2/models/lookup/infer", json=body, timeout=30)
        assert answer.status_code == 400, answer.text
        assert "outside the values the model accepts: in [0, 9]" in answer.json()["error"]
        return
    address = domain_server.http_address if front == "binary" else domain_server.grpc_address
    scheme = "http" if front == "binary" else "grpc"
    with (
        RemoteBackend(f"{scheme}://{address}", timeout=30) as remote,
        # the wire carries the status (400) and the message, not the subclass
        pytest.raises(InvalidRequestError, match=r"'ids'.*element \d \(INT64\).*in \[0, 9\]"),
    ):
        remote.infer(InferRequest("lookup", {"ids": array}))


def test_in_domain_values_are_answered_everywhere(
    domain_repo: ModelRepository, domain_server: Server
) -> None:
    ids = np.array([[0, 9, 4], [5, 5, 5]], dtype=np.int64)
    with LocalBackend(domain_repo) as local, RemoteBackend(domain_server.url) as remote:
        for backend in (local, remote):
            out = backend.infer(InferRequest("lookup", {"ids": ids})).outputs["out"]
            np.testing.assert_array_equal(out, TABLE[ids])


# -- the property, on the validator ---------------------------------------------------------

BOUNDS = st.tuples(st.integers(-1000, 1000), st.integers(0, 1000)).map(
    lambda t: (t[0], t[0] + t[1])
)
PROPERTY = settings(max_examples=60, deadline=None)


@PROPERTY
@given(
    bounds=BOUNDS,
    values=hnp.arrays(
        np.int64,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
        elements=st.integers(-1200, 1200),
    ),
)
def test_integer_values_are_accepted_iff_within_bounds(
    bounds: tuple[int, int], values: np.ndarray
) -> None:
    low, high = bounds
    spec = TensorSpec(
        name="v", datatype="INT64", shape=(-1,) * values.ndim, min_value=low, max_value=high
    )
    validator = InputValidator("m", [spec], 0)
    flat = values.reshape(-1)
    outside = np.flatnonzero((flat < low) | (flat > high))
    if outside.size == 0:
        validator.validate({"v": values})
        return
    with pytest.raises(TensorValueError) as refused:
        validator.validate({"v": values})
    first = int(outside[0])
    assert f"element {first} (INT64) is {int(flat[first])}," in str(refused.value)
    assert f"in [{low}, {high}]" in str(refused.value)


@PROPERTY
@given(
    values=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=2, max_side=6),
        elements=st.floats(-2, 2, width=32) | st.just(float("nan")),
    ),
)
def test_float_values_and_nan_against_a_range(values: np.ndarray) -> None:
    spec = TensorSpec(
        name="p", datatype="FP32", shape=(-1,) * values.ndim, min_value=0.0, max_value=1.0
    )
    validator = InputValidator("m", [spec], 0)
    inside = bool(((values >= 0) & (values <= 1)).all())  # False for NaN
    if inside:
        validator.validate({"p": values})
    else:
        with pytest.raises(TensorValueError, match=r"'p'.*FP32.*in \[0, 1\]"):
            validator.validate({"p": values})


@PROPERTY
@given(values=st.lists(st.sampled_from([8000, 16000, 0, -16000, 44100, 16001]), min_size=1))
def test_allowed_values(values: list[int]) -> None:
    spec = TensorSpec(name="sr", datatype="INT64", shape=(-1,), allowed_values=(8000, 16000))
    validator = InputValidator("m", [spec], 0)
    array = np.array(values, dtype=np.int64)
    if set(values) <= {8000, 16000}:
        validator.validate({"sr": array})
    else:
        with pytest.raises(TensorValueError, match=r"one of \{8000, 16000\}"):
            validator.validate({"sr": array})


def test_empty_tensors_have_no_values_to_refuse() -> None:
    spec = TensorSpec(name="ids", datatype="INT64", shape=(-1,), min_value=0, max_value=9)
    assert InputValidator("m", [spec], 4).validate({"ids": np.zeros((0, 3), np.int64)}) == 0


# -- the declaration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"min_value": 5, "max_value": 1}, "above max_value"),
        ({"datatype": "BYTES", "min_value": 0}, "numeric datatypes"),
        ({"datatype": "BOOL", "allowed_values": (1,)}, "numeric datatypes"),
        ({"max_value": float("inf")}, "finite"),
        ({"allowed_values": ()}, "empty"),
    ],
)
def test_bad_declarations_are_refused(fields: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        TensorSpec(**{"name": "t", "datatype": "INT64", "shape": (1,), **fields})  # type: ignore[arg-type]


def test_unset_domains_stay_out_of_configs(tmp_path: Path) -> None:
    """config_from_onnx declares none; an unset domain is not written; Triton's view ignores it."""
    config = config_from_onnx(affine_onnx(tmp_path / "a.onnx"), "affine", max_batch_size=8)
    assert not any(s.has_domain for s in (*config.inputs, *config.outputs))
    assert "min_value" not in str(config.model_dump())
    declared = lookup_config("lookup", min_value=0, max_value=9)
    assert declared.inputs[0].model_dump()["max_value"] == 9
    assert ModelConfig.model_validate(declared.model_dump()) == declared
    assert triton_config(declared)["input"][0]["dims"] == [3]


# -- the zoo ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_local(zoo_repo: ModelRepository) -> Iterator[LocalBackend]:
    with LocalBackend(zoo_repo, intra_op_threads=1) as local:
        yield local


def test_minilm_refuses_ids_outside_its_vocabulary(zoo_local: LocalBackend) -> None:
    mask = np.ones((1, 3), np.int64)
    for bad, index in (([101, -5, 102], 1), ([101, 30522, 102], 1), ([-1, 0, 0], 0)):
        ids = np.array([bad], np.int64)
        with pytest.raises(TensorValueError, match=rf"'input_ids'.*element {index}.*30521\]"):
            zoo_local.infer(InferRequest("minilm", {"input_ids": ids, "attention_mask": mask}))
    ids = np.array([[101, 30521, 102]], np.int64)
    with pytest.raises(TensorValueError, match=r"'attention_mask'.*\[0, 1\]"):
        zoo_local.infer(InferRequest("minilm", {"input_ids": ids, "attention_mask": mask * 2}))
    answer = zoo_local.infer(InferRequest("minilm", {"input_ids": ids, "attention_mask": mask}))
    assert answer.outputs["embedding"].shape == (1, 384)


def test_vad_takes_only_its_two_sample_rates(zoo_local: LocalBackend) -> None:
    state = np.zeros((2, 1, 128), np.float32)
    for sr, samples in ((8000, 256), (16000, 512)):
        inputs = {
            "input": np.zeros((1, samples), np.float32),
            "state": state,
            "sr": np.array(sr, np.int64),
        }
        zoo_local.infer(InferRequest("vad", inputs))
    for sr in (44100, 32000, 0, -16000):
        inputs = {
            "input": np.zeros((1, 512), np.float32),
            "state": state,
            "sr": np.array(sr, np.int64),
        }
        with pytest.raises(TensorValueError, match=r"'sr'.*one of \{8000, 16000\}"):
            zoo_local.infer(InferRequest("vad", inputs))
