"""Per-model input derivations: a model may take a subset or a transformation of the request.

A cascade's small model often takes less than the large one: four of twenty
features, a 32x32 image where the large model takes 64x64, the first 64 tokens
of 256. The deployment file declares, per model, how each of its inputs is
derived from the request's tensors — a small fixed set of steps, not code::

    models:
      tabular-small:
        inputs:
          x: {from: features, columns: [0, 3, 5, 7]}     # or columns: "0:8"
      vision-small:
        inputs:
          image: {from: image, resize: [32, 32], mode: area}
      text-small:
        inputs:
          input_ids: {from: input_ids, window: 64}
          attention_mask: {from: attention_mask, window: 64}
      any:
        inputs:
          x: {cast: FP16}                                 # from: defaults to the input's name

A model named here gets exactly its declared inputs (request tensors it does
not declare are not passed), always derived from the request's tensors: a
request for it through the deployment carries the sources (``features``), not
the derived inputs (``x``). A model not named gets the request unchanged. In
a cascade the small model answers on its derived inputs and an escalation
sends the original rows to the large model (which is derived only if it is
named too). :class:`InputAdapter` applies the derivations around every leaf
of a deployment.

Steps, always applied in this order (each optional; shapes are the full
tensor's, batch axis first, as the request carries them):

1. ``from: NAME`` — the request tensor to start from (default: the input's own
   name). Missing: MissingInputError.
2. ``columns`` — a selection on the last axis: a list of distinct indices
   ``[0, 3, 5, 7]`` (in that order) or a slice ``"a:b"`` / ``"a:b:step"`` /
   ``"a:"`` (Python's, non-negative). ``[N, ..., F] -> [N, ..., k]``. Rank >= 2;
   an index or slice end beyond ``F`` is a ShapeMismatchError (never silently
   shortened, as Python slicing would).
3. ``window: W`` — the first ``W`` positions of axis 1 (a token window):
   ``[N, T, ...] -> [N, min(T, W), ...]``. A shorter sequence passes whole, as a
   tokenizer's ``max_length`` truncation does; a model with a fixed length
   refuses it by its own input check. Rank >= 2.
4. ``cast: DATATYPE`` — to an Open Inference Protocol datatype (not BYTES), only
   where every value survives (see :func:`cast`); else TensorValueError.
5. ``resize: [H, W]`` with ``mode`` — the last two axes, ``[N, C, H0, W0] ->
   [N, C, H, W]`` (any rank >= 3: ``[N, H0, W0]`` too; channels-first only).
   ``area`` (default): the mean of each ``H0/H x W0/W`` block — average pooling
   by an integer factor, shrinking only (PyTorch's ``mode="area"``, i.e.
   ``adaptive_avg_pool2d``, at integer factors); ``bilinear``: half-pixel
   centres, no antialiasing (PyTorch ``bilinear``, ``align_corners=False``;
   ONNX ``Resize`` linear, ``half_pixel``); ``nearest``: source index
   ``floor((i + 0.5) * H0 / H)`` (PyTorch ``nearest-exact``). Values are
   computed in float64 and returned in the tensor's datatype; an integer
   tensor's area or bilinear values are rounded to nearest (ties to even), as
   image libraries do (exact: every value of an INT64/UINT64 tensor must be within
   ±2^53, the integers float64 holds, else TensorValueError, as :func:`cast`
   to FP64 refuses them); BOOL takes ``nearest`` only; BYTES is refused. A result
   above :data:`MAX_DERIVED_ELEMENTS` is a PayloadTooLargeError.

Zero rows stay zero rows. A declaration that cannot be right (a negative
column, ``mode`` without ``resize``, a cast to BYTES) is a ConfigError naming
its YAML path; :func:`check_against` compares what each declaration derives
with the model's config when the deployment is checked, so a mismatch fails at
``check_ready``, not on the first request.

numpy only: this runs on the edge inference path.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ..backends.base import Backend
from ..errors import (
    ConfigError,
    DatatypeMismatchError,
    EdgecloudError,
    MissingInputError,
    PayloadTooLargeError,
    ShapeMismatchError,
    TensorValueError,
)
from ..tensors import DATATYPES, InferRequest, InferResponse, TensorSpec, datatype_of

if TYPE_CHECKING:
    from ..repository import ModelRepository

__all__ = [
    "MAX_DERIVED_ELEMENTS",
    "InputAdapter",
    "InputDerivation",
    "ModelInputs",
    "cast",
    "check_against",
    "derive",
]

Array = np.ndarray[Any, Any]

#: Largest column index, window and derived dimension a declaration may name.
MAX_INDEX = 2**31 - 1
#: Largest side of a ``resize`` target: above any image model's input.
MAX_SIDE = 16_384
#: Most elements a derived tensor may have when a step enlarges it (only an
#: upsampling ``resize`` can): 2^28 elements is 1 GiB of FP32, and the float64
#: working copy twice that. A larger result is a PayloadTooLargeError.
MAX_DERIVED_ELEMENTS = 2**28

#: A ``columns`` slice as the JSON Schema states it: ``start:stop[:step]``, each part
#: optional, non-negative, step not 0. What a pattern cannot state (stop above start,
#: indices up to MAX_INDEX) is checked by :func:`_parse_slice` at load.
SLICE_PATTERN = r"^ *[0-9]* *: *[0-9]* *(: *([0-9]*[1-9][0-9]*)? *)?$"
_COLUMNS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": MAX_INDEX},
            "minItems": 1,
            "uniqueItems": True,
        },
        {"type": "string", "pattern": SLICE_PATTERN},
        {"type": "null"},
    ],
    "default": None,
}
_RESIZE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "array",
            "prefixItems": [{"type": "integer", "minimum": 1, "maximum": MAX_SIDE}] * 2,
            "minItems": 2,
            "maxItems": 2,
        },
        {"type": "null"},
    ],
    "default": None,
}

CastType = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64",
]  # fmt: skip
ResizeMode = Literal["area", "bilinear", "nearest"]


class InputDerivation(BaseModel):
    """How one input of a model is derived from the request (steps in the module docstring)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        # mode set (even to null) needs a resize: what _mode_needs_resize checks
        json_schema_extra={
            "dependentSchemas": {
                "mode": {"required": ["resize"], "properties": {"resize": {"type": "array"}}}
            }
        },
    )

    source: str | None = Field(default=None, alias="from", min_length=1)
    """The request tensor to start from; default: the input's own name."""
    columns: Annotated[list[StrictInt] | str | None, WithJsonSchema(_COLUMNS_SCHEMA)] = None
    """Last-axis selection: distinct indices ``[0, 3]`` or a slice ``"a:b[:step]"``."""
    window: StrictInt | None = Field(default=None, ge=1, le=MAX_INDEX)
    """Keep the first ``window`` positions of axis 1 (all of them when fewer)."""
    cast: CastType | None = None
    """Convert to this datatype where every value survives; else TensorValueError."""
    resize: Annotated[tuple[StrictInt, StrictInt] | None, WithJsonSchema(_RESIZE_SCHEMA)] = None
    """``[H, W]``: the size of the last two axes after resizing."""
    mode: ResizeMode | None = None
    """How ``resize`` computes pixels: ``area`` (default), ``bilinear``, ``nearest``."""

    @field_validator("columns")
    @classmethod
    def _valid_columns(cls, value: list[int] | str | None) -> list[int] | str | None:
        if isinstance(value, str):
            _parse_slice(value)
        elif value is not None:
            if not value:
                raise ValueError("columns is empty; list the columns to keep")
            bad = [c for c in value if not 0 <= c <= MAX_INDEX]
            if bad:
                raise ValueError(f"columns must be in [0, {MAX_INDEX}], got {bad[0]}")
            if len(set(value)) != len(value):
                twice = sorted(c for c, n in Counter(value).items() if n > 1)
                raise ValueError(f"columns lists {twice} more than once")
        return value

    @field_validator("resize")
    @classmethod
    def _valid_resize(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not all(1 <= side <= MAX_SIDE for side in value):
            raise ValueError(f"resize sides must be in [1, {MAX_SIDE}], got {list(value)}")
        return value

    @model_validator(mode="after")
    def _mode_needs_resize(self) -> InputDerivation:
        if "mode" in self.model_fields_set and self.resize is None:
            raise ValueError("mode applies to resize; give resize: [H, W] or drop mode")
        return self

    @property
    def resize_mode(self) -> ResizeMode:
        return self.mode or "area"

    def min_rank(self) -> int:
        """The rank a tensor needs for these steps (resize 3, columns/window 2, else 0)."""
        if self.resize is not None:
            return 3
        return 2 if self.columns is not None or self.window is not None else 0


class ModelInputs(BaseModel):
    """The inputs of one model, each derived from the request (``models.<model>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: dict[str, InputDerivation] = Field(min_length=1)
    """Input name (as the model declares it) -> its derivation."""


ModelsMap = Mapping[str, ModelInputs]


def _parse_slice(text: str) -> tuple[int, int | None, int]:
    """``"a:b"``, ``"a:b:s"``, ``"a:"`` -> (start, stop or None, step); ValueError otherwise."""
    parts = [p.strip(" ") for p in text.split(":")]
    if not re.fullmatch(SLICE_PATTERN, text):
        raise ValueError(
            f"columns {text!r} is not a slice; write 'start:stop' or 'start:stop:step' "
            "with non-negative integers, step must be >= 1 (or a list of indices)"
        )
    start = int(parts[0] or 0)
    stop = int(parts[1]) if parts[1] else None
    step = int(parts[2]) if len(parts) == 3 and parts[2] else 1
    if step < 1 or max(start, stop or 0, step) > MAX_INDEX:
        raise ValueError(f"columns {text!r}: step must be >= 1 and indices <= {MAX_INDEX}")
    if stop is not None and stop <= start:
        raise ValueError(f"columns {text!r} selects nothing; stop must be above start")
    return start, stop, step


# ---------------------------------------------------------------- deriving a request


def derive(models: ModelsMap, model: str, inputs: Mapping[str, Array]) -> Mapping[str, Array]:
    """The inputs ``model`` takes, derived from a request's ``inputs``.

    A model not in ``models`` gets ``inputs`` itself, unchanged. A declared one
    gets exactly its declared inputs, each derived by its steps; request
    tensors it does not declare are left out. ``inputs`` is not modified.

    Raises:
        MissingInputError: a ``from`` tensor the request lacks.
        ShapeMismatchError: wrong rank, a column or slice beyond the last axis,
            an ``area`` resize by a non-integer factor, an empty image.
        DatatypeMismatchError: a cast or resize the tensor's datatype cannot take.
        TensorValueError: a value a cast would change (see :func:`cast`).
        PayloadTooLargeError: a resize result above :data:`MAX_DERIVED_ELEMENTS`.
        InvalidRequestError / UnsupportedDatatypeError: a tensor that is not a
            numpy array of a protocol datatype.
    """
    declared = models.get(model)
    if declared is None:
        return inputs
    return {
        name: derive_input(step, inputs, model=model, name=name)
        for name, step in declared.inputs.items()
    }


def derive_input(
    step: InputDerivation, inputs: Mapping[str, Array], *, model: str, name: str
) -> Array:
    """One derived input (see :func:`derive`); errors name the model, input and source."""
    source = step.source or name
    where = f"model {model!r}: input {name!r}" + (f" (from {source!r})" if source != name else "")
    if source not in inputs:
        raise MissingInputError(
            f"{where} is derived from request tensor {source!r}, which the request lacks "
            f"(it has {sorted(inputs)})"
        )
    array = inputs[source]
    datatype_of(array)  # a numpy array of a protocol datatype, or a typed error
    if array.ndim < step.min_rank():
        raise ShapeMismatchError(
            f"{where}: {_steps(step)} need a tensor of rank >= {step.min_rank()}, "
            f"got shape {list(array.shape)}"
        )
    if step.columns is not None:
        array = _columns(array, step.columns, where)
    if step.window is not None:
        array = array[:, : step.window]
    if step.cast is not None:
        array = cast(array, step.cast, where=where)
    if step.resize is not None:
        array = _resize(array, step.resize, step.resize_mode, where)
    return np.ascontiguousarray(array) if array is not inputs[source] else array


def _steps(step: InputDerivation) -> str:
    return "+".join(k for k in ("columns", "window", "resize") if getattr(step, k) is not None)


def _columns(array: Array, columns: list[int] | str, where: str) -> Array:
    """``array[..., columns]``; ShapeMismatchError for a column beyond the last axis."""
    width = array.shape[-1]
    if isinstance(columns, str):
        start, stop, step = _parse_slice(columns)
        end = width if stop is None else stop
        if start >= width or end > width:
            raise ShapeMismatchError(
                f"{where}: columns {columns!r} needs a last axis of at least "
                f"{max(start + 1, end)}, got shape {list(array.shape)}"
            )
        return array[..., start:end:step]
    if max(columns) >= width:
        raise ShapeMismatchError(
            f"{where}: column {max(columns)} is beyond the last axis "
            f"(shape {list(array.shape)}: columns 0..{width - 1})"
        )
    return array[..., columns]


# ---------------------------------------------------------------- casting


def _int_range(dtype: np.dtype[Any]) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


#: Integers an IEEE float holds exactly: |v| <= 2^(mantissa bits + 1).
_EXACT_INT = {"FP16": 2**11, "FP32": 2**24, "FP64": 2**53}


def cast(array: Array, datatype: str, *, where: str = "tensor") -> Array:
    """``array`` as ``datatype``, refusing any cast that would change a value silently.

    Rules (source kind -> target):

    - same datatype: unchanged (no copy).
    - BYTES either way: DatatypeMismatchError (text is not a number).
    - -> BOOL: every value must be 0 or 1 (``False``/``True``).
    - BOOL -> any numeric: 0/1.
    - int -> int: every value within the target's range.
    - int -> float: every value exactly representable (|v| <= 2^11 FP16,
      2^24 FP32, 2^53 FP64: token ids and counts stay themselves).
    - float -> int: every value finite, integral and within the target's range.
    - float -> float: widening always; narrowing rounds to nearest (what
      FP16 means) but a finite value beyond the target's largest (65504 for
      FP16) is refused, not turned into infinity. NaN and ±inf stay themselves.

    Raises:
        TensorValueError: naming the first element that does not survive.
        DatatypeMismatchError: a BYTES tensor, or a cast to BYTES.
    """
    target = DATATYPES.get(datatype)
    if target is None or datatype == "BYTES":
        raise DatatypeMismatchError(f"{where}: cannot cast to {datatype!r}")
    source = datatype_of(array)
    if source == datatype:
        return array
    if source == "BYTES":
        raise DatatypeMismatchError(f"{where}: a BYTES tensor cannot be cast to {datatype}")
    if array.size:
        _check_castable(array, source, datatype, target, where)
    return array.astype(target)


def _check_castable(
    array: Array, source: str, datatype: str, target: np.dtype[Any], where: str
) -> None:
    kind = array.dtype.kind
    if target.kind == "b":
        bad = (array != 0) & (array != 1)
        _refuse(array, bad, where, f"{datatype} takes 0 or 1")
    elif kind in "iu" and target.kind in "iu":
        low, high = _int_range(target)
        _refuse_outside(array, low, high, where, f"outside {datatype} [{low}, {high}]")
    elif kind in "iu" and target.kind == "f":
        limit = _EXACT_INT[datatype]
        why = f"not exactly representable in {datatype} (|v| <= {limit})"
        _refuse_outside(array, -limit, limit, where, why)
    elif kind == "f" and target.kind in "iu":
        low, high = _int_range(target)
        # The bounds as floats are exact (powers of two, or 0) in FP32 and FP64; FP16
        # cannot hold 2^31, so it is compared in FP64.
        wide = array.astype(np.float64) if array.dtype.itemsize < 4 else array
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(wide) | (wide != np.trunc(wide))
            bad |= (wide < float(low)) | (wide >= float(high) + 1.0)
        _refuse(array, bad, where, f"not an integer within {datatype} [{low}, {high}]")
    elif kind == "f" and target.kind == "f" and target.itemsize < array.dtype.itemsize:
        largest = float(np.finfo(target).max)
        with np.errstate(invalid="ignore"):
            bad = np.isfinite(array) & (np.abs(array) > largest)
        _refuse(array, bad, where, f"beyond {datatype}'s largest finite value {largest:g}")


def _refuse_outside(array: Array, low: int, high: int, where: str, why: str) -> None:
    """TensorValueError unless every integer of ``array`` is in ``[low, high]``.

    Each bound is compared only when a value passes it, so it lies within the
    array's own dtype then (no out-of-range Python integer meets numpy).
    """
    smallest, largest = int(array.min()), int(array.max())
    if smallest < low:
        _refuse(array, array < low, where, why)
    if largest > high:
        _refuse(array, array > high, where, why)


def _refuse(array: Array, bad: Array, where: str, why: str) -> None:
    if not bad.any():
        return
    flat = array.reshape(-1)
    index = int(np.flatnonzero(np.asarray(bad).reshape(-1))[0])
    raise TensorValueError(
        f"{where}: element {index} ({datatype_of(array)}) is {flat[index].item()!r}: {why}"
    )


# ---------------------------------------------------------------- resizing


def _resize(array: Array, size: tuple[int, int], mode: ResizeMode, where: str) -> Array:
    """The last two axes of ``array`` resized to ``size`` (see the module docstring)."""
    datatype = datatype_of(array)
    if datatype == "BYTES" or (datatype == "BOOL" and mode != "nearest"):
        raise DatatypeMismatchError(
            f"{where}: resize mode {mode!r} cannot take a {datatype} tensor"
            + ("; use mode: nearest" if datatype == "BOOL" else "")
        )
    (h0, w0), (h, w) = array.shape[-2:], size
    if h0 == 0 or w0 == 0:
        raise ShapeMismatchError(
            f"{where}: cannot resize an empty image, shape {list(array.shape)}"
        )
    elements = math.prod(array.shape[:-2]) * h * w
    if elements > max(array.size, MAX_DERIVED_ELEMENTS):
        raise PayloadTooLargeError(
            f"{where}: resizing shape {list(array.shape)} to {[h, w]} makes {elements} "
            f"elements, above the {MAX_DERIVED_ELEMENTS} a derived tensor may have"
        )
    if (h0, w0) == (h, w):
        return array
    if mode == "nearest":
        return array[..., _nearest(h0, h)[:, None], _nearest(w0, w)[None, :]]
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8 and array.size:
        # float64 holds integers exactly up to 2^53 (as cast() to FP64 requires): beyond,
        # the mean would come back rounded, or wrapped past INT64's largest to -2^63.
        limit = _EXACT_INT["FP64"]
        why = f"beyond ±2^53, so a {mode} resize cannot compute it exactly; use mode: nearest"
        _refuse_outside(array, -limit, limit, where, why)
    if mode == "area":
        if h0 % h or w0 % w:
            raise ShapeMismatchError(
                f"{where}: area resize pools by an integer factor, but {h0}x{w0} -> {h}x{w} "
                "is not one (each side must divide evenly); use mode: bilinear"
            )
        out = _area(array, h, w)
    else:
        out = _linear(_linear(array, h0, h, axis=-2), w0, w, axis=-1)
    if array.dtype.kind in "iu":
        out = np.rint(out)
    return np.asarray(out.astype(array.dtype))


#: Block sizes up to which area pooling adds the block's strided views one by one:
#: 10x faster than a float64 ``mean`` over two strided axes for 2x2 (0.56 ms vs
#: 5.9 ms on [32, 3, 64, 64] FP32, measured); larger blocks take the ``mean``.
_AREA_UNROLL = 64


def _area(array: Array, h: int, w: int) -> Array:
    """Mean of each ``H0/h x W0/w`` block of the last two axes, in float64."""
    (h0, w0), lead = array.shape[-2:], array.shape[:-2]
    fh, fw = h0 // h, w0 // w
    blocks = array.reshape(*lead, h, fh, w, fw)
    if fh * fw > _AREA_UNROLL:
        return np.asarray(blocks.mean(axis=(-3, -1), dtype=np.float64))
    out = np.zeros((*lead, h, w), dtype=np.float64)
    for i in range(fh):
        for j in range(fw):
            out += blocks[..., i, :, j]
    return np.asarray(out / (fh * fw))


def _nearest(size_in: int, size_out: int) -> Array:
    """Source indices of PyTorch's ``nearest-exact``: ``floor((i + 0.5) * in / out)``."""
    index = np.floor((np.arange(size_out) + 0.5) * (size_in / size_out)).astype(np.intp)
    return np.asarray(np.minimum(index, size_in - 1))


