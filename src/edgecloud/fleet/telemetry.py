"""Update telemetry: every step of the agent as an event, queued in the outbox, sent when online.

An event is the JSON object the fleet server stores (``POST /fleet/telemetry``,
one event per request)::

    {"id": "<device>:<seq>", "device": str, "group": str | None, "model": str,
     "event": "check|download|install|health|swap|rollback|error",
     "version": int | None, "from_version": int | None, "ok": bool,
     "detail": str, "bytes": int, "at": unix seconds}

Events go through :class:`~edgecloud.routing.outbox.Outbox` (durable, ordered,
at least once; the event id is the item's idempotency key, so the server
stores each once), wrapped as a one-tensor request of the pseudo-model
``fleet-telemetry``. A device that is offline reports on reconnect. ``seq``
is persisted beside the outbox, so ids are never reused across restarts.
Each event is also logged (logger ``edgecloud.fleet``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DownloadError, UnavailableError, UpdateAuthError, error_for_http_status
from ..repository import _write_atomic
from ..tensors import InferRequest, RequestContext
from .agent_state import storage_errors

__all__ = ["EVENTS", "TELEMETRY_MODEL", "HttpSender", "Telemetry", "http_sender"]

log = logging.getLogger("edgecloud.fleet")

EVENTS = ("check", "download", "install", "health", "swap", "rollback", "error")
#: The pseudo-model name telemetry items carry in the outbox.
TELEMETRY_MODEL = "fleet-telemetry"


class Telemetry:
    """Records agent events into an outbox at ``outbox_path`` and drains them to a server."""

    def __init__(
        self,
        outbox_path: Path,
        *,
        device: str,
        group: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from ..routing.outbox import Outbox

        self.device = device
        self.group = group
        self._clock = clock
        self.outbox = Outbox(outbox_path)
        self._seq_file = outbox_path.with_name(outbox_path.name + ".seq")
        self._lock = threading.Lock()
        self._seq = _read_seq(self._seq_file)

    def record(
        self,
        model: str,
        event: str,
        *,
        ok: bool,
        version: int | None = None,
        from_version: int | None = None,
        detail: str = "",
        nbytes: int = 0,
    ) -> dict[str, Any]:
        """Log and queue one event; returns it. ``event`` is one of :data:`EVENTS`."""
        if event not in EVENTS:
            raise ValueError(f"unknown telemetry event {event!r}; one of {', '.join(EVENTS)}")
        with self._lock, storage_errors("the telemetry sequence number"):
            _write_atomic(self._seq_file, str(self._seq + 1).encode(), durable=True)
            self._seq += 1
            seq = self._seq
        event_id = f"{self.device}:{seq}"
        body: dict[str, Any] = {
            "id": event_id,
            "device": self.device,
            "group": self.group,
            "model": model,
            "event": event,
            "version": version,
            "from_version": from_version,
            "ok": ok,
            "detail": detail,
            "bytes": int(nbytes),
            "at": self._clock(),
        }
        level = logging.INFO if ok else logging.WARNING
        log.log(level, "fleet %s %s%s: %s%s", event, model, _versions(version, from_version),
                "ok" if ok else "failed", f": {detail}" if detail else "")  # fmt: skip
        payload = np.array([json.dumps(body).encode()], dtype=np.object_)
        request = InferRequest(
            TELEMETRY_MODEL,
            {"event": payload},
            context=RequestContext(idempotency_key=event_id),
        )
        self.outbox.put(request, kind="telemetry")
        return body

    def drain(self, send: Callable[[InferRequest], Any]) -> int:
        """Send queued events oldest first; returns how many were delivered."""
        return self.outbox.drain(send).delivered

    def close(self) -> None:
        self.outbox.close()


def event_of(request: InferRequest) -> dict[str, Any]:
    """The event a telemetry item carries."""
    raw = request.inputs["event"].reshape(-1)[0]
    data: dict[str, Any] = json.loads(raw if isinstance(raw, bytes | str) else bytes(raw))
    return data


class HttpSender:
    """A ``send`` for :meth:`Telemetry.drain`: POSTs each event to ``<server>/fleet/telemetry``
    with the bearer ``token`` (:func:`.http_auth.auth_headers`).

    Errors are the ones the outbox classifies: a refused connection or a 5xx
    leaves the item queued, a 401/403 stops the drain with every item kept (and
    is remembered in :attr:`refused`, an ``UpdateAuthError`` naming the token
    settings), another 4xx dead-letters the item (the server will never take it).
    An answer slower than ``min_rate_bytes_s`` after ``timeout_s`` (a server that
    drips its response, :class:`.download.RateFloor`) is an ``UnavailableError``:
    the item stays queued and the agent's round goes on.
    """

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        timeout_s: float = 5.0,
        min_rate_bytes_s: float | None = 1024.0,
    ) -> None:
        from .._optional import require
        from .http_auth import auth_headers

        self._httpx = require("httpx", extra="fleet", feature="fleet telemetry")
        self.url = server.rstrip("/") + "/fleet/telemetry"
        self.token = token
        self.timeout_s = timeout_s
        self.min_rate_bytes_s = min_rate_bytes_s
        self._headers = auth_headers(token)
        self.refused: UpdateAuthError | None = None
        """The last token refusal, None while the server takes the token."""

    def __call__(self, request: InferRequest) -> None:
        from .download import RateFloor

        httpx = self._httpx
        body = b""
        try:
            with httpx.stream(
                "POST", self.url, json=event_of(request), headers=self._headers,
                timeout=self.timeout_s,
            ) as response:  # fmt: skip
                floor = RateFloor(self.min_rate_bytes_s, allowance_s=self.timeout_s)
                for chunk in response.iter_bytes():
                    floor.add(len(chunk), self.url)
                    body = (body + chunk)[:4096]  # only the start is ever shown
        except httpx.HTTPError as exc:
            raise UnavailableError(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        except DownloadError as exc:  # too slow: a transient failure, the item stays queued
            raise UnavailableError(exc.message) from exc
        if response.status_code in (401, 403):
            from .http_auth import refused

            self.refused = refused(response.status_code, self.url, self.token)
            error = error_for_http_status(response.status_code, self.refused.message)
            raise error  # AuthenticationError / PermissionDeniedError: the outbox stops, keeps
        if response.status_code >= 300:
            raise error_for_http_status(
                response.status_code,
                body.decode(errors="replace")[:200],
                response.headers.get("retry-after"),
            )


def http_sender(server: str, *, token: str | None = None, timeout_s: float = 5.0) -> HttpSender:
    """An :class:`HttpSender` for ``server``."""
    return HttpSender(server, token=token, timeout_s=timeout_s)


def _read_seq(path: Path) -> int:
    """The last sequence number used. A missing file (a new or re-provisioned device
    under a known id), a torn or a foreign one restart past the clock in milliseconds:
    the server binds an id to its content (a reused id with other content is a 422),
    so an id is never reused."""
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return int(time.time() * 1000)


def _versions(version: int | None, from_version: int | None) -> str:
    """`` v2 (from v1)`` for a log line; no ``None`` in it."""
    text = f" v{version}" if version is not None else ""
    return text + (f" (from v{from_version})" if from_version is not None else "")
