"""Privacy: rules that keep data on the device, and an audit log of what left it.

Enforcement happens where data would leave — in RemoteBackend, the only leaf
that sends tensors — so no arrangement of combinators can route around it:
every path (direct, escalation, fallback, hedge, probe, split, outbox drain,
filter, gateway) ends in :func:`check_egress`, which raises
:class:`~edgecloud.errors.PrivacyError` for a request carrying any tensor its
context withholds. A Fallback answers that with its local path; otherwise the
request fails clearly. :func:`withheld` is the one rule, also used by the
split planner to rule out cuts before it runs them:

- restricted data, or a context marked ``local_only``: every tensor stays;
- ``features_only`` (a Guard rule ``features``): only the tensors the context
  names in ``features`` (activations a SplitBackend computed on the device)
  may leave; every other tensor — a raw graph input, even one the tail
  consumes directly — stays;
- otherwise everything may leave.

Under ``features_only`` the request's non-tensor data is held back too: the
caller's ``parameters`` and ``id`` may name or describe the person
(``patient_name``, ``patient-4711``), so :func:`check_egress` returns the
request without them; only the context parameters the transport itself adds
(``sensitivity``, ``idempotency_key``, ``binary_data_output``) and the
model's own output names leave. The audit log records what was dropped.

A refusal (and any error passing a Guard) carries the rules in force as
``exc.context``; :func:`deferrable` puts them back on a request that is
deferred to the outbox, so a Guard's decision is never lost between the
refusal and the queue.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..backends.base import Backend
from ..errors import ConfigError, EdgecloudError, PrivacyError
from ..tensors import InferRequest, InferResponse, RequestContext, Sensitivity, Span, Trace

__all__ = ["AuditLog", "Guard", "check_egress", "deferrable", "withheld"]

Rule = Literal["local", "features", "any"]


def withheld(context: RequestContext, tensors: Iterable[str]) -> list[str]:
    """The names among ``tensors`` that ``context`` keeps on the device (sorted).

    Empty when all of them may be sent; see the module docstring for the rule.
    """
    names = sorted(tensors)
    if not context.features_may_leave:
        return names
    if context.features_only:
        return [name for name in names if name not in context.features]
    return []


def check_egress(request: InferRequest, destination: str) -> tuple[InferRequest, list[str]]:
    """The request as it may go to ``destination``, and what was dropped from it.

    Called by every transport before a byte is sent (``RemoteBackend``).
    Raises :class:`PrivacyError` (its ``context`` the one refused) if any
    tensor of ``request`` may not leave. Under ``features_only`` the caller's
    parameters and id are dropped (named in the list, e.g.
    ``["id", "parameters.patient_name"]``); otherwise the request is unchanged
    and the list empty.
    """
    context = request.context
    kept = withheld(context, request.inputs)
    if kept:
        if not context.features_may_leave:
            why = f"{context.sensitivity.value} data of this request may not leave the device"
        else:
            why = (
                f"only features computed on the device may leave for {context.sensitivity.value} "
                f"data, and {', '.join(map(repr, kept))} "
                + ("is raw input" if len(kept) == 1 else "are raw inputs")
            )
        error = PrivacyError(f"{why}, and {destination} is remote")
        error.context = context
        raise error
    if not context.features_only:
        return request, []
    dropped = [f"parameters.{name}" for name in sorted(request.parameters)]
    if request.id:
        dropped.insert(0, "id")
    if not dropped:
        return request, []
    return replace(request, parameters={}, id=""), dropped


def deferrable(request: InferRequest, exc: BaseException) -> tuple[InferRequest, str | None]:
    """``request`` with the privacy rules ``exc`` carries, and the reason to defer it for.

    The rules are those in force where the request failed (``exc.context``,
    set by :func:`check_egress` and by every :class:`Guard` the error passed):
    the stored request gets the stricter of its own context and those, so the
    outbox enforces a Guard's decision at drain. The reason is the error's
    fallback reason (``"privacy"`` for a refusal: the outbox never sends it).
    """
    if not isinstance(exc, EdgecloudError):
        return request, None
    if exc.context is not None:
        request = replace(request, context=request.context.merged_rules(exc.context))
    return request, exc.fallback


class AuditLog:
    """Append-only JSON lines: one record per tensor that leaves the device.

    Each line: time, model, destination, tensor name, bytes, sha256,
    sensitivity, request id. Lines are written with ``O_APPEND`` and fsynced,
    so a crash never leaves a half-written record before a complete one.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._lock = threading.Lock()

    def record(self, request: InferRequest, destination: str, dropped: Iterable[str] = ()) -> None:
        """One line per tensor of ``request``; ``dropped`` names the non-tensor data
        :func:`check_egress` held back (recorded with each line as ``dropped``)."""
        now = time.time()
        held = sorted(dropped)
        lines = []
        for name, array in request.inputs.items():
            data = (
                np.ascontiguousarray(array).tobytes()
                if array.dtype.kind != "O"
                else repr(array.tolist()).encode()
            )
            lines.append(
                json.dumps(
                    {
                        "time": now,
                        "model": request.model,
                        "destination": destination,
                        "tensor": name,
                        "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "sensitivity": request.context.sensitivity.value,
                        "request_id": request.id,
                        **({"dropped": held} if held else {}),
                    },
                    sort_keys=True,
                )
            )
        payload = ("\n".join(lines) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, payload)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open() as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


