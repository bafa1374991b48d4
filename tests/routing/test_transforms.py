"""Per-model input derivations: columns, window, cast, resize; the adapter; checks at load."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import edgecloud
from edgecloud import (
    ConfigError,
    InferRequest,
    InvalidRequestError,
    ModelConfig,
    ModelRepository,
    RequestContext,
    Sensitivity,
    TensorSpec,
)
from edgecloud.backends.base import FunctionBackend
from edgecloud.errors import (
    DatatypeMismatchError,
    MissingInputError,
    PayloadTooLargeError,
    ShapeMismatchError,
    TensorValueError,
)
from edgecloud.routing.transforms import (
    InputAdapter,
    InputDerivation,
    ModelInputs,
    cast,
    check_against,
    derive,
)

from ..models import affine_onnx

PROPERTY = settings(max_examples=40, deadline=None)


def models(**declared: dict[str, dict[str, Any]]) -> dict[str, ModelInputs]:
    """``models(small={"x": {...}})`` -> the validated ``models:`` section."""
    return {
        name: ModelInputs.model_validate({"inputs": inputs}) for name, inputs in declared.items()
    }


def one(step: dict[str, Any], array: np.ndarray, name: str = "x") -> np.ndarray:
    """Derive input ``x`` of model ``m`` from a request holding ``array`` under ``name``."""
    return derive(models(m={"x": step}), "m", {name: array})["x"]


# ---------------------------------------------------------------- the steps


def test_columns_select_named_features_in_order() -> None:
    features = np.arange(40, dtype=np.float32).reshape(2, 20)
    got = derive(
        models(small={"x": {"from": "features", "columns": [7, 0, 3]}}),
        "small",
        {"features": features, "other": np.zeros(2)},
    )
    assert list(got) == ["x"]  # exactly the declared inputs: "features"/"other" are not passed
    np.testing.assert_array_equal(got["x"], features[:, [7, 0, 3]])
    assert got["x"].flags.c_contiguous
    np.testing.assert_array_equal(one({"columns": "0:8:2"}, features), features[:, 0:8:2])
    np.testing.assert_array_equal(one({"columns": "15:"}, features), features[:, 15:])
    np.testing.assert_array_equal(one({"columns": ":3"}, features), features[:, :3])


def test_window_keeps_the_first_positions_and_passes_a_shorter_sequence_whole() -> None:
    ids = np.arange(2 * 100, dtype=np.int64).reshape(2, 100)
    np.testing.assert_array_equal(one({"window": 64}, ids), ids[:, :64])
    short = ids[:, :10]
    assert one({"window": 64}, short).shape == (2, 10)  # like tokenizer truncation


def test_area_resize_is_average_pooling() -> None:
    image = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    small = one({"resize": [32, 32]}, image)  # mode defaults to area
    expected = image.astype(np.float64).reshape(2, 3, 32, 2, 32, 2).mean(axis=(3, 5))
    assert small.dtype == np.float32 and small.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(small, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["area", "bilinear", "nearest"])
def test_resize_matches_pytorch(mode: str) -> None:
    import torch
    import torch.nn.functional as F

    image = np.random.default_rng(1).normal(size=(2, 3, 24, 36)).astype(np.float32)
    sizes = [(12, 9), (8, 12)] if mode == "area" else [(12, 9), (7, 50), (40, 13)]
    for size in sizes:
        got = one({"resize": list(size), "mode": mode}, image)
        torch_mode = "nearest-exact" if mode == "nearest" else mode
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        want = F.interpolate(torch.from_numpy(image), size=size, mode=torch_mode, **kwargs)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4)  # torch: float32 weights


def test_integer_images_are_rounded_and_bool_takes_nearest() -> None:
    image = np.array([[[[0, 1], [2, 2]]]], dtype=np.uint8)  # mean 1.25 -> 1
    assert one({"resize": [1, 1]}, image).tolist() == [[[[1]]]]
    assert one({"resize": [1, 1]}, image + 1).tolist() == [[[[2]]]]  # 2.25 -> 2
    mask = np.ones((1, 1, 4, 4), dtype=bool)
    assert one({"resize": [2, 2], "mode": "nearest"}, mask).dtype == np.bool_
    with pytest.raises(DatatypeMismatchError, match="use mode: nearest"):
        one({"resize": [2, 2]}, mask)
    with pytest.raises(DatatypeMismatchError, match="BYTES"):
        one({"resize": [1, 1], "mode": "nearest"}, np.array([[[["a"]]]], dtype=object))


def test_steps_apply_in_the_documented_order() -> None:
    """columns (last axis) -> window (axis 1) -> cast -> resize (last two axes)."""
    x = np.arange(2 * 8 * 4 * 6, dtype=np.int64).reshape(2, 8, 4, 6)
    got = one({"columns": [0, 1, 2, 3], "window": 4, "cast": "FP32", "resize": [2, 2]}, x)
    expected = x[..., :4][:, :4].astype(np.float32).reshape(2, 4, 2, 2, 2, 2).mean(axis=(3, 5))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected)


def test_no_steps_passes_the_same_array_and_from_defaults_to_the_name() -> None:
    x = np.ones((3, 2), dtype=np.float32)
    assert one({}, x) is x
    renamed = derive(models(m={"image": {"from": "pixels"}}), "m", {"pixels": x})
    assert renamed["image"] is x


def test_zero_rows_stay_zero_rows() -> None:
    assert one({"columns": [1]}, np.zeros((0, 5), np.float32)).shape == (0, 1)
    assert one({"window": 3}, np.zeros((0, 9), np.int64)).shape == (0, 3)
    assert one({"cast": "INT8"}, np.zeros((0, 2), np.float32)).dtype == np.int8
    for mode in ("area", "bilinear", "nearest"):
        got = one({"resize": [2, 2], "mode": mode}, np.zeros((0, 3, 4, 4), np.float32))
        assert got.shape == (0, 3, 2, 2)


# ---------------------------------------------------------------- properties


@st.composite
def arrays_and_columns(draw: st.DrawFn) -> tuple[np.ndarray, list[int]]:
    lead = draw(st.lists(st.integers(0, 3), min_size=1, max_size=3))
    width = draw(st.integers(1, 12))
    columns = draw(st.lists(st.integers(0, width - 1), min_size=1, max_size=width, unique=True))
    return np.arange(np.prod(lead) * width, dtype=np.float64).reshape(*lead, width), columns


@PROPERTY
@given(arrays_and_columns())
def test_columns_property(case: tuple[np.ndarray, list[int]]) -> None:
    array, columns = case
    got = one({"columns": columns}, array)
    assert got.shape == (*array.shape[:-1], len(columns))
    np.testing.assert_array_equal(got, array[..., columns])


@PROPERTY
@given(st.integers(1, 12), st.integers(0, 12), st.integers(1, 13), st.integers(1, 3))
def test_column_slice_property(width: int, start: int, stop: int, step: int) -> None:
    array = np.zeros((2, width), np.float32)
    if stop <= start:
        with pytest.raises(ValidationError, match="selects nothing"):
            InputDerivation(columns=f"{start}:{stop}:{step}")
        return
    if stop > width:
        with pytest.raises(ShapeMismatchError, match="needs a last axis of at least"):
            one({"columns": f"{start}:{stop}:{step}"}, array)
        return
    assert one({"columns": f"{start}:{stop}:{step}"}, array).shape == (
        2,
        len(range(start, stop, step)),
    )


@PROPERTY
@given(st.integers(0, 4), st.integers(1, 40), st.integers(1, 40), st.integers(0, 2))
def test_window_property(rows: int, length: int, window: int, extra: int) -> None:
    array = np.zeros((rows, length, *([2] * extra)), np.int64)
    assert one({"window": window}, array).shape == (rows, min(length, window), *([2] * extra))


@PROPERTY
@given(
    st.integers(1, 20),
    st.integers(1, 20),
    st.integers(1, 20),
    st.integers(1, 20),
    st.sampled_from(["bilinear", "nearest"]),
    st.sampled_from([np.float32, np.float16, np.uint8, np.int64]),
)
def test_resize_property(h0: int, w0: int, h: int, w: int, mode: str, dtype: type) -> None:
    array = (np.arange(2 * h0 * w0) % 200).astype(dtype).reshape(2, 1, h0, w0)
    got = one({"resize": [h, w], "mode": mode}, array)
    assert got.shape == (2, 1, h, w) and got.dtype == array.dtype
    # Interpolation stays within the input's range (no overflow of an integer image).
    assert got.min() >= array.min() and got.max() <= array.max()


@PROPERTY
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.integers(1, 4))
def test_area_property(h: int, w: int, fh: int, fw: int) -> None:
    array = np.random.default_rng(h * w).normal(size=(3, h * fh, w * fw))
    got = one({"resize": [h, w], "mode": "area"}, array)
    assert got.shape == (3, h, w)
    np.testing.assert_allclose(got.mean(axis=(1, 2)), array.mean(axis=(1, 2)))


@PROPERTY
@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=20))
def test_int_to_float_casts_only_exact_values(values: list[int]) -> None:
    array = np.array(values, dtype=np.int64).reshape(1, -1)
    for datatype, limit in (("FP16", 2**11), ("FP32", 2**24), ("FP64", 2**53)):
        if max(abs(v) for v in values) <= limit:
            assert cast(array, datatype).astype(np.int64).tolist() == array.tolist()
        else:
            with pytest.raises(TensorValueError, match="not exactly representable"):
                cast(array, datatype)


# ---------------------------------------------------------------- casts


@pytest.mark.parametrize(
    ("values", "dtype", "datatype", "match"),
    [
        ([1.5], np.float32, "INT64", "not an integer"),
        ([np.nan], np.float32, "INT32", "not an integer"),
        ([np.inf], np.float64, "INT32", "not an integer"),
        ([2.0**63], np.float64, "INT64", "not an integer within INT64"),
        ([-1.0], np.float32, "UINT8", "not an integer within UINT8"),
        ([256], np.int64, "UINT8", "outside UINT8"),
        ([-1], np.int32, "UINT64", "outside UINT64"),
        ([2**63 - 1], np.uint64, "INT32", "outside INT32"),
        ([2049], np.int64, "FP16", "not exactly representable in FP16"),
        ([2**24 + 1], np.int64, "FP32", "not exactly representable in FP32"),
        ([70000.0], np.float32, "FP16", "beyond FP16's largest finite value"),
        ([1e39], np.float64, "FP32", "beyond FP32's largest"),
        ([2], np.int64, "BOOL", "BOOL takes 0 or 1"),
        ([0.5], np.float32, "BOOL", "BOOL takes 0 or 1"),
    ],
)
def test_casts_that_would_change_a_value_are_refused(
    values: list[float], dtype: type, datatype: str, match: str
) -> None:
    array = np.array([0, *values], dtype=dtype)
    with pytest.raises(TensorValueError, match=f"element 1 .*{match}"):
        cast(array, datatype, where="model 'm': input 'x'")


def test_casts_that_keep_every_value() -> None:
    assert cast(np.array([1.0, -3.0]), "INT8").tolist() == [1, -3]
    assert cast(np.array([2**63 - 1024.0]), "INT64").tolist() == [2**63 - 1024]
    assert cast(np.array([0, 1]), "BOOL").tolist() == [False, True]
    assert cast(np.array([True, False]), "FP16").tolist() == [1.0, 0.0]
    assert cast(np.array([2048, -2048]), "FP16").tolist() == [2048.0, -2048.0]
    kept = cast(np.array([np.nan, np.inf, 1e-3], np.float64), "FP16")
    assert np.isnan(kept[0]) and np.isinf(kept[1]) and kept.dtype == np.float16  # rounding ok
    same = np.ones(3, np.float32)
    assert cast(same, "FP32") is same
    assert cast(same.astype(">f4"), "FP32").dtype == np.dtype(">f4")  # same datatype: as is


def test_every_cast_between_datatypes_keeps_values_or_refuses() -> None:
    """Each pair of datatypes at the edges of the source's range (pytest turns a numpy
    overflow warning into a failure): an accepted cast back is the same value."""
    targets = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
               "FP16", "FP32", "FP64"]  # fmt: skip
    accepted = 0
    for source in [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                   np.uint32, np.uint64, np.float16, np.float32, np.float64]:  # fmt: skip
        if source is np.bool_:
            values: list[Any] = [False, True]
        elif np.issubdtype(source, np.integer):
            values = [np.iinfo(source).min, np.iinfo(source).max, 0, 1]
        else:
            top = float(np.finfo(source).max)
            edges = [2.0**31, 2.0**63, 2.0**64, -(2.0**63), 2.0**63 - 2**40, 2049.0]
            values = [-top, top, 0, 1, 0.5, np.nan, np.inf, *[x for x in edges if abs(x) <= top]]
        for value in values:
            array = np.array([value], dtype=source)
            for datatype in targets:
                try:
                    got = cast(array, datatype)
                except TensorValueError:
                    continue
                accepted += 1
                if array.dtype.kind == "f" and datatype.startswith("FP"):
                    continue  # float -> float rounds by design
                assert got.astype(source).tolist() == array.tolist(), (source, value, datatype)
    assert accepted > 300


def test_bytes_cannot_be_cast() -> None:
    with pytest.raises(DatatypeMismatchError, match="BYTES tensor cannot be cast"):
        cast(np.array([b"1"], dtype=object), "INT64")
    with pytest.raises(DatatypeMismatchError, match="cannot cast to 'BYTES'"):
        cast(np.array([1]), "BYTES")


# ---------------------------------------------------------------- requests that do not fit


@pytest.mark.parametrize(
    ("step", "array", "error", "match"),
    [
        ({"from": "f"}, np.zeros((1, 2)), MissingInputError, "lacks \\(it has \\['x'\\]\\)"),
        ({"columns": [5]}, np.zeros((2, 5)), ShapeMismatchError, "column 5 is beyond"),
        ({"columns": "0:6"}, np.zeros((2, 5)), ShapeMismatchError, "at least 6"),
        ({"columns": "5:"}, np.zeros((2, 5)), ShapeMismatchError, "at least 6"),
        ({"columns": [0]}, np.zeros(5), ShapeMismatchError, "rank >= 2"),
        ({"window": 4}, np.zeros(5), ShapeMismatchError, "rank >= 2"),
        ({"resize": [2, 2]}, np.zeros((4, 4)), ShapeMismatchError, "rank >= 3"),
        ({"resize": [2, 2]}, np.zeros((1, 0, 4)), ShapeMismatchError, "empty image"),
        ({"resize": [3, 3]}, np.zeros((1, 4, 4)), ShapeMismatchError, "integer factor"),
        ({"resize": [8, 8]}, np.zeros((1, 4, 4)), ShapeMismatchError, "integer factor"),
        ({"cast": "INT8"}, np.array([[300.0]]), TensorValueError, "INT8"),
        ({"cast": "FP32"}, np.array([["a"]]), DatatypeMismatchError, "BYTES"),
        ({"columns": [0]}, [[1.0, 2.0]], InvalidRequestError, "numpy arrays"),
        ({"columns": [0]}, np.zeros((1, 2), np.complex64), InvalidRequestError, "complex64"),
    ],
)
def test_requests_that_do_not_fit_are_typed_errors(
    step: dict[str, Any], array: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as caught:
        one(step, array)
    assert "model 'm': input 'x'" in str(caught.value) or error is InvalidRequestError


def test_a_huge_resize_is_refused_before_it_allocates() -> None:
    with pytest.raises(PayloadTooLargeError, match="above the 268435456"):
        one({"resize": [16384, 16384], "mode": "nearest"}, np.zeros((2, 1, 1), np.float32))


# ---------------------------------------------------------------- declarations


@pytest.mark.parametrize(
    ("inputs", "path", "match"),
    [
        ({"x": {"columns": [-1]}}, "models.m.inputs.x.columns", "must be in"),
        ({"x": {"columns": [1, 1]}}, "models.m.inputs.x.columns", "more than once"),
        ({"x": {"columns": []}}, "models.m.inputs.x.columns", "empty"),
        ({"x": {"columns": "a:b"}}, "models.m.inputs.x.columns", "not a slice"),
        ({"x": {"columns": "5:3"}}, "models.m.inputs.x.columns", "selects nothing"),
        ({"x": {"columns": "0:4:0"}}, "models.m.inputs.x.columns", "step must be >= 1"),
        ({"x": {"columns": [0.5]}}, "models.m.inputs.x.columns", ""),
        ({"x": {"window": 0}}, "models.m.inputs.x.window", "greater than or equal to 1"),
        ({"x": {"window": True}}, "models.m.inputs.x.window", "valid integer"),
        ({"x": {"resize": [0, 4]}}, "models.m.inputs.x.resize", "must be in \\[1, 16384\\]"),
        ({"x": {"resize": [32]}}, "models.m.inputs.x.resize", ""),
        ({"x": {"mode": "area"}}, "models.m.inputs.x", "mode applies to resize"),
        ({"x": {"resize": [2, 2], "mode": "cubic"}}, "models.m.inputs.x.mode", "area"),
        ({"x": {"cast": "BYTES"}}, "models.m.inputs.x.cast", "FP16"),
        ({"x": {"from": ""}}, "models.m.inputs.x.from", "at least 1"),
        ({"x": {"pool": 2}}, "models.m.inputs.x.pool", "Extra inputs"),
        ({}, "models.m.inputs", "at least 1 item"),
    ],
)
def test_bad_declarations_name_their_yaml_path(
    inputs: dict[str, Any], path: str, match: str
) -> None:
    raw = {"models": {"m": {"inputs": inputs}}, "root": "local"}
    with pytest.raises(ConfigError, match=f"^deployment: {path}(\\.[^: ]+)?: .*{match}"):
        edgecloud.load(raw)


def test_declarations_round_trip_with_their_yaml_spelling() -> None:
    declared = ModelInputs.model_validate(
        {"inputs": {"x": {"from": "features", "columns": "0:8", "cast": "FP16"}}}
    )
    dumped = declared.model_dump(by_alias=True, exclude_none=True)
    assert dumped == {"inputs": {"x": {"from": "features", "columns": "0:8", "cast": "FP16"}}}
    schema = ModelInputs.model_json_schema()
    assert "from" in schema["$defs"]["InputDerivation"]["properties"]


# ---------------------------------------------------------------- the adapter


def echo() -> FunctionBackend:
    return FunctionBackend(lambda inputs: {k: np.asarray(v) for k, v in inputs.items()})


def test_the_adapter_derives_declared_models_and_passes_everything_else() -> None:
    seen: list[InferRequest] = []

    class Recorder(FunctionBackend):
        def infer(self, request: InferRequest) -> edgecloud.InferResponse:
            seen.append(request)
            return super().infer(request)

    closed: list[bool] = []
    inner = Recorder(lambda inputs: dict(inputs), name="leaf")
    inner.close = lambda: closed.append(True)  # type: ignore[method-assign]
    adapter = InputAdapter(inner, models(small={"x": {"from": "features", "columns": [1]}}))
    features = np.arange(6, dtype=np.float32).reshape(2, 3)
    context = RequestContext(sensitivity=Sensitivity.PERSONAL, idempotency_key="k1")
    request = InferRequest(
        "small", {"features": features}, version="2", outputs=["x"],
        parameters={"p": 1}, context=context, id="r1",
    )  # fmt: skip
    response = adapter.infer(request)
    sent = seen[-1]
    assert list(sent.inputs) == ["x"]
    np.testing.assert_array_equal(sent.inputs["x"], features[:, [1]])
    assert (sent.model, sent.version, sent.outputs, sent.parameters, sent.context, sent.id) == (
        "small", "2", ["x"], {"p": 1}, context, "r1",
    )  # fmt: skip
    assert request.inputs == {"features": features}  # the caller's request is not modified
    assert response.id == "r1" and adapter.name == "leaf"

    other = InferRequest("large", {"features": features})
    adapter.infer(other)
    assert seen[-1] is other  # another model: passed through untouched

    asyncio.run(adapter.infer_async(request))
    assert list(seen[-1].inputs) == ["x"]
    adapter.close()
    assert closed == [True]


def test_the_adapter_raises_before_the_inner_backend_is_asked() -> None:
    calls: list[int] = []
    inner = FunctionBackend(lambda inputs: calls.append(1) or dict(inputs))  # type: ignore[func-returns-value]
    adapter = InputAdapter(inner, models(small={"x": {"from": "features", "columns": [9]}}))
    with pytest.raises(ShapeMismatchError, match="model 'small': input 'x' \\(from 'features'\\)"):
        adapter.infer(InferRequest("small", {"features": np.zeros((1, 3), np.float32)}))
    assert calls == []


# ---------------------------------------------------------------- checks against configs


def tabular_repo(
    tmp_path: Path, *, small_width: int = 4, small_type: str = "FP32"
) -> ModelRepository:
    """``large`` takes x FP32 [batch, 20]; ``small`` takes x [batch, small_width]."""
    repo = ModelRepository(tmp_path / "repo")
    onnx_file = affine_onnx(tmp_path / "affine.onnx")  # the graph is not run by these checks
    for name, width, datatype in (("large", 20, "FP32"), ("small", small_width, small_type)):
        config = ModelConfig(
            name=name, max_batch_size=8,
            inputs=[TensorSpec(name="x", datatype=datatype, shape=(width,))],
            outputs=[TensorSpec(name="z", datatype="FP32", shape=(3,))],
        )  # fmt: skip
        repo.add_version(name, onnx_file, config=config)
    return repo


@pytest.mark.parametrize(
    ("step", "match"),
    [
        ({"columns": [0, 1, 2]}, "derives shape \\[\\?, 3\\], the model takes \\[\\?, 4\\]"),
        ({"columns": "0:8:2"}, ""),  # 4 columns: fits
        ({"columns": [0, 1, 2, 20]}, "column 20 is beyond the request's 20 columns"),
        ({"columns": "18:22"}, "reach beyond the request's 20 columns"),
        ({"columns": [0, 1, 2, 3], "cast": "FP16"}, "derives datatype FP16, the model takes FP32"),
        ({"from": "pixels", "columns": [0, 1, 2, 3]}, "the request has no tensor 'pixels'"),
        ({"resize": [2, 2]}, "need rank >= 3; the model takes \\[\\?, 4\\]"),
        ({"window": 4}, ""),  # axis 1 of [?, 20] is the last: min(20, 4) = 4 fits
    ],
)
def test_declarations_are_checked_against_the_configs(
    tmp_path: Path, step: dict[str, Any], match: str
) -> None:
    repo = tabular_repo(tmp_path)
    declared = models(small={"x": step})
    if not match:
        check_against(declared, repo, pairs=[("small", "large")])
        return
    with pytest.raises(ConfigError, match=f"^deployment: models.small.inputs.x: .*{match}"):
        check_against(declared, repo, pairs=[("small", "large")])


def test_the_source_datatype_needs_a_cast(tmp_path: Path) -> None:
    repo = tabular_repo(tmp_path, small_type="FP16")
    with pytest.raises(ConfigError, match="derives datatype FP32, the model takes FP16; add cast"):
        check_against(models(small={"x": {"columns": "0:4"}}), repo, pairs=[("small", "large")])
    check_against(
        models(small={"x": {"columns": "0:4", "cast": "FP16"}}), repo, pairs=[("small", "large")]
    )


def test_declared_inputs_must_be_the_models_inputs(tmp_path: Path) -> None:
    repo = tabular_repo(tmp_path)
    with pytest.raises(ConfigError, match="takes inputs \\['x'\\], the declaration derives"):
        check_against(models(small={"y": {"from": "x"}}), repo)
    with pytest.raises(ConfigError, match="declaration derives \\['extra', 'x'\\]"):
        check_against(models(small={"x": {"columns": [0, 1, 2, 3]}, "extra": {"from": "x"}}), repo)


def test_without_a_known_source_what_the_steps_fix_is_checked(tmp_path: Path) -> None:
    repo = tabular_repo(tmp_path)
    check_against(models(small={"x": {"columns": [0, 1, 2, 3]}}), repo)  # no pair: shape only
    with pytest.raises(ConfigError, match="derives shape \\[\\?, 2\\]"):
        check_against(models(small={"x": {"columns": [0, 1]}}), repo)
    with pytest.raises(ConfigError, match="window 3 gives up to 3 positions"):
        check_against(models(small={"x": {"window": 3}}), repo)
    # Models the repository does not hold (served remotely) and a missing repository pass.
    check_against(models(remote_only={"x": {"columns": [0]}}), repo)
    check_against(models(small={"x": {"columns": [0]}}), ModelRepository(tmp_path / "none"))


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
@pytest.mark.parametrize("mode", ["area", "bilinear"])
def test_a_64_bit_integer_resize_is_exact_or_refused(dtype: type, mode: str) -> None:
    """Before: INT64 values near 2^63-1 came back as -2^63 (the float64 mean rounded up
    past the largest INT64 and wrapped). Now values float64 holds exactly (|v| <= 2^53)
    resize exactly, and a larger one is refused as cast() to FP64 refuses it."""
    info = np.iinfo(dtype)
    image = np.full((1, 1, 4, 4), info.max, dtype=dtype)
    with pytest.raises(TensorValueError, match=r"element 0 .* beyond ±2\^53.*use mode: nearest"):
        one({"resize": [2, 2], "mode": mode}, image)
    nearest = one({"resize": [2, 2], "mode": "nearest"}, image)
    assert (nearest == info.max).all()  # no arithmetic: every value passes whole
    exact = np.full((1, 1, 4, 4), 2**53, dtype=dtype)
    if dtype is np.int64:
        exact[..., ::2] = -(2**53)
    got = one({"resize": [2, 2], "mode": mode}, exact)
    expected = np.rint(exact.astype(np.float64).reshape(1, 1, 2, 2, 2, 2).mean(axis=(3, 5)))
    if mode == "area":
        assert got.dtype == dtype and (got == expected.astype(dtype)).all()
    assert got.min() >= -(2**53) and got.max() <= 2**53
