"""Requests, responses and tensors: Open Inference Protocol v2 datatypes <-> numpy.

An :class:`InferRequest` is a set of named numpy arrays plus the context the
router decides on (sensitivity, deadline, idempotency key). Every
:class:`InferResponse` carries a :class:`Trace` saying who served it and where
the time went.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import (
    DatatypeMismatchError,
    InvalidRequestError,
    MissingInputError,
    ShapeMismatchError,
    TensorValueError,
    UnknownInputError,
    UnsupportedDatatypeError,
)

if TYPE_CHECKING:
    from typing import TypeAlias

    from ._config_models import TensorSpec
    from ._edge_config import EdgeTensorSpec

    Spec: TypeAlias = TensorSpec | EdgeTensorSpec
    """A declared tensor as the CLI/server (pydantic) or the edge path (dataclass) read it."""

__all__ = [
    "DATATYPES",
    "InferRequest",
    "InferResponse",
    "InputValidator",
    "RequestContext",
    "Sensitivity",
    "Span",
    "TensorSpec",
    "Trace",
    "datatype_of",
    "numpy_dtype",
]


def __getattr__(name: str) -> Any:
    """:class:`TensorSpec` (pydantic), imported on first use (PEP 562): see
    :mod:`edgecloud._config_models`, which keeps pydantic off the edge path."""
    if name == "TensorSpec":
        from ._config_models import TensorSpec

        return TensorSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


Parameter = str | int | float | bool

#: Open Inference Protocol datatype name -> numpy dtype. BYTES is an object array
#: of ``bytes``; BF16 has no numpy dtype and is not supported.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_NAME_OF_DTYPE: dict[np.dtype[Any], str] = {dt: name for name, dt in DATATYPES.items()}

#: ONNX tensor type strings (as onnxruntime reports them) -> protocol datatype.
ONNX_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype for an Open Inference Protocol datatype name."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise UnsupportedDatatypeError(
            f"unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}"
        ) from None


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The Open Inference Protocol datatype name of a numpy array.

    Unicode string arrays map to BYTES (they are UTF-8 encoded on the wire).
    Anything but a numpy array is an InvalidRequestError (never coerced).
    """
    if not isinstance(array, np.ndarray):
        raise InvalidRequestError(
            f"tensors must be numpy arrays, got {type(array).__name__}; wrap it in np.asarray "
            "with the dtype you mean"
        )
    dtype = array.dtype
    if dtype.kind in ("U", "S"):
        return "BYTES"
    try:
        return _NAME_OF_DTYPE[dtype.newbyteorder("=")]
    except KeyError:
        raise UnsupportedDatatypeError(
            f"numpy dtype {dtype} has no Open Inference Protocol datatype; "
            f"convert to one of {', '.join(DATATYPES)}"
        ) from None


class TensorDomain:
    """What a declared tensor answers from its fields, shared by the pydantic
    :class:`TensorSpec` and the edge path's :class:`edgecloud._edge_config.EdgeTensorSpec`."""

    __slots__ = ()

    name: str
    datatype: str
    shape: tuple[int, ...]
    min_value: int | float | None
    max_value: int | float | None
    allowed_values: tuple[int | float, ...] | None

    @property
    def has_domain(self) -> bool:
        """Whether any value bound is declared."""
        return (
            self.min_value is not None
            or self.max_value is not None
            or self.allowed_values is not None
        )

    def describe_domain(self) -> str:
        """The declared values in words, e.g. ``[0, 30521]`` or ``one of {8000, 16000}``."""
        parts = []
        if self.min_value is not None or self.max_value is not None:
            low = "-inf" if self.min_value is None else _show_number(self.min_value)
            high = "+inf" if self.max_value is None else _show_number(self.max_value)
            parts.append(f"in [{low}, {high}]")
        if self.allowed_values is not None:
            shown = ", ".join(_show_number(v) for v in self.allowed_values)
            parts.append("one of {" + shown + "}")
        return " and ".join(parts)

    def full_shape(self, batched: bool) -> tuple[int, ...]:
        """Shape including the batch dimension (``-1``) when batched."""
        return (-1, *self.shape) if batched else self.shape