def _linear(array: Array, size_in: int, size_out: int, *, axis: int) -> Array:
    """Linear interpolation along ``axis``, half-pixel centres, edges clamped (float64).

    Source coordinate ``max((i + 0.5) * in / out - 0.5, 0)``, as PyTorch's
    ``area_pixel_compute_source_index`` with ``align_corners=False``.
    """
    source = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.intp), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    weight = np.clip(source - low, 0.0, 1.0)
    shape = [1] * array.ndim
    shape[axis] = size_out
    weight = weight.reshape(shape)
    a = np.take(array, low, axis=axis).astype(np.float64)
    b = np.take(array, high, axis=axis).astype(np.float64)
    return np.asarray(a + (b - a) * weight)


# ---------------------------------------------------------------- the backend wrapper


class InputAdapter(Backend):
    """A backend that derives a request's inputs for the models in ``models``.

    A request whose ``model`` is in ``models`` reaches ``inner`` with exactly
    that model's derived inputs; everything else about it (version, requested
    outputs, parameters, context, id) is passed unchanged, and so is any request
    for another model. Errors from deriving are raised before ``inner`` is asked.
    """

    def __init__(self, inner: Backend, models: ModelsMap) -> None:
        self.inner = inner
        self.models = models
        self.name = inner.name

    def derived(self, request: InferRequest) -> InferRequest:
        """The request ``inner`` gets: derived for a declared model, else ``request`` itself."""
        if request.model not in self.models:
            return request
        return replace(request, inputs=derive(self.models, request.model, request.inputs))

    def infer(self, request: InferRequest) -> InferResponse:
        return self.inner.infer(self.derived(request))

    async def infer_async(self, request: InferRequest) -> InferResponse:
        return await self.inner.infer_async(self.derived(request))

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------- checking at load

