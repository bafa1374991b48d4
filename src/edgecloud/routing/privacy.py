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
from ..errors import ConfigError, PrivacyError
from ..tensors import InferRequest, InferResponse, RequestContext, Sensitivity, Span, Trace

__all__ = ["AuditLog", "Guard", "check_egress", "withheld"]

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


def check_egress(request: InferRequest, destination: str) -> None:
    """Raise :class:`PrivacyError` if any tensor of ``request`` may not go to ``destination``.

    Called by every transport before a byte is sent (``RemoteBackend``).
    """
    kept = withheld(request.context, request.inputs)
    if not kept:
        return
    context = request.context
    if context.sensitivity is Sensitivity.RESTRICTED or context.local_only:
        why = f"{context.sensitivity.value} data of this request may not leave the device"
    else:
        why = (
            f"only features computed on the device may leave for {context.sensitivity.value} "
            f"data, and {', '.join(map(repr, kept))} "
            + ("is raw input" if len(kept) == 1 else "are raw inputs")
        )
    raise PrivacyError(f"{why}, and {destination} is remote")


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

    def record(self, request: InferRequest, destination: str) -> None:
        now = time.time()
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
        level = request.context.sensitivity
        rule = self.rules.get(level, "any")
        if rule == "local" and not request.context.local_only:
            request = replace(request, context=replace(request.context, local_only=True))
        elif rule == "features" and not request.context.features_only:
            request = replace(request, context=replace(request.context, features_only=True))
        response = self.inner.infer(request)
        outcome = {"local": "stays on the device", "features": "only features may leave"}
        reason = f"guard:{level.value} → " + outcome.get(rule, "may leave")
        response.trace = Trace(
            response.trace.served_by,
            [Span(self.name, "decision", 0.0, reason), *response.trace.spans],
        )
        return response

    def close(self) -> None:
        self.inner.close()
