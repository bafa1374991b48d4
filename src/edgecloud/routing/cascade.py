"""Cascade: the small (local) model answers; rows it is unsure of escalate to the large one."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ..backends.base import Backend, check_rows
from ..errors import ConfigError, EdgecloudError, InvalidRequestError
from ..tensors import InferRequest, InferResponse, Span, Trace
from .confidence import confidence, not_probabilities
from .fallback import fallback_reason
from .keys import derived_key, new_key
from .privacy import deferrable

__all__ = ["Cascade"]

log = logging.getLogger(__name__)

#: Called with the escalation that could not be sent and the answer given instead
#: (e.g. to queue it in the outbox for later).
OnEscalationFailure = Callable[[InferRequest, InferResponse, str], None]


class Cascade(Backend):
    """Answer with ``small``; escalate low-confidence rows to ``large``.

    ``output`` names the probability output both models produce: one
    distribution per row (finite, in [0, 1], rows summing to 1; see
    :func:`~.confidence.not_probabilities`), else the request fails with a
    ConfigError naming ``output`` (never routed on logits). Rows whose
    confidence (``max_prob``, ``margin`` or ``entropy``) is below ``threshold``
    go to ``large`` as one sub-batch; their answers replace the small model's.
    ``audit_rate`` also escalates that share of confident rows (to measure the
    small model in production); ``min_interval_s`` spaces escalations out. If
    the large model cannot be reached, the small model's answer is returned,
    the trace says so, and ``on_escalation_failure`` is told.
    """

    def __init__(
        self,
        small: Backend,
        large: Backend,
        *,
        threshold: float,
        output: str = "probabilities",
        confidence_measure: str = "max_prob",
        small_model: str | None = None,
        large_model: str | None = None,
        audit_rate: float = 0.0,
        min_interval_s: float = 0.0,
        on_escalation_failure: OnEscalationFailure | None = None,
        seed: int | None = None,
        name: str = "cascade",
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"cascade threshold must be in [0, 1], got {threshold}")
        if not 0.0 <= audit_rate <= 1.0:
            raise ConfigError(f"audit_rate must be in [0, 1], got {audit_rate}")
        if min_interval_s < 0:
            raise ConfigError("min_interval_s must be >= 0")
        self.small = small
        self.large = large
        self.threshold = threshold
        self.output = output
        self.measure = confidence_measure
        self._confidence = confidence(confidence_measure)
        self.small_model = small_model
        self.large_model = large_model
        self.audit_rate = audit_rate
        self.min_interval_s = min_interval_s
        self.on_escalation_failure = on_escalation_failure
        self.name = name
        self._rng = random.Random(seed)
        self._last_escalation = -float("inf")
        self._lock = threading.Lock()

    def infer(self, request: InferRequest) -> InferResponse:
        model = self.small_model or request.model
        first = self.small.infer(replace(request, model=model))
        probs = first.outputs.get(self.output)
        if probs is None or probs.ndim != 2:
            raise InvalidRequestError(
                f"cascade needs a [batch, classes] output {self.output!r} from {model!r}"
            )
        if probs.shape[0] == 0:  # an empty batch: the small model's empty answer is the answer
            return _decided(first, self.name, "cascade:empty batch (0 rows), nothing to escalate")
        problem = not_probabilities(probs)
        if problem:
            raise ConfigError(
                f"{self.name}: output {self.output!r} of {model!r} is not class probabilities "
                f"({problem}): its {self.measure} confidence would route on noise; set the "
                f"cascade's output: to a softmax output of the model, or add a Softmax to it"
            )
        scores = self._confidence(probs)
        unsure = scores < self.threshold
        audited = self._audit(~unsure)
        rows = np.flatnonzero(unsure | audited)
        worst = float(scores.min())
        if rows.size == 0:
            why = f"cascade:confident ({self.measure} min {worst:.3f} >= {self.threshold:.3f})"
            return _decided(first, self.name, why)
        if not self._may_escalate():
            return _decided(first, self.name, "cascade:rate-limited (min_interval_s)")
        return self._escalate(request, first, rows, int(audited.sum()), worst)

    def _audit(self, confident: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        if self.audit_rate <= 0:
            return np.zeros_like(confident)
        draws = np.array([self._rng.random() < self.audit_rate for _ in confident])
        return np.asarray(confident & draws)

    def _may_escalate(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._last_escalation < self.min_interval_s:
                return False
            self._last_escalation = now
            return True

    def _escalate(
        self,
        request: InferRequest,
        first: InferResponse,
        rows: np.ndarray[Any, Any],
        audited: int,
        worst: float,
    ) -> InferResponse:
        subset = {k: np.ascontiguousarray(v[rows]) for k, v in request.inputs.items()}
        escalation = self._escalation(request, subset)
        why = (
            f"cascade:escalate {rows.size}/{len(first.outputs[self.output])} rows "
            f"({self.measure} min {worst:.3f} < {self.threshold:.3f}"
            + (f", {audited} audit" if audited else "")
            + ")"
        )
        try:
            second = self.large.infer(escalation)
            for key, value in second.outputs.items():
                if key in first.outputs:
                    check_rows(
                        value, int(rows.size), output=key, like=first.outputs[key],
                        source=f"large {self.large.name}",
                    )  # fmt: skip
        except EdgecloudError as exc:
            reason = fallback_reason(exc)
            if reason is None:
                raise
            why = f"cascade:escalation-failed:{reason} — small model's answer ({exc.message[:100]})"
            if self.on_escalation_failure is not None:
                # Deferred with the rules in force where it failed (a Guard on the large
                # branch, a refusal below a Fastest): the outbox enforces them at drain.
                deferred, why_deferred = deferrable(escalation, exc)
                try:
                    self.on_escalation_failure(deferred, first, why_deferred or reason)
                except EdgecloudError as failed:  # e.g. the outbox's disk is full
                    # The small model's answer stands; the lost deferral is said in the
                    # trace and the log, never silently.
                    log.warning("%s: could not defer the escalation: %s", self.name, failed)
                    why += f"; not deferred: {failed.message[:100]}"
            return _decided(first, self.name, why)
        outputs = {k: v.copy() for k, v in first.outputs.items()}
        for key, value in second.outputs.items():
            if key in outputs:
                outputs[key][rows] = value
        spans = [
            *first.trace.spans,
            Span(self.name, "decision", 0.0, why),
            *second.trace.spans,
        ]
        served = f"{first.trace.served_by} + {second.trace.served_by}"
        return InferResponse(
            model=request.model,
            version=first.version,
            outputs=outputs,
            trace=Trace(served, spans),
            id=request.id,
            parameters={**first.parameters, "escalated_rows": int(rows.size)},
        )

    def _escalation(self, request: InferRequest, subset: dict[str, Any]) -> InferRequest:
        """The request for the large model: the unsure rows, under a key of its own.

        A keyed request's escalation gets a key derived from it (a retry of the
        request re-sends the same escalation under the same key); an unkeyed one
        gets a fresh key when it may be deferred (``on_escalation_failure``),
        so the live attempt and the deferred re-send are computed once.
        """
        escalation = replace(request, model=self.large_model or request.model, inputs=subset)
        parent = request.context.idempotency_key
        if parent:
            key: str | None = derived_key(parent, escalation, "escalation")
        else:
            key = new_key("escalation") if self.on_escalation_failure is not None else None
        if key is not None:
            escalation.context = replace(request.context, idempotency_key=key)
        return escalation

    def close(self) -> None:
        self.small.close()
        self.large.close()


def _decided(response: InferResponse, name: str, reason: str) -> InferResponse:
    response.trace = Trace(
        response.trace.served_by, [*response.trace.spans, Span(name, "decision", 0.0, reason)]
    )
    return response