Pair = tuple[str | None, str | None]


def check_against(
    models: ModelsMap,
    repository: ModelRepository,
    *,
    pairs: Iterable[Pair] = (),
    where: str = "deployment",
) -> None:
    """Check every declared model in ``repository`` against its config, before any request.

    For each model of ``models`` the repository holds: its declared inputs
    must be exactly the inputs its config takes, and each derivation must be
    able to give the config's rank, datatype and fixed dimensions. The source
    tensors are known where the model is a cascade's small model: ``pairs``
    lists ``(small_model, large_model)``, and the request's tensors are then
    the large model's inputs (when the large model is in the repository and
    not itself declared); a ``from`` it lacks, a column beyond its last axis,
    an area factor that does not divide, or a datatype it does not have
    without a ``cast`` is caught. Without a known source, what a derivation
    fixes by itself (columns count, window, resize, cast) is checked. Models
    the repository does not hold (served remotely) are the server's to check.

    Raises:
        ConfigError: ``<where>: models.<model>.inputs[.<input>]: <what is wrong>``.
    """
    if not repository.root.is_dir():
        return
    names = set(repository.model_names())
    requests: dict[str, list[dict[str, TensorSpec]]] = {}
    for small, large in pairs:
        if small in models and large in names and large not in models and small != large:
            assert small is not None and large is not None
            requests.setdefault(small, []).append(_full_specs(repository, large, where))
    for model, declared in models.items():
        if model not in names:
            continue
        targets = _full_specs(repository, model, where)
        at = f"{where}: models.{model}.inputs"
        if set(declared.inputs) != set(targets):
            raise ConfigError(
                f"{at}: model {model!r} takes inputs {sorted(targets)}, the declaration "
                f"derives {sorted(declared.inputs)}: declare each input it takes, and only those"
            )
        for name, step in declared.inputs.items():
            for sources in requests.get(model, [{}]):
                source = sources.get(step.source or name) if sources else None
                if sources and source is None:
                    raise ConfigError(
                        f"{at}.{name}: the request has no tensor {step.source or name!r} "
                        f"(the large model's inputs are {sorted(sources)})"
                    )
                problem = _mismatch(step, source, targets[name])
                if problem:
                    raise ConfigError(f"{at}.{name}: {problem}")


