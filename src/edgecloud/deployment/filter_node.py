"""The ``filter`` node: a stream screened on the device, only its events forwarded.

::

    outbox: {path: outbox.db}                 # events wait here while the link is down
    root:
      filter:
        trigger: {kind: anomaly, fit: normal.npy, threshold: 4.0}
        inner: cloud                          # where events go (any node)
        model: anomaly-classifier             # the model events are sent to

Each request to the node is ONE chunk of one stream (its only input, or the
input named ``input``), in order (behind ``edgecloud edge`` the request names
``model``, the model its events go to): the trigger scores it, the segmenter
(:class:`~edgecloud.filter.SegmentConfig`: pre/post roll, merge gap, minimum
duration) turns triggered chunks into events, and a completed event is sent
to ``inner`` as ``InferRequest(model, {event_input: event[None]})`` — or put in
the deployment's outbox when ``inner`` cannot be reached (an outbox is
required: an event is never dropped). The answer to the chunk says what
happened, each output shaped [1]:

* ``triggered`` BOOL — the chunk's score reached the trigger's threshold;
* ``score`` FP32 — the trigger's score of the chunk;
* ``events`` INT32 — events this chunk completed (sent or queued);
* ``queued`` INT32 — of those, how many went to the outbox.

Events carry the strictest privacy context of the chunks seen so far (the
highest sensitivity, a Guard's ``local_only`` above the node), so no event
leaves where one of its chunks could not. Closing the deployment ends the
stream: an open event is finished and forwarded (or queued).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Annotated, Literal, Self, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..backends.base import Backend
from ..errors import EdgecloudError, InvalidRequestError
from ..tensors import InferRequest, InferResponse, RequestContext, Span, Trace
from . import kinds as _core_kinds  # noqa: F401  (registered first: the schema's order)
from .fields import FilePath, Name
from .nodes import AnyNode, BuildContext, Node, node_kind

if TYPE_CHECKING:
    from ..filter import Filter, Trigger

__all__ = [
    "AnomalyTriggerSpec",
    "FilterBackend",
    "FilterNode",
    "FrameDiffTriggerSpec",
    "SegmentSpec",
    "TriggerSpec",
    "VadTriggerSpec",
]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class VadTriggerSpec(_Strict):
    """Speech probability per 32 ms chunk (512 float32 samples at 16 kHz) from Silero VAD."""

    kind: Literal["vad"]
    model: Name = "vad"
    """The VAD model in the deployment's repository."""
    threshold: float = Field(default=0.5, ge=0, le=1)

    def make(self, ctx: BuildContext, at: str) -> Trigger:
        from ..filter import VadTrigger

        local = ctx.local(f"{at}.model", threads=1, model=self.model)
        return VadTrigger(local, model=self.model, threshold=self.threshold)


class AnomalyTriggerSpec(_Strict):
    """EWMA of the worst channel's RMS z-score; chunks are [readings, channels]."""

    kind: Literal["anomaly"]
    threshold: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.5, gt=0, le=1)
    """EWMA weight of the newest chunk."""
    chunk_s: float = Field(default=1.0, gt=0)
    """Seconds per chunk (the segmenter's time unit)."""
    fit: FilePath | None = None
    """``.npy`` of normal readings [N >= 2, channels] to learn each channel's statistics."""
    mean: list[float] | None = Field(default=None, min_length=1)
    """Per-channel mean of normal readings (instead of ``fit``)."""
    std: list[float] | None = Field(default=None, min_length=1)
    """Per-channel standard deviation (> 0) of normal readings (with ``mean``)."""

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        stats = self.mean is not None or self.std is not None
        if (self.fit is None) == (not stats):
            raise ValueError("give either fit (a .npy of normal readings) or mean and std")
        if stats:
            if self.mean is None or self.std is None or len(self.mean) != len(self.std):
                raise ValueError("mean and std need one value per channel each")
            if min(self.std) <= 0:
                raise ValueError("std must be > 0 for every channel")
        return self

    def make(self, ctx: BuildContext, at: str) -> Trigger:
        from ..filter import AnomalyTrigger

        trigger = AnomalyTrigger(threshold=self.threshold, alpha=self.alpha, chunk_s=self.chunk_s)
        if self.fit is None:
            trigger.mean, trigger.std = np.array(self.mean), np.array(self.std)
            return trigger
        from ..samples import read_npy

        path = ctx.path(self.fit)
        try:
            normal = read_npy(path, "fit file")  # header checked before numpy allocates
        except EdgecloudError as exc:
            raise ctx.error(f"{at}.fit", exc.message) from exc
        try:
            return trigger.fit(normal)
        except (OSError, ValueError) as exc:
            raise ctx.error(f"{at}.fit", f"cannot read {path} as .npy ({exc})") from exc
        except EdgecloudError as exc:
            raise ctx.error(f"{at}.fit", f"{path}: {exc.message}") from exc


class FrameDiffTriggerSpec(_Strict):
    """Motion: mean absolute difference to the previous frame (in [0, 1] or uint8)."""

    kind: Literal["frame-diff"]
    threshold: float = Field(default=0.02, ge=0)
    chunk_s: float = Field(default=0.1, gt=0)
    """Seconds per frame."""

    def make(self, ctx: BuildContext, at: str) -> Trigger:
        from ..filter import FrameDiffTrigger

        return FrameDiffTrigger(threshold=self.threshold, chunk_s=self.chunk_s)


