from __future__ import annotations

import time

import numpy as np
import pytest

from edgecloud import (
    DatatypeMismatchError,
    InferRequest,
    InvalidRequestError,
    RequestContext,
    Sensitivity,
    ShapeMismatchError,
    TensorSpec,
    UnknownInputError,
    UnsupportedDatatypeError,
    datatype_of,
    numpy_dtype,
)
from edgecloud.errors import MissingInputError
from edgecloud.tensors import DATATYPES, InputValidator, Span, Trace


@pytest.mark.parametrize("name", list(DATATYPES))
def test_every_protocol_datatype_round_trips_through_numpy(name: str) -> None:
    array = np.zeros((2, 3), dtype=numpy_dtype(name))
    assert datatype_of(array) == name


def test_datatype_table_covers_the_protocol() -> None:
    expected = {"BOOL", "BYTES", "FP16", "FP32", "FP64"} | {
        f"{kind}{bits}" for kind in ("INT", "UINT") for bits in (8, 16, 32, 64)
    }
    assert set(DATATYPES) == expected


def test_strings_are_bytes_and_big_endian_is_recognised() -> None:
    assert datatype_of(np.array(["a", "bc"])) == "BYTES"
    assert datatype_of(np.zeros(3, dtype=">f4")) == "FP32"


def test_unsupported_dtypes_say_what_to_use() -> None:
    with pytest.raises(UnsupportedDatatypeError, match="complex128.*FP32"):
        datatype_of(np.zeros(2, dtype=np.complex128))
    with pytest.raises(UnsupportedDatatypeError, match="'BF16'"):
        numpy_dtype("BF16")


def test_tensor_spec_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="datatype"):
        TensorSpec(name="x", datatype="FLOAT", shape=(3,))
    with pytest.raises(ValueError, match="positive or -1"):
        TensorSpec(name="x", datatype="FP32", shape=(0,))


@pytest.fixture
def validator() -> InputValidator:
    specs = [
        TensorSpec(name="x", datatype="FP32", shape=(4,)),
        TensorSpec(name="ids", datatype="INT64", shape=(-1,)),
    ]
    return InputValidator("m", specs, max_batch_size=8)


def good() -> dict[str, np.ndarray]:
    return {"x": np.zeros((3, 4), np.float32), "ids": np.zeros((3, 7), np.int64)}


def test_valid_request_returns_its_batch_size(validator: InputValidator) -> None:
    assert validator.validate(good()) == 3


def test_unknown_input_names_the_input_and_the_declared_ones(validator: InputValidator) -> None:
    inputs = good() | {"pixels": np.zeros((3, 4), np.float32)}
    with pytest.raises(UnknownInputError, match=r"no input 'pixels'.*\['ids', 'x'\]"):
        validator.validate(inputs)


def test_missing_input_is_named(validator: InputValidator) -> None:
    with pytest.raises(MissingInputError, match=r"needs input\(s\) \['ids'\]"):
        validator.validate({"x": np.zeros((3, 4), np.float32)})


def test_wrong_dtype_names_input_expected_and_received(validator: InputValidator) -> None:
    inputs = good() | {"x": np.zeros((3, 4), np.float64)}
    with pytest.raises(DatatypeMismatchError, match="input 'x'.*expects datatype FP32, got FP64"):
        validator.validate(inputs)


def test_wrong_shape_names_input_expected_and_received(validator: InputValidator) -> None:
    inputs = good() | {"x": np.zeros((3, 5), np.float32)}
    with pytest.raises(
        ShapeMismatchError, match=r"input 'x'.*expects shape \[\?, 4\].*got \[3, 5\]"
    ):
        validator.validate(inputs)


def test_wrong_rank_is_a_shape_error(validator: InputValidator) -> None:
    with pytest.raises(ShapeMismatchError, match=r"got \[4\]"):
        validator.validate(good() | {"x": np.zeros(4, np.float32)})


def test_inputs_must_agree_on_batch(validator: InputValidator) -> None:
    inputs = good() | {"ids": np.zeros((2, 7), np.int64)}
    with pytest.raises(ShapeMismatchError, match="disagree on the batch size"):
        validator.validate(inputs)


def test_lists_are_rejected_with_a_hint(validator: InputValidator) -> None:
    with pytest.raises(InvalidRequestError, match="must be a numpy array, got list"):
        validator.validate({"x": [[0.0] * 4], "ids": np.zeros((1, 2), np.int64)})


def test_unbatched_model_checks_full_shape() -> None:
    v = InputValidator("vad", [TensorSpec(name="sr", datatype="INT64", shape=())], 0)
    assert v.validate({"sr": np.array(16000, np.int64)}) == 1
    with pytest.raises(ShapeMismatchError, match=r"expects shape \[\]"):
        v.validate({"sr": np.array([16000], np.int64)})


def test_bytes_inputs_accept_strings() -> None:
    v = InputValidator("t", [TensorSpec(name="text", datatype="BYTES", shape=(-1,))], 0)
    assert v.validate({"text": np.array(["hello", "world"])}) == 1


def test_context_deadline_and_defaults() -> None:
    ctx = RequestContext.with_timeout(0.5, sensitivity=Sensitivity.RESTRICTED)
    remaining = ctx.remaining()
    assert remaining is not None and 0.4 < remaining <= 0.5
    assert ctx.deadline is not None and ctx.deadline > time.monotonic()
    assert RequestContext().remaining() is None
    request = InferRequest("m", {"x": np.zeros(2)})
    assert request.context.sensitivity is Sensitivity.PUBLIC
    assert request.id == "" and len(request.with_id().id) == 32


def test_trace_sums_spans_by_kind() -> None:
    trace = Trace(
        "remote",
        [
            Span("local", "compute", 0.002),
            Span("remote", "network", 0.010, bytes_up=100, bytes_down=40),
            Span("remote", "compute", 0.003, reason="batch of 4"),
        ],
    )
    assert trace.seconds("compute") == pytest.approx(0.005)
    assert (trace.bytes_up, trace.bytes_down) == (100, 40)
    assert "batch of 4" in trace.describe()
