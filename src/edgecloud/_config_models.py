"""The pydantic models of a model's declaration: :class:`TensorSpec`, :class:`ModelConfig`.

They live apart from :mod:`edgecloud.tensors` and :mod:`edgecloud.repository`
(which re-export them, PEP 562) so that the edge inference path never imports
pydantic: LocalBackend reads ``config.yaml`` through
:mod:`edgecloud._edge_config`, which makes the same checks with plain frozen
dataclasses and falls back to these models for anything it does not settle.
The CLI, the server and every tool that writes or edits a config use these.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from .repository import INT32_MAX, INT64_MAX
from .tensors import DATATYPES, TensorDomain

__all__ = ["DynamicBatching", "ModelConfig", "TensorSpec", "VersionPolicy"]


class TensorSpec(TensorDomain, BaseModel):
    """A declared model input or output.

    When the model batches (``max_batch_size > 0``), ``shape`` excludes the
    batch dimension, as in Triton's model configuration.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    """Tensor name, exactly as in the ONNX graph."""
    datatype: str
    """Open Inference Protocol datatype, e.g. ``FP32``."""
    shape: tuple[int, ...]
    """Dimensions; ``-1`` marks a variable dimension."""

    min_value: int | float | None = None
    """Smallest value an element may take (inclusive), in the tensor's own units
    (a token id, a sample rate in Hz); None: no lower bound. For values the
    runtime cannot check itself: ONNX ``Gather`` wraps a negative index, so
    token id -5 would silently embed token ``vocab_size - 5``. Numeric
    datatypes only; NaN is outside every declared range."""
    max_value: int | float | None = None
    """Largest value an element may take (inclusive); None: no upper bound."""
    allowed_values: tuple[int | float, ...] | None = None
    """The only values an element may take (a set a range cannot say: silero-vad's
    ``sr`` is 8000 or 16000); None: any value within the range."""

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"unknown datatype {value!r}; use one of {', '.join(DATATYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _valid_dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(dim < -1 or dim == 0 for dim in value):
            raise ValueError(f"dimensions must be positive or -1, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _valid_domain(self) -> TensorSpec:
        if not self.has_domain:
            return self
        if self.datatype in ("BYTES", "BOOL"):
            raise ValueError(
                f"tensor {self.name!r}: min_value/max_value/allowed_values apply to numeric "
                f"datatypes, not {self.datatype}"
            )
        bounds = [b for b in (self.min_value, self.max_value) if b is not None]
        values = [*bounds, *(self.allowed_values or ())]
        if any(isinstance(v, float) and not np.isfinite(v) for v in values):
            raise ValueError(f"tensor {self.name!r}: value bounds must be finite numbers")
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            raise ValueError(
                f"tensor {self.name!r}: min_value {bounds[0]} is above max_value {bounds[1]}"
            )
        if self.allowed_values is not None and not self.allowed_values:
            raise ValueError(f"tensor {self.name!r}: allowed_values is empty")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_domain(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Unset value bounds are left out, so configs without them read as before."""
        data: dict[str, Any] = handler(self)
        for key in ("min_value", "max_value", "allowed_values"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class VersionPolicy(BaseModel):
    """Which versions on disk are served (Triton's ``version_policy``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["latest", "all", "specific"] = "latest"
    """``latest``: the newest ``count``; ``all``; ``specific``: those in ``versions``."""
    count: int = Field(default=1, ge=1, le=INT32_MAX)
    """How many of the newest versions ``latest`` serves."""
    versions: list[Annotated[int, Field(ge=1, le=INT64_MAX)]] = Field(default_factory=list)
    """Versions served when ``kind`` is ``specific``."""

    def select(self, on_disk: Iterable[int]) -> list[int]:
        """The served versions among those on disk, ascending."""
        ordered = sorted(on_disk)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.count :]


class DynamicBatching(BaseModel):
    """Server-side merging of concurrent requests into one runtime call."""

    model_config = ConfigDict(extra="forbid")

    max_queue_delay_us: int = Field(default=500, ge=0, le=INT64_MAX)
    """Longest a request waits for companions before its batch runs."""
    preferred_batch_sizes: list[Annotated[int, Field(ge=1, le=INT32_MAX)]] = Field(
        default_factory=list
    )
    """Batch sizes to prefer: once the queue holds at least one of them, a batch of
    the largest that can be formed runs at once (Triton's rule); none may exceed
    ``max_batch_size``."""


class ModelConfig(BaseModel):
    """Per-model configuration, stored as ``<repo>/<model>/config.yaml``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    """Model name; must equal its directory name."""
    platform: Literal["onnxruntime_onnx"] = "onnxruntime_onnx"
    """Runtime that serves the model."""
    max_batch_size: int = Field(default=0, ge=0, le=INT32_MAX)
    """0: the model does not batch and shapes are full; >0: the largest batch
    one runtime call takes, and shapes exclude the leading batch dimension.

    >0 also promises that rows are independent: the server's dynamic batcher
    merges concurrent requests into one call and splits the outputs back by
    rows, so each row's output may depend only on that row (as in Triton). A
    model that normalises over the batch, pools across it or otherwise mixes
    rows (``y = x - mean(x, axis=0)``) answers differently when requests are
    merged: give it ``max_batch_size: 0``, or serve with ``dynamic_batching`` off."""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] | None = None
    """Class names for classifier outputs, index-aligned."""
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    dynamic_batching: DynamicBatching | None = None
    """Server-side dynamic batching; None disables it."""
    description: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Measured quality of the model, e.g. ``test_accuracy``."""
    metadata: dict[str, str] = Field(default_factory=dict)
    """Provenance: data set, seed, recipe, notes."""

    @model_validator(mode="after")
    def _unique_names(self) -> ModelConfig:
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate {kind} names in {names}")
            for spec in specs:
                _check_bounds(kind, spec)
        batching = self.dynamic_batching
        if batching is not None and self.max_batch_size > 0:
            beyond = [s for s in batching.preferred_batch_sizes if s > self.max_batch_size]
            if beyond:  # Triton refuses such a config too
                raise ValueError(
                    f"dynamic_batching.preferred_batch_sizes {beyond} exceed max_batch_size "
                    f"{self.max_batch_size}: a batch never holds more rows, so they could "
                    "never be formed"
                )
        return self

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0


def _check_bounds(kind: str, spec: TensorSpec) -> None:
    """Every integer of a tensor's declaration within what Triton's config and JSON carry:
    dimensions up to :data:`INT64_MAX`, integer value bounds within int64/uint64."""
    if any(dim > INT64_MAX for dim in spec.shape):
        raise ValueError(
            f"{kind} {spec.name!r}: dimension in {list(spec.shape)} exceeds {INT64_MAX} (int64)"
        )
    values = [spec.min_value, spec.max_value, *(spec.allowed_values or ())]
    for value in values:
        if isinstance(value, int) and not -(2**63) <= value <= 2**64 - 1:
            raise ValueError(f"{kind} {spec.name!r}: value bound {value} exceeds 64 bits")