def _full_specs(repository: ModelRepository, model: str, where: str) -> dict[str, TensorSpec]:
    """A model's inputs with full shapes (batch axis ``-1`` included when it batches)."""
    try:
        config = repository.config(model)
    except EdgecloudError as exc:
        raise ConfigError(f"{where}: models.{model}: {exc.message}") from exc
    return {
        s.name: s.model_copy(update={"shape": s.full_shape(config.batched)}) for s in config.inputs
    }


def _mismatch(step: InputDerivation, source: TensorSpec | None, target: TensorSpec) -> str:
    """Why ``step`` applied to ``source`` (None: unknown) cannot give ``target``, or ''."""
    want = list(target.shape)
    if len(want) < step.min_rank():
        return f"{_steps(step)} need rank >= {step.min_rank()}; the model takes {_show(want)}"
    if source is not None and len(source.shape) != len(want):
        shape = _show(list(source.shape))
        return f"the request's {source.name!r} has shape {shape}, the model takes {_show(want)}"
    got = list(source.shape) if source is not None else [-1] * len(want)
    problem = _derived_shape(step, got, want)
    if problem:
        return problem
    for axis, (g, w) in enumerate(zip(got, want, strict=True)):
        if -1 not in (g, w) and g != w:
            return f"derives shape {_show(got)}, the model takes {_show(want)} (axis {axis})"
    datatype = step.cast or (source.datatype if source is not None else None)
    if step.cast and source is not None and source.datatype == "BYTES":
        return f"a BYTES tensor cannot be cast to {step.cast}"
    if datatype is not None and datatype != target.datatype:
        hint = "" if step.cast else f"; add cast: {target.datatype}"
        return f"derives datatype {datatype}, the model takes {target.datatype}{hint}"
    if (
        step.resize is not None
        and target.datatype in ("BYTES", "BOOL")
        and step.resize_mode != "nearest"
    ):
        return f"resize mode {step.resize_mode!r} cannot make a {target.datatype} tensor"
    return ""