def _show_number(value: int | float) -> str:
    """A bound as written: ``30521``, ``0`` for ``0.0``, ``0.25``; exact for large ints."""
    if isinstance(value, int):
        return str(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


class Sensitivity(enum.StrEnum):
    """How sensitive the request's data is; privacy rules key on this."""

    PUBLIC = "public"
    PERSONAL = "personal"
    RESTRICTED = "restricted"


_MAY_LEAVE = frozenset({"public", "personal"})
"""Sensitivity values whose data (or features of it) may leave the device at all."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the router needs to know about a request beyond its tensors."""

    sensitivity: Sensitivity = Sensitivity.PUBLIC
    """Data class; restricted data never leaves the device."""
    deadline: float | None = None
    """Absolute ``time.monotonic()`` by which an answer is needed, or None."""
    idempotency_key: str | None = None
    """Key that lets a server answer a retried request without recomputing it."""
    local_only: bool = False
    """Set by a privacy Guard: no tensor of this request may leave the device.
    Restricted data is local-only whatever this says."""
    features_only: bool = False
    """Set by a Guard rule ``features``: the raw inputs stay on the device, but
    features a :class:`~edgecloud.split.SplitBackend` computes from them (the
    activation at a cut) may leave."""
    features: frozenset[str] = frozenset()
    """Set by a :class:`~edgecloud.split.SplitBackend` on the request it sends a
    tail: the names of its tensors computed on the device (activations, as
    encoded). Under ``features_only`` only these may leave; any other tensor of
    the request is raw data (see ``edgecloud.routing.privacy.withheld``)."""

    def __post_init__(self) -> None:
        """Validate every field; a valid sensitivity string becomes the enum.

        ``Sensitivity("restricted")`` is exact (the enum's own values), not a
        lossy coercion; anything else — another spelling, a non-string flag, a
        string where a set of names belongs — raises
        :class:`~edgecloud.errors.InvalidRequestError` naming what is allowed,
        so a malformed context can never pass a privacy check by accident.
        """
        sensitivity = self.sensitivity
        if not isinstance(sensitivity, Sensitivity):
            if isinstance(sensitivity, str) and sensitivity in Sensitivity._value2member_map_:
                object.__setattr__(self, "sensitivity", Sensitivity(sensitivity))
            else:
                options = ", ".join(s.value for s in Sensitivity)
                raise InvalidRequestError(
                    f"RequestContext.sensitivity is {sensitivity!r}; use one of {options} "
                    "(or edgecloud.Sensitivity)"
                )
        for flag in ("local_only", "features_only"):
            if not isinstance(getattr(self, flag), bool):
                raise InvalidRequestError(
                    f"RequestContext.{flag} is {getattr(self, flag)!r}; use True or False"
                )
        deadline = self.deadline
        if deadline is not None and (
            isinstance(deadline, bool) or not isinstance(deadline, int | float)
        ):
            raise InvalidRequestError(
                f"RequestContext.deadline is {deadline!r}; use a time.monotonic() value or None"
            )
        key = self.idempotency_key
        if key is not None and (not isinstance(key, str) or not key):
            raise InvalidRequestError(  # "" is not "no key": the wire refuses it too
                f"RequestContext.idempotency_key is {key!r:.80}; use a non-empty string or None"
            )
        features = self.features
        if not isinstance(features, frozenset):
            if isinstance(features, str | bytes) or not isinstance(features, set | list | tuple):
                raise InvalidRequestError(
                    f"RequestContext.features is {features!r:.80}; use a set of tensor names"
                )
            object.__setattr__(self, "features", frozenset(features))
        if not all(isinstance(name, str) for name in self.features):
            raise InvalidRequestError("RequestContext.features must hold tensor names (strings)")

    @property
    def may_leave_device(self) -> bool:
        """Whether these tensors, as they are, may be sent to a remote."""
        return self.features_may_leave and not self.features_only

    @property
    def features_may_leave(self) -> bool:
        """Whether features computed from these tensors on the device may be sent.

        Compared by value against the levels that may leave, so anything else
        (restricted, or a value that is no level at all) stays: it fails closed.
        """
        return not self.local_only and self.sensitivity in _MAY_LEAVE

    def merged_rules(self, other: RequestContext | None) -> RequestContext:
        """This context with ``other``'s privacy restrictions added (the stricter of both).

        The higher sensitivity, either ``local_only``, either ``features_only``;
        ``features`` is cleared (it names tensors of one tail request, not of
        the request this context is merged into). Used to keep a Guard's
        decision with a request that is deferred after the Guard refused it.
        """
        if other is None:
            return self
        order = list(Sensitivity)
        level = max(self.sensitivity, other.sensitivity, key=order.index)
        return RequestContext(
            sensitivity=level,
            deadline=self.deadline,
            idempotency_key=self.idempotency_key,
            local_only=self.local_only or other.local_only,
            features_only=self.features_only or other.features_only,
        )

    @classmethod
    def with_timeout(cls, seconds: float, **kwargs: Any) -> RequestContext:
        """A context whose deadline is ``seconds`` from now."""
        return cls(deadline=time.monotonic() + seconds, **kwargs)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()


DEFAULT_CONTEXT = RequestContext()


@dataclass(slots=True)
class InferRequest:
    """Named input tensors for one model, plus request context."""

    model: str
    inputs: Mapping[str, np.ndarray[Any, Any]]
    version: str | None = None
    """Model version; None means the latest ready one."""
    outputs: Sequence[str] | None = None
    """Names of the outputs wanted; None means all."""
    parameters: dict[str, Parameter] = field(default_factory=dict)
    context: RequestContext = DEFAULT_CONTEXT
    id: str = ""
    """Caller's request id, echoed in the response; empty when not set."""

    def with_id(self) -> InferRequest:
        """This request, given a fresh random id if it has none."""
        if not self.id:
            import uuid  # here: off the edge's import path (a request given no id)

            self.id = uuid.uuid4().hex
        return self

    def nbytes(self) -> int:
        """Bytes of tensor data in the request."""
        return sum(int(a.nbytes) for a in self.inputs.values())


@dataclass(slots=True)
class Span:
    """One step of serving a request: a computation, a transfer, or a decision."""

    backend: str
    """Which backend took the step, e.g. ``local:digits-small/1``."""
    kind: str
    """``compute``, ``network``, ``queue`` or ``decision``."""
    seconds: float = 0.0
    reason: str = ""
    """Why (for decisions) or what (for work), in words."""
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass(slots=True)
class Trace:
    """The response's account of itself: who served it, why, and where time went."""

    served_by: str
    spans: list[Span] = field(default_factory=list)

    def seconds(self, kind: str) -> float:
        """Total seconds spent in spans of one kind."""
        return sum(s.seconds for s in self.spans if s.kind == kind)

    @property
    def bytes_up(self) -> int:
        return sum(s.bytes_up for s in self.spans)

    @property
    def bytes_down(self) -> int:
        return sum(s.bytes_down for s in self.spans)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as the edge gateway returns it."""
        return {
            "served_by": self.served_by,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "spans": [
                {"backend": s.backend, "kind": s.kind, "ms": round(s.seconds * 1e3, 3),
                 "reason": s.reason, "bytes_up": s.bytes_up, "bytes_down": s.bytes_down}
                for s in self.spans
            ],
        }  # fmt: skip

    def describe(self) -> str:
        """One line per span, for logs and the CLI."""
        lines = [f"served by {self.served_by}"]
        for s in self.spans:
            detail = f" ({s.reason})" if s.reason else ""
            lines.append(f"  {s.kind:<8} {s.backend:<28} {s.seconds * 1e3:8.3f} ms{detail}")
        return "\n".join(lines)


@dataclass(slots=True)
class InferResponse:
    """Named output tensors and the trace of how they were produced."""

    model: str
    version: str
    outputs: dict[str, np.ndarray[Any, Any]]
    trace: Trace
    id: str = ""
    parameters: dict[str, Parameter] = field(default_factory=dict)


class InputValidator:
    """Checks requests against a model's declared inputs, compiled once per model.

    Errors name the input, what was expected and what was received.
    """

    def __init__(self, model: str, specs: Sequence[Spec], max_batch_size: int) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self._specs = {s.name: s for s in specs}
        self._names = frozenset(self._specs)
        self._dtypes = {s.name: numpy_dtype(s.datatype) for s in specs}
        self._shapes = {s.name: s.full_shape(max_batch_size > 0) for s in specs}
        # The hot path: (name, dtype, rank, [(axis, size) of every fixed dimension]).
        # BYTES inputs always take the slow path: their elements are checked one by
        # one; BOOL inputs too: their bytes must be 0 or 1 (one vectorised pass).
        self._plan = [
            (
                name,
                _CHECK_ELEMENTS if self._dtypes[name].kind in "Ob" else self._dtypes[name],
                len(shape),
                [(i, d) for i, d in enumerate(shape) if d != -1],
            )
            for name, shape in self._shapes.items()
        ]
        # Value domains (TensorSpec.min_value/max_value/allowed_values): only the
        # inputs that declare one are scanned, so other models pay nothing.
        self._domains = [(s.name, s) for s in specs if s.has_domain]

    def validate(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> int:
        """Raise on the first problem; return the batch size: the rows of the
        request for a batched model (0 for an empty batch: a legal tensor that
        batching must carry as zero rows, not one), 1 for an unbatched one.

        The common case (everything right) costs a few hundred nanoseconds; any
        mismatch falls through to the slow path that builds the message.
        """
        return self.check(inputs)[0]

    def check(
        self, inputs: Mapping[str, np.ndarray[Any, Any]]
    ) -> tuple[int, Mapping[str, np.ndarray[Any, Any]]]:
        """:meth:`validate`, plus the inputs as a runtime must read them: an
        array in the other byte order of its declared type (``>f4`` for FP32,
        accepted as the wire accepts it) converted to the machine's, values
        unchanged — onnxruntime reads every buffer as native (a big-endian 1.5
        became 6.9e-41). Only that slow path copies; otherwise ``inputs`` itself.
        """
        if inputs.keys() != self._names:
            self._raise_for_names(inputs)
        batched = self.max_batch_size > 0
        batch = -1
        converted: dict[str, np.ndarray[Any, Any]] | None = None
        for name, dtype, rank, fixed in self._plan:
            array = inputs[name]
            if type(array) is not np.ndarray or array.dtype != dtype:
                self._check_array(name, array)
                if not array.dtype.isnative:
                    converted = dict(inputs) if converted is None else converted
                    converted[name] = array = array.astype(array.dtype.newbyteorder("="))
            shape = array.shape
            if len(shape) != rank:
                self._check_shape(name, shape)
            for axis, size in fixed:
                if shape[axis] != size:
                    self._check_shape(name, shape)
            if array.size == 0:
                self._check_empty(name, shape)
            if batched:
                if batch != shape[0] and batch != -1:
                    raise ShapeMismatchError(
                        f"inputs of model {self.model!r} disagree on the batch size: input "
                        f"{name!r} has {shape[0]}, an earlier input has {batch}"
                    )
                batch = shape[0]
        for name, spec in self._domains:
            _check_domain(self.model, spec, inputs[name])
        return (batch if batch >= 0 else 1), (inputs if converted is None else converted)

    def _check_empty(self, name: str, shape: tuple[int, ...]) -> None:
        """Zero-size tensors: only an empty batch (0 rows of a batched model) is legal.

        onnxruntime kernels are not safe on zero-size dimensions: silero-vad
        with ``input`` [0, 512] and ``state`` [2, 0, 128] aborts the whole
        process (SIGABRT, "terminate called without an active exception").
        So a zero anywhere else — any dimension of an unbatched model's input,
        a non-batch dimension of a batched one — is refused before the runtime
        (ShapeMismatchError, 400), and an empty batch never reaches it
        (``LoadedModel.run`` answers it without a run).
        """
        batched = self.max_batch_size > 0
        for axis, size in enumerate(shape):
            if size == 0 and not (batched and axis == 0):
                where = (
                    "the batch dimension may be 0 (an empty batch), no other"
                    if batched
                    else "the model takes no batch dimension"
                )
                raise ShapeMismatchError(
                    f"input {name!r} of model {self.model!r} has size 0 in dimension {axis} "
                    f"(shape {list(shape)}): zero-size dimensions are refused ({where})"
                )

    def _check_array(self, name: str, array: Any) -> None:
        if not isinstance(array, np.ndarray):
            raise InvalidRequestError(
                f"input {name!r} of model {self.model!r} must be a numpy array, "
                f"got {type(array).__name__}"
            )
        self._check_dtype(name, array)

    def _raise_for_names(self, inputs: Mapping[str, Any]) -> None:
        declared = sorted(self._specs)
        for name in inputs:
            if name not in self._specs:
                raise UnknownInputError(
                    f"model {self.model!r} has no input {name!r}; its inputs are {declared}"
                )
        missing = sorted(set(self._specs) - set(inputs))
        raise MissingInputError(
            f"model {self.model!r} needs input(s) {missing}, which the request lacks"
        )

    def _check_dtype(self, name: str, array: np.ndarray[Any, Any]) -> None:
        expected = self._dtypes[name]
        if array.dtype == expected:
            if expected.kind == "b":
                _check_bool_bytes(name, array)
            if expected.kind != "O":
                return
        if array.dtype.kind not in "OUS" and array.dtype.newbyteorder("=") == expected:
            return  # the other byte order of the right type: LocalBackend converts it
        if expected.kind == "O" and array.dtype.kind in ("U", "S"):
            return
        if expected.kind == "O" and array.dtype.kind == "O":
            _check_bytes_elements(name, array)
            return
        got = _describe_dtype(array)
        raise DatatypeMismatchError(
            f"input {name!r} of model {self.model!r} expects datatype "
            f"{self._specs[name].datatype}, got {got}"
        )

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        expected = self._shapes[name]
        if len(shape) != len(expected) or any(
            want not in (-1, got) for want, got in zip(expected, shape, strict=True)
        ):
            raise ShapeMismatchError(
                f"input {name!r} of model {self.model!r} expects shape "
                f"{_show_shape(expected)}, got {list(shape)}"
            )


class _AlwaysDifferent:
    """Compares unequal to every dtype, sending an input down the checked path."""

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


_CHECK_ELEMENTS: Any = _AlwaysDifferent()


def _check_bytes_elements(name: str, array: np.ndarray[Any, Any]) -> None:
    """Every element of a BYTES object array is ``bytes`` or ``str`` — never ``repr``'d."""
    flat = array.reshape(-1).tolist()
    if set(map(type, flat)) <= {bytes, str}:
        return
    for index, item in enumerate(flat):
        if not isinstance(item, bytes | str):
            raise TensorValueError(
                f"tensor {name!r}: element {index} of BYTES data is {repr(item)[:80]}: "
                "BYTES elements must be bytes or strings"
            )


_BOOL_BYTES = bytes([0, 1])


def _check_bool_bytes(name: str, array: np.ndarray[Any, Any]) -> None:
    """A BOOL tensor's bytes are 0 or 1, as on the wire (``np.frombuffer(b"\\x02", bool)``
    holds a 2 that onnxruntime would pass through unchanged).

    Small arrays: ``bytes.translate`` deleting 0 and 1 (~1 us for 784 elements;
    numpy's ``max`` has ~3 us of fixed cost); large ones: ``max`` (10 us per 10^6
    elements, where ``translate`` takes 1.7 ms).
    """
    octets = array.view(np.uint8)
    if octets.size <= 4096:
        if not octets.tobytes().translate(None, _BOOL_BYTES):
            return
    elif not octets.size or octets.max() <= 1:
        return
    flat = octets.reshape(-1)
    index = int(np.flatnonzero(flat > 1)[0])
    raise TensorValueError(
        f"tensor {name!r}: element {index} of BOOL data is {int(flat[index])}: "
        "a BOOL is the byte 0 or 1"
    )


def _check_domain(model: str, spec: Spec, array: np.ndarray[Any, Any]) -> None:
    """TensorValueError unless every element is within ``spec``'s declared values.

    The common case is two vectorised reductions (``min``, ``max``) and, with
    ``allowed_values``, one ``np.isin``; only a failure scans for the first
    offending element to name it. NaN fails every bound (comparisons with NaN
    are false).
    """
    if array.size == 0:
        return
    low, high, allowed = spec.min_value, spec.max_value, spec.allowed_values
    ok = True
    if low is not None or high is not None:
        smallest, largest = array.min(), array.max()
        ok = bool((low is None or smallest >= low) and (high is None or largest <= high))
    if ok and allowed is not None:
        ok = bool(_allowed_mask(array, allowed).all())
    if ok:
        return
    flat = array.reshape(-1)
    good = np.ones(flat.shape, dtype=bool)
    if low is not None:
        good &= flat >= low
    if high is not None:
        good &= flat <= high
    if allowed is not None:
        good &= _allowed_mask(flat, allowed)
    index = int(np.flatnonzero(~good)[0])
    raise TensorValueError(
        f"tensor {spec.name!r} of model {model!r}: element {index} ({spec.datatype}) is "
        f"{flat[index].item()!r}, outside the values the model accepts: "
        f"{spec.describe_domain()}"
    )


def _allowed_mask(
    array: np.ndarray[Any, Any], allowed: Sequence[int | float]
) -> np.ndarray[Any, Any]:
    """Which elements are one of ``allowed``: one comparison per value for a
    small set (``np.isin`` costs ~50 µs even on a scalar), ``np.isin`` otherwise."""
    if len(allowed) > 16:
        return np.asarray(np.isin(array, allowed))
    mask = array == allowed[0]
    for value in allowed[1:]:
        mask = mask | (array == value)
    return np.asarray(mask)


def _describe_dtype(array: np.ndarray[Any, Any]) -> str:
    try:
        return datatype_of(array)
    except UnsupportedDatatypeError:
        return f"numpy dtype {array.dtype}"


def _show_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join("?" if d == -1 else str(d) for d in shape) + "] (? = any size)"
