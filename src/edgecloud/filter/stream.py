"""``Filter(trigger, inner)``: screen a stream on the device, forward only its events."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends.base import Backend
from ..errors import ConfigError, InvalidRequestError
from ..routing.fallback import fallback_reason
from ..routing.keys import new_key
from ..routing.outbox import Outbox
from ..routing.privacy import deferrable
from ..tensors import InferRequest, RequestContext, Sensitivity
from .segment import Event, SegmentConfig, Segmenter
from .triggers import Trigger

__all__ = ["Filter", "FilterStats"]


@dataclass
class FilterStats:
    chunks: int = 0
    triggered_chunks: int = 0
    events: int = 0
    queued_events: int = 0
    bytes_total: int = 0
    bytes_sent: int = 0
    unreadable_chunks: int = 0
    """Chunks holding NaN or infinity (a sensor dropout): triggered, so sent."""

    @property
    def bytes_suppressed(self) -> int:
        return self.bytes_total - self.bytes_sent

    @property
    def bytes_saved(self) -> float:
        """Share of the stream's bytes that never left the device."""
        return self.bytes_suppressed / self.bytes_total if self.bytes_total else 0.0


@dataclass
class Filter:
    """Feed chunks; the trigger decides per chunk; events go to ``inner``.

    ``inner`` is a backend (an event becomes ``InferRequest(model, {input_name:
    data[None]})``, usually a :class:`RemoteBackend` or a deployment), a callable
    taking the :class:`Event`, or None to only collect events. When the backend is
    unreachable the event is put in ``outbox`` (and sent later by
    ``outbox.drain``); without an outbox the error is raised — an event is never
    dropped silently. Each event carries a random idempotency key of its own
    (:func:`~edgecloud.routing.keys.new_key`), the same for its live attempt and
    its queued re-send, and unique across filters, processes and devices.
    """

    trigger: Trigger
    inner: Backend | Callable[[Event], Any] | None = None
    model: str = "events"
    input_name: str = "input"
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    outbox: Outbox | None = None
    stats: FilterStats = field(default_factory=FilterStats)
    scores: list[float] = field(default_factory=list)
    """Every chunk's trigger score, for plots and calibration."""
    sensitivity: Sensitivity = Sensitivity.PUBLIC
    """How sensitive the stream is: every event carries it, so a Guard's rules
    and the transport's privacy check apply to forwarded (and queued) events."""

    def __post_init__(self) -> None:
        if self.sensitivity not in Sensitivity._value2member_map_:
            options = ", ".join(level.value for level in Sensitivity)
            raise ConfigError(f"Filter sensitivity {self.sensitivity!r}: use one of {options}")
        self.sensitivity = Sensitivity(self.sensitivity)
        if not math.isfinite(self.trigger.threshold):
            raise ConfigError(
                f"the trigger's threshold must be finite, got {self.trigger.threshold}"
            )
        self._segmenter = Segmenter(self.segment, self.trigger.chunk_s)
        self._since_last = 0
        self._shape: tuple[int, ...] | None = None

    def feed(self, chunk: np.ndarray) -> list[Event]:
        """One chunk of the stream; returns the events it completed (already forwarded).

        A chunk holding NaN or infinity (a sensor dropout, a broken reading)
        scores ``inf`` without reaching the trigger, whose state (an EWMA, the
        previous frame) a NaN would poison for the rest of the stream: it
        counts as triggered and is sent, never silently dropped
        (``stats.unreadable_chunks``). InvalidRequestError for an empty chunk,
        one that is not numbers (strings, objects), or a change of shape.
        """
        chunk = np.asarray(chunk)
        if chunk.dtype.kind not in "biuf":
            raise InvalidRequestError(
                f"chunks are numbers (integer or float readings), got dtype {chunk.dtype}"
            )
        if chunk.size == 0:
            raise InvalidRequestError("an empty chunk: feed whole chunks of the stream")
        if self._shape is not None and chunk.shape != self._shape:
            raise InvalidRequestError(
                f"every chunk must have shape {list(self._shape)}, got {list(chunk.shape)}"
            )
        self._shape = chunk.shape
        readable = chunk.dtype.kind != "f" or bool(np.isfinite(chunk).all())
        score = self.trigger.score(chunk) if readable else math.inf
        self.stats.unreadable_chunks += int(not readable)
        self.scores.append(score)
        triggered = score >= self.trigger.threshold
        self.stats.chunks += 1
        self.stats.triggered_chunks += int(triggered)
        self.stats.bytes_total += chunk.nbytes
        self._since_last += chunk.nbytes
        return self._forward(self._segmenter.push(chunk, triggered, score))

    def feed_all(self, chunks: Iterable[np.ndarray]) -> list[Event]:
        """A whole stream (then :meth:`close`)."""
        events: list[Event] = []
        for chunk in chunks:
            events.extend(self.feed(chunk))
        events.extend(self.close())
        return events

    def close(self) -> list[Event]:
        """End of stream: the open event, if any, is finished and forwarded."""
        return self._forward(self._segmenter.flush())

    def _forward(self, events: list[Event]) -> list[Event]:
        for event in events:
            event.bytes_sent = int(event.data.nbytes)
            event.bytes_suppressed_before = max(0, self._since_last - event.bytes_sent)
            self._since_last = 0
            self.stats.events += 1
            self.stats.bytes_sent += event.bytes_sent
            self._send(event)
        return events

    def _send(self, event: Event) -> None:
        if self.inner is None:
            return
        if not isinstance(self.inner, Backend):
            event.result = self.inner(event)
            return
        request = InferRequest(
            self.model, {self.input_name: event.data[None, ...]},
            parameters={"event_start_s": event.start_s, "event_end_s": event.end_s},
            context=RequestContext(
                sensitivity=self.sensitivity, idempotency_key=new_key("event")
            ),
        )  # fmt: skip
        try:
            event.result = self.inner.infer(request)
        except Exception as exc:
            if fallback_reason(exc) is None:
                raise
            if self.outbox is None:
                raise ConfigError(
                    f"event {event.index} ({event.start_s:.2f}–{event.end_s:.2f} s) could not "
                    f"be sent ({exc}) and there is no outbox to keep it: give Filter an outbox"
                ) from exc
            # Stored with the rules in force where it failed (a Guard below this filter).
            deferred, why = deferrable(request, exc)
            self.outbox.put(deferred, kind="event", why=why)
            event.queued = True
            self.stats.queued_events += 1