def _derived_shape(step: InputDerivation, got: list[int], want: list[int]) -> str:
    """Apply ``step`` to the known shape ``got`` in place (-1: unknown); a problem or ''."""
    if step.columns is not None:
        width = got[-1]
        if isinstance(step.columns, str):
            start, stop, every = _parse_slice(step.columns)
            end = stop if stop is not None else width
            if width != -1 and (start >= width or end > width):
                return f"columns {step.columns!r} reach beyond the request's {width} columns"
            got[-1] = -1 if end == -1 else len(range(start, end, every))
        else:
            if width != -1 and max(step.columns) >= width:
                return f"column {max(step.columns)} is beyond the request's {width} columns"
            got[-1] = len(step.columns)
    if step.window is not None:
        if got[1] != -1:
            got[1] = min(got[1], step.window)
        elif want[1] != -1 and want[1] != step.window:
            return (
                f"window {step.window} gives up to {step.window} positions; "
                f"the model takes exactly {want[1]}"
            )
    if step.resize is not None:
        h0, w0 = got[-2:]
        h, w = step.resize
        if step.resize_mode == "area" and -1 not in (h0, w0) and (h0 % h or w0 % w):
            return (
                f"area resize {h0}x{w0} -> {h}x{w} is not by an integer factor; use mode: bilinear"
            )
        got[-2:] = [h, w]
    return ""


def _show(shape: list[int]) -> str:
    return "[" + ", ".join("?" if d == -1 else str(d) for d in shape) + "]"