TriggerSpec = Annotated[
    Union[VadTriggerSpec, AnomalyTriggerSpec, FrameDiffTriggerSpec],  # noqa: UP007
    Field(discriminator="kind"),
]


class SegmentSpec(_Strict):
    """How triggered chunks become events (:class:`~edgecloud.filter.SegmentConfig`)."""

    pre_roll_s: float = Field(default=0.3, ge=0)
    post_roll_s: float = Field(default=0.3, ge=0)
    min_duration_s: float = Field(default=0.1, ge=0)
    merge_gap_s: float = Field(default=0.5, ge=0)


@node_kind("filter")
class FilterNode(Node):
    """Screen a stream on the device (one chunk per request); forward only its events."""

    trigger: TriggerSpec
    inner: AnyNode
    """Where events go."""
    model: Name | None = None
    """The model events are sent to (default: the chunks' request model)."""
    input: Name | None = None
    """The chunk's input name (default: the request's only input)."""
    event_input: Name | None = None
    """The input name of a forwarded event (default: the chunk's)."""
    segment: SegmentSpec = Field(default_factory=SegmentSpec)

    def build(self, ctx: BuildContext, at: str) -> Backend:
        from ..filter import Filter, SegmentConfig

        if ctx.outbox is None:
            raise ctx.error(at, "declare an outbox: events wait there while the link is down")
        trigger = self.trigger.make(ctx, f"{at}.trigger")
        rules = _Rules(ctx.node(self.inner, f"{at}.inner"))
        stream = Filter(
            trigger,
            rules,
            segment=SegmentConfig(**self.segment.model_dump()),
            outbox=ctx.outbox,
        )
        return FilterBackend(stream, rules, input=self.input, model=self.model,
                             event_input=self.event_input)  # fmt: skip

    def entry_models(self) -> frozenset[str] | None:
        """Chunks are asked by the model their events go to (``edgecloud edge`` serves
        that name); without ``model``, whatever its ``inner`` serves."""
        return frozenset({self.model}) if self.model else self.inner.entry_models()


class _Rules(Backend):
    """Sends an event with the strictest privacy context of the chunks it was cut from."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.context = RequestContext()

    def infer(self, request: InferRequest) -> InferResponse:
        context = request.context.merged_rules(self.context)
        try:
            return self.inner.infer(InferRequest(
                request.model, request.inputs, version=request.version,
                parameters=request.parameters, context=context,
            ))  # fmt: skip
        except EdgecloudError as exc:
            exc.context = context.merged_rules(exc.context)  # kept with a queued event
            raise

    def close(self) -> None:
        self.inner.close()


class FilterBackend(Backend):
    """One stream's :class:`~edgecloud.filter.Filter` as a backend: a request is a chunk.

    Chunks are fed in arrival order under a lock (the trigger and segmenter are
    stateful); see the module docstring for the outputs.
    """

    name = "filter"

    def __init__(
        self, stream: Filter, rules: _Rules, *, input: str | None = None,
        model: str | None = None, event_input: str | None = None,
    ) -> None:  # fmt: skip
        self.stream = stream
        self._rules = rules
        self._input = input
        self._model = model
        self._event_input = event_input
        self._lock = threading.Lock()

    def _chunk(self, request: InferRequest) -> tuple[str, np.ndarray]:
        names = list(request.inputs)
        if self._input is not None:
            if self._input not in request.inputs:
                raise InvalidRequestError(
                    f"the filter reads its chunk from input {self._input!r}; "
                    f"the request has {names}"
                )
            return self._input, request.inputs[self._input]
        if len(names) != 1:
            raise InvalidRequestError(
                f"a filter request is one chunk in one input; the request has {names} "
                "(name the chunk's input with the node's 'input')"
            )
        return names[0], request.inputs[names[0]]

    def infer(self, request: InferRequest) -> InferResponse:
        name, chunk = self._chunk(request)
        stream = self.stream
        with self._lock:
            self._rules.context = self._rules.context.merged_rules(request.context)
            stream.sensitivity = self._rules.context.sensitivity
            stream.model = self._model or request.model
            stream.input_name = self._event_input or name
            queued_before = stream.stats.queued_events
            events = stream.feed(chunk)
            score = stream.scores[-1]
            queued = stream.stats.queued_events - queued_before
        triggered = score >= stream.trigger.threshold
        spans = [Span(self.name, "decision", 0.0, (
            f"filter:{'triggered' if triggered else 'quiet'} (score {score:.3g}, "
            f"threshold {stream.trigger.threshold:g}); {len(events)} events, {queued} queued"
        ))]  # fmt: skip
        for event in events:
            if isinstance(event.result, InferResponse):
                spans.extend(event.result.trace.spans)
        return InferResponse(
            model=request.model,
            version=request.version or "1",
            outputs={
                "triggered": np.array([triggered], dtype=np.bool_),
                "score": np.array([score], dtype=np.float32),
                "events": np.array([len(events)], dtype=np.int32),
                "queued": np.array([queued], dtype=np.int32),
            },
            trace=Trace(self.name, spans),
            id=request.id,
        )

    def close(self) -> None:
        """End of stream: the open event is forwarded (or queued), then ``inner`` closes."""
        with self._lock:
            try:
                self.stream.close()
            finally:
                self._rules.close()
                closer = getattr(self.stream.trigger, "close", None)
                if closer is not None:
                    closer()