class Guard(Backend):
    """Apply per-deployment privacy rules before ``inner`` routes the request.

    ``rules`` maps a sensitivity (``public``, ``personal``, ``restricted``) to
    ``local`` (must stay on the device), ``features`` (the raw input stays; a
    :class:`~edgecloud.split.SplitBackend` may send the activation it computes
    on the device) or ``any``. Restricted data is local whatever the rules say.
    """

    def __init__(
        self, inner: Backend, *, rules: Mapping[str, Rule] | None = None, name: str = "guard"
    ) -> None:
        self.inner = inner
        self.name = name
        self.rules: dict[Sensitivity, Rule] = {Sensitivity.RESTRICTED: "local"}
        for key, rule in (rules or {}).items():
            try:
                level = Sensitivity(key)
            except ValueError:
                raise ConfigError(
                    f"privacy rule for unknown sensitivity {key!r}; use public, personal "
                    "or restricted"
                ) from None
            if rule not in ("local", "features", "any"):
                raise ConfigError(
                    f"privacy rule {key}: {rule!r} must be 'local', 'features' or 'any'"
                )
            if level is Sensitivity.RESTRICTED and rule != "local":
                raise ConfigError("restricted data never leaves the device: its rule must be local")
            self.rules[level] = rule

    def infer(self, request: InferRequest) -> InferResponse:
        """Mark the context with this Guard's rule, then let ``inner`` route it.

        A caller's ``features`` are cleared: only a SplitBackend below the
        Guard may name tensors it computed. Any error from ``inner`` leaves
        carrying the guarded context (``exc.context``), so code that defers the
        request stores the Guard's decision with it (:func:`deferrable`).
        """
        level = request.context.sensitivity
        rule = self.rules.get(level, "any")
        context = replace(request.context, features=frozenset())
        if rule == "local":
            context = replace(context, local_only=True)
        elif rule == "features":
            context = replace(context, features_only=True)
        request = replace(request, context=context)
        try:
            response = self.inner.infer(request)
        except EdgecloudError as exc:
            exc.context = context.merged_rules(exc.context)
            raise
        outcome = {"local": "stays on the device", "features": "only features may leave"}
        reason = f"guard:{level.value} → " + outcome.get(rule, "may leave")
        response.trace = Trace(
            response.trace.served_by,
            [Span(self.name, "decision", 0.0, reason), *response.trace.spans],
        )
        return response

    def close(self) -> None:
        self.inner.close()
