"""The Open Inference Protocol over HTTP/REST, as a plain ASGI application.

No web framework: a request is routed by splitting its path, which keeps the
per-request cost to what the protocol needs (the bar is set by MLServer,
which runs FastAPI). Errors are ``{"error": "..."}`` with the status code of
the :class:`~edgecloud.errors.EdgecloudError` raised.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from .. import __version__
from ..errors import (
    AuthenticationError,
    EdgecloudError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    clip,
)
from ..repository import ModelConfig
from ..tensors import InferRequest, InferResponse
from ..triton_config import TRITON_TYPES
from ..wire.context import carried_key
from ..wire.rest import HEADER_LENGTH, DecodedRequest, decode_request, dumps, encode_response
from .fleet_telemetry import FleetRoutes, default_fleet_db, telemetry_too_large
from .host import ModelState
from .metrics import RequestMetrics, ServerMetrics, model_label
from .model_control import ModelControl
from .openapi import openapi_document
from .release import CLIENT_GONE, collect_soon, release
from .settings import ServerSettings

__all__ = [
    "EXTENSIONS",
    "OFFLOAD_BYTES",
    "REPOSITORY_EXTENSION",
    "HttpApp",
    "model_metadata",
    "triton_config",
]

#: Bodies larger than this are decoded in a worker thread: a 64 MiB JSON body
#: takes about 0.5 s to parse (2 s with NaN literals, which need the stdlib
#: parser), and other clients must not wait behind it on the event loop.
#: Below it, a thread hop costs more than the decode (measured on this
#: project's 2-core machine: ~60 us for a 784-float JSON request).
OFFLOAD_BYTES = 256 * 1024

log = logging.getLogger("edgecloud.server")
access_log = logging.getLogger("edgecloud.access")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

EXTENSIONS = ["binary_tensor_data", "model_configuration"]
#: Triton's repository extension: advertised by hosts with model control (the server).
REPOSITORY_EXTENSION = "model_repository"
JSON = [(b"content-type", b"application/json")]
BINARY = [(b"content-type", b"application/octet-stream")]
_HEADER_LENGTH = HEADER_LENGTH.encode()
LIVE = b'{"live":true}'
READY = b'{"ready":true}'
NOT_READY = b'{"ready":false}'


#: Where :class:`.protocol.FastLaneProtocol` leaves the ASGI scope a weak reference
#: to the connection's protocol, whose ``gone()`` says the client left.
CYCLE_KEY = "edgecloud.cycle"


def client_gone(scope: Scope) -> bool:
    """Whether the client of an ASGI request has gone (its connection lost or
    closing); False where the server leaves no reference: it cannot tell."""
    ref = scope.get(CYCLE_KEY)
    if ref is None:
        return False
    protocol = ref()
    return protocol is None or bool(protocol.gone())


class _ClientGone(Exception):
    """Internal: the client disconnected before its request's body was complete.

    Nothing is computed (a truncated body must not be mistaken for a whole one,
    nor stored under its idempotency key) and nothing is sent; the request is
    counted as ``499``."""


class _Reply(Exception):
    """Internal: answer now with this status and body."""

    def __init__(self, status: int, body: bytes = b"", headers: list[Any] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or JSON


def model_metadata(config: ModelConfig, versions: list[int]) -> dict[str, Any]:
    """The protocol's model metadata: tensors with -1 for the batch dimension."""

    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "datatype": s.datatype, "shape": list(s.full_shape(config.batched))}
            for s in specs
        ]

    return {
        "name": config.name,
        "versions": [str(v) for v in versions],
        "platform": config.platform,
        "inputs": tensors(config.inputs),
        "outputs": tensors(config.outputs),
    }


def triton_config(config: ModelConfig) -> dict[str, Any]:
    """Triton's model configuration in JSON form (what perf_analyzer reads)."""

    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "data_type": TRITON_TYPES[s.datatype], "dims": list(s.shape)}
            for s in specs
        ]

    policy = config.version_policy
    out: dict[str, Any] = {
        "name": config.name,
        "platform": config.platform,
        "backend": "onnxruntime",
        "max_batch_size": config.max_batch_size,
        "input": tensors(config.inputs),
        "output": tensors(config.outputs),
        "version_policy": {
            policy.kind: {
                "latest": {"num_versions": policy.count},
                "all": {},
                "specific": {"versions": policy.versions},
            }[policy.kind]
        },
    }
    if config.dynamic_batching is not None or config.batched:
        batching = config.dynamic_batching
        out["dynamic_batching"] = {
            "max_queue_delay_microseconds": batching.max_queue_delay_us if batching else 0,
            "preferred_batch_size": batching.preferred_batch_sizes if batching else [],
        }
    return out


class DirectCycle(Protocol):
    """One request on the HTTP fast lane (:class:`.protocol.FastLaneProtocol`)."""

    #: the client closed the connection before the answer
    disconnected: bool
    #: time.perf_counter() when the request's headers were in
    started: float

    def reply(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Write the response (status line, ``headers``, Content-Length, body)."""


class _LaneWaiter:
    """A fast-lane request's answer, written as soon as the host has it: the
    waiter a tick batch resolves (no future, no callback handle), or the done
    callback of a future."""

    __slots__ = ("app", "cycle", "decoded", "label", "settled", "size", "started")

    def __init__(
        self, app: HttpApp, cycle: DirectCycle, label: str, started: float, size: int,
        decoded: DecodedRequest,
    ) -> None:  # fmt: skip
        self.app, self.cycle, self.label = app, cycle, label
        self.started, self.size, self.decoded = started, size, decoded
        self.settled = False

    def done(self) -> bool:
        return self.settled

    def set_result(self, response: InferResponse) -> None:
        self.settled = True
        self.app._direct_answer(
            self.cycle, self.label, self.started, self.size, response, self.decoded
        )

    def set_exception(self, exc: BaseException) -> None:
        if self.settled:
            # answering the result itself failed (the tick batch hands that error
            # here): counted and maybe answered already, so not again; the client
            # gets a 500 unless its answer was written
            log.error("answering an infer request failed", exc_info=exc)
            self.cycle.reply(500, _error(f"internal error: {type(exc).__name__}"), JSON)
            return
        self.settled = True
        self.app._direct_failed(
            self.cycle, self.decoded.request.model, self.label, self.started, self.size, exc
        )

    def settle(self, done: asyncio.Future[InferResponse]) -> None:
        if done.cancelled():
            self.set_exception(asyncio.CancelledError())
            return
        exc = done.exception()
        if exc is not None:
            self.set_exception(exc)
        else:
            self.set_result(done.result())


class InferenceHost(Protocol):
    """What the HTTP front end needs: the server's ModelHost, or the edge gateway's."""

    settings: ServerSettings
    metrics: ServerMetrics
    states: dict[str, ModelState]

    def config(self, model: str) -> ModelConfig: ...

    def ready(self, model: str, version: str | None = None) -> bool: ...

    async def infer(self, request: InferRequest) -> InferResponse: ...


class HttpApp:
    """ASGI application serving an :class:`InferenceHost` (a ModelHost by default).

    With ``expose_trace`` every infer response carries its trace as the JSON
    string parameter ``edgecloud_trace`` (which tier served it, why, timings, bytes).
    """

    def __init__(
        self, host: InferenceHost, *, token: str | None = None, expose_trace: bool = False
    ) -> None:
        self.host = host
        self.expose_trace = expose_trace
        self.settings = host.settings
        self.metrics = host.metrics
        self._token = token.encode() if token else None
        self._openapi = dumps(openapi_document(__version__))
        control = getattr(host, "control", None) is not None
        extensions = [*EXTENSIONS, REPOSITORY_EXTENSION] if control else EXTENSIONS
        self._server_metadata = dumps(
            {"name": "edgecloud", "version": __version__, "extensions": extensions}
        )
        self._requests = RequestMetrics(host.metrics, "http")
        #: headers every answer of this app carries (a worker's pid, :mod:`.workers`)
        self.answer_headers: list[tuple[bytes, bytes]] = []
        self.ready = False
        self._fleet_routes: FleetRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        try:
            status, body, headers = await self._handle(scope, receive)
        except _ClientGone:
            return  # no one to answer: uvicorn closes the connection
        except Exception as exc:  # never a traceback to the client
            status, body, headers = self._failure(exc, scope["method"], scope["path"])
        except asyncio.CancelledError as exc:
            # uvicorn cancels what still runs once shutdown_grace_s is over: a 503
            # to retry elsewhere (a keyed one's answer is stored), not its 500 and
            # a logged traceback
            status, body, headers = self._failure(exc, scope["method"], scope["path"])
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, *self.answer_headers, (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})
        if self.settings.access_log:
            self._log_access(scope, status, len(body), started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            try:
                message = await receive()
            except asyncio.CancelledError:  # a forced exit skips the shutdown message
                self.ready = False
                return
            if message["type"] == "lifespan.startup":
                control = getattr(self.host, "control", None)
                if control is not None:
                    control.begin()
                self.ready = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- routing ---------------------------------------------------------------

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list[Any]]:
        """Route by path, then method: a path served here with another method is
        405 with an ``Allow`` header (as Triton answers; HEAD included), an
        unknown path 404. Health checks need no token; everything else does."""
        method: str = scope["method"]
        path: str = scope["path"]
        if method == "POST" and path[-6:] == "/infer" and path[:11] == "/v2/models/":
            model = path[11:-6]  # the common case, routed as the general path below would
            if model and "/" not in model:
                self._authorize(scope)
                return await self._infer(model, None, scope, receive)
        parts = path.strip("/").split("/")
        if parts[:2] == ["v2", "health"] and len(parts) == 3 and parts[2] in ("live", "ready"):
            _allow(method, "GET", scope)
            return self._health(parts[2])
        self._authorize(scope)
        if parts == ["v2"]:
            _allow(method, "GET", scope)
            return 200, self._server_metadata, JSON
        if parts[:2] == ["v2", "models"] and len(parts) >= 3:
            return await self._model_route(method, parts[2:], scope, receive)
        if parts[:2] == ["v2", "repository"]:
            return await self._repository_route(method, parts[2:], scope, receive)
        if parts in (["fleet", "telemetry"], ["fleet", "status"]):
            return await self._fleet(parts[1], method, scope, receive)
        if parts == ["metrics"]:
            _allow(method, "GET", scope)
            return 200, self.metrics.exposition(), [(b"content-type", b"text/plain; version=0.0.4")]
        if parts in (["openapi.json"], ["v2", "openapi.json"]):
            _allow(method, "GET", scope)
            return 200, self._openapi, JSON
        raise _Reply(404, _error(f"no endpoint {method} {scope['path']}"))

    async def _fleet(
        self, what: str, method: str, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, list[Any]]:
        """Device telemetry and fleet status (:mod:`.fleet_telemetry`)."""
        root = getattr(getattr(self.host, "repository", None), "root", None)
        if root is None:
            raise _Reply(404, _error("this server keeps no fleet telemetry"))
        if self._fleet_routes is None:
            fleet = getattr(self.settings, "fleet", None)
            self._fleet_routes = FleetRoutes(default_fleet_db(root), fleet)
        if what == "telemetry":
            _allow(method, "POST", scope)
            try:
                body = await self._read_body(scope, None, receive, _declared(scope))
            except PayloadTooLargeError as exc:
                limit = min(self.settings.max_request_bytes, self.settings.max_json_request_bytes)
                raise telemetry_too_large(limit) from exc
            return 200, await self._fleet_routes.post(body), JSON
        _allow(method, "GET", scope)
        return 200, await self._fleet_routes.status(scope.get("query_string", b"")), JSON

    def _health(self, which: str) -> tuple[int, bytes, list[Any]]:
        """The OIP REST health bodies; the status code is the answer too.

        Live: 200 ``{"live": true}`` (``$live_server_response``). Ready: 200
        ``{"ready": true}``, or 503 ``{"ready": false}`` before start-up ends and
        while shutting down.

        Deviations from kserve/open-inference-protocol
        ``specification/protocol/inference_rest.md``, on purpose:

        * its ``$ready_server_response`` repeats the live object's ``"live"``
          key, a copy slip in a section that answers readiness; KServe's own
          server and every client that parses the body read ``"ready"``;
        * it defines no status for "not ready" (the older v2 text said "a 4xx
          status code indicates false", with an empty body); we answer 503,
          what KServe's server answers and its client reads as not ready,
          which Kubernetes probes and Triton's clients (``status == 200``) also
          read as not ready, with the specification's body, so a client that
          parses the body reads ``false`` rather than failing on an empty one.
        """
        if which == "live":
            return 200, LIVE, JSON
        return (200, READY, JSON) if self.ready else (503, NOT_READY, JSON)

    async def _model_route(
        self, method: str, rest: list[str], scope: Scope, receive: Receive
    ) -> tuple[int, bytes, list[Any]]:
        model, version = rest[0], None
        rest = rest[1:]
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version, rest = rest[1], rest[2:]
        action = rest[0] if rest else ""
        if len(rest) > 1 or action not in ("", "infer", "ready", "config"):
            raise _Reply(404, _error(f"no endpoint {method} {scope['path']}"))
        if action == "infer":
            _allow(method, "POST", scope)
            return await self._infer(model, version, scope, receive)
        _allow(method, "GET", scope)
        if action == "":
            return 200, dumps(self._metadata(model, version)), JSON
        if action == "ready":  # $ready_model_response: {"name": ..., "ready": ...}
            self.host.config(model)
            ready = self.host.ready(model, version)
            return (200 if ready else 503), dumps({"name": model, "ready": ready}), JSON
        return 200, dumps(triton_config(self.host.config(model))), JSON

    async def _repository_route(
        self, method: str, rest: list[str], scope: Scope, receive: Receive
    ) -> tuple[int, bytes, list[Any]]:
        """Triton's model repository extension (``extension_model_repository.md``):
        ``POST /v2/repository/index`` -> a JSON array of ``{name, version, state,
        reason}``; ``POST /v2/repository/models/{m}/load`` and ``.../unload`` -> 200
        with an empty body, or ``{"error": ...}`` with the error's status."""
        control: ModelControl | None = getattr(self.host, "control", None)
        index = rest == ["index"]
        action = rest[2] if len(rest) == 3 and rest[0] == "models" else ""
        if control is None or not (index or action in ("load", "unload")):
            raise _Reply(404, _error(f"no endpoint {method} {scope['path']}"))
        _allow(method, "POST", scope)
        body = _json_object(
            await self._read_body(scope, None, receive, _declared(scope)), scope["path"]
        )
        if index:
            ready = body.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidRequestError(f"'ready' must be true or false, not {ready!r}")
            return 200, dumps(control.index(ready)), JSON
        parameters = body.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidRequestError("'parameters' must be a JSON object")
        if action == "load":
            await control.load(rest[1], dict(parameters))
        else:
            await control.unload(rest[1], dict(parameters))
        return 200, b"", JSON

    def _metadata(self, model: str, version: str | None) -> dict[str, Any]:
        """Model metadata; ModelNotFoundError (404) for an unknown model or a
        version not served (:meth:`ModelState.metadata_versions`, also gRPC's)."""
        config = self.host.config(model)
        state = self.host.states.get(model)
        if state is None:  # unloaded since config() found it
            self.host.config(model)
            raise ModelNotFoundError(f"no model {clip(model)} on this server")
        return model_metadata(config, state.metadata_versions(version))

    async def _infer(
        self, model: str, version: str | None, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, list[Any]]:
        """One infer request, counted once with the status it is answered with
        (decode and encode failures included) under the model label it had when
        it arrived (an unload while it runs does not relabel it)."""
        started = time.perf_counter()
        label = model_label(model, self.host.states)
        code, size = 500, 0
        try:
            lengths: list[bytes] = []
            declared: list[bytes] = []
            keys: list[str] = []
            for name, value in scope["headers"]:  # one pass; uvicorn lower-cases the names
                if name == _HEADER_LENGTH:
                    lengths.append(value)
                elif name == b"content-length":
                    declared.append(value)
                elif name.lower() == b"idempotency-key":
                    keys.append(value.decode("latin-1"))
            header_length = _length_value(lengths, _HEADER_LENGTH)
            body = await self._read_body(
                scope, header_length, receive, _length_value(declared, b"content-length")
            )
            size = len(body)
            key = carried_key(keys, "the Idempotency-Key headers") if keys else None
            args = (body, header_length, model, version, key)
            if size > OFFLOAD_BYTES:  # a large body decodes off the event loop
                decoded = await asyncio.to_thread(decode_request, *args)
            else:
                decoded = decode_request(*args)
            outcome = self._start(decoded)
            response = outcome if isinstance(outcome, InferResponse) else await outcome
            answer = self._encoded(response, decoded)
            code = 200
        except EdgecloudError as exc:
            code = exc.status_code
            raise
        except (asyncio.CancelledError, _ClientGone):
            code = CLIENT_GONE
            raise
        finally:
            if code != CLIENT_GONE and client_gone(scope):  # no one gets the answer
                code = CLIENT_GONE
            self._count(model, label, code, started, size)
        return answer

    def _start(
        self, decoded: DecodedRequest, waiter: Any = None
    ) -> InferResponse | Awaitable[InferResponse] | Any:
        """The host's answer, or an awaitable of it (``infer_nowait`` where the host has
        it), or ``waiter`` when the host will answer through it (a tick-batched request)."""
        nowait = getattr(self.host, "infer_nowait", None)
        if nowait is not None:
            return nowait(decoded.request, waiter)
        return self.host.infer(decoded.request)

    def _encoded(
        self, response: InferResponse, decoded: DecodedRequest
    ) -> tuple[int, bytes, list[Any]]:
        """The 200 answer to a decoded request: body and headers (binary extension or JSON)."""
        if self.expose_trace:
            response.parameters = {
                **response.parameters,
                "edgecloud_trace": json.dumps(response.trace.to_dict()),
            }
        payload, json_length = encode_response(response, decoded)
        if json_length is None:
            return 200, payload, JSON
        return 200, payload, [*BINARY, (_HEADER_LENGTH, b"%d" % json_length)]

    def _count(self, model: str, label: str, code: int, started: float, size: int) -> None:
        """Count one infer request answered with ``code`` (and give a failed one's memory back)
        under ``label``, the model's label at arrival, or its label now when it was not
        served at arrival (loaded while the request read its body): the model's name
        when it was served at either time (a request is never relabelled ``""`` by an
        unload, nor counted under ``""`` when a load made it succeed)."""
        if not label:
            label = model_label(model, self.host.states)
        count, latency = self._requests.labelled(label, code)
        count.inc()
        latency.observe(time.perf_counter() - started)
        if code != 200:
            collect_soon(size)

    # -- the HTTP fast lane (.protocol.FastLaneProtocol) -------------------------

    def fast_lane(self) -> bool:
        """Whether :meth:`infer_direct` may answer plain infer requests: not with an
        access log (written by the ASGI path) or a host without ``infer_nowait``."""
        return not self.settings.access_log and hasattr(self.host, "infer_nowait")

    def authorized(self, value: bytes | None) -> bool:
        """Whether an ``Authorization`` header value (None: absent) passes; False
        sends the request down the ASGI path, which answers the 401."""
        if self._token is None:
            return True
        if value is None:
            return False
        scheme, _, token = value.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._token)

    def infer_direct(
        self, cycle: DirectCycle, model: str, header_length: int | None, body: bytes
    ) -> None:
        """``POST /v2/models/{model}/infer`` with its whole ``body`` in hand, answered
        through ``cycle.reply`` without an ASGI task: the same decode, host call,
        encode, errors and counting as :meth:`_infer` (one code path: ``_start``,
        ``_encoded``, ``_count``), for an unversioned, unkeyed, authorized request
        the fast lane has checked (:class:`.protocol.FastLaneProtocol`). A request
        whose client went away before its answer is counted as 499."""
        started = cycle.started
        label = model_label(model, self.host.states)
        try:
            decoded = decode_request(body, header_length, model, None, None)
            waiter = _LaneWaiter(self, cycle, label, started, len(body), decoded)
            outcome = self._start(decoded, waiter)
        except Exception as exc:
            self._direct_failed(cycle, model, label, started, len(body), exc)
            return
        if outcome is waiter:  # answered through it at the end of this iteration
            return
        if isinstance(outcome, InferResponse):
            self._direct_answer(cycle, label, started, len(body), outcome, decoded)
            return
        future = outcome if isinstance(outcome, asyncio.Future) else asyncio.ensure_future(outcome)
        future.add_done_callback(waiter.settle)

    def infer_gone(self, model: str, started: float, size: int) -> None:
        """Count a fast-lane request whose client left before its body was whole
        (499, never computed: as :meth:`_read_body`'s ``_ClientGone``)."""
        self._count(model, "", CLIENT_GONE, started, size)

    def _direct_answer(
        self, cycle: DirectCycle, label: str, started: float, size: int,
        response: InferResponse, decoded: DecodedRequest,
    ) -> None:  # fmt: skip
        try:
            status, payload, headers = self._encoded(response, decoded)
        except Exception as exc:
            self._direct_failed(cycle, response.model, label, started, size, exc)
            return
        self._count(
            response.model, label, CLIENT_GONE if cycle.disconnected else 200, started, size
        )
        cycle.reply(status, payload, headers)

    def _direct_failed(
        self, cycle: DirectCycle, model: str, label: str, started: float, size: int,
        exc: BaseException,
    ) -> None:  # fmt: skip
        status, payload, headers = self._failure(exc, "POST", f"/v2/models/{model}/infer")
        self._count(model, label, CLIENT_GONE if cycle.disconnected else status, started, size)
        cycle.reply(status, payload, headers)

    def _failure(self, exc: BaseException, method: str, path: str) -> tuple[int, bytes, list[Any]]:
        """The answer to an error raised while handling a request (never a traceback)."""
        if isinstance(exc, _Reply):
            return exc.status, exc.body, exc.headers
        if isinstance(exc, EdgecloudError):
            release(exc)  # answered: its frames (and the body they hold) are not needed
            return exc.status_code, _error(exc.message), JSON
        if isinstance(exc, asyncio.CancelledError):  # the fast lane's future: loop stopping
            return (
                503,
                _error(
                    "the request was cancelled before its answer (the server is stopping): retry"
                ),
                JSON,
            )
        log.error("unhandled error on %s %s", method, path, exc_info=exc)
        release(exc)
        return 500, _error(f"internal error: {type(exc).__name__}"), JSON

    def _request_metrics(self, model: str, code: int) -> tuple[Any, Any]:
        """The request counter and latency children of (model, code) (:class:`RequestMetrics`)."""
        return self._requests.of(model, self.host.states, code)

    async def _read_body(
        self, scope: Scope, header_length: int | None, receive: Receive, declared: int | None
    ) -> bytes:
        """The body, refused with 413 as soon as it is known to be too large.

        Two limits: ``max_request_bytes`` for the whole body, and
        ``max_json_request_bytes`` for its JSON: the whole body of a JSON request,
        or the ``header_length`` bytes of a binary-extension one (parsed JSON
        costs ~20x its size in memory; binary tensors cost 1x).
        """
        limit = self.settings.max_request_bytes
        json_limit = self.settings.max_json_request_bytes
        if header_length is not None and header_length > json_limit:
            raise _json_too_large(header_length, json_limit)
        if header_length is None and json_limit < limit:
            limit, json_body = json_limit, True
        else:
            json_body = False
        if declared is not None and declared > limit:
            if json_body:
                raise _json_too_large(declared, limit)
            raise PayloadTooLargeError(
                f"request body of {declared} bytes exceeds the server's limit of {limit}"
            )
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk: bytes = message.get("body", b"")
        if not message.get("more_body", False) and len(chunk) <= limit:
            return chunk  # the whole body in one message: the common case
        chunks, total = [chunk], len(chunk)
        if total > limit:
            if json_body:
                raise _json_too_large(total, limit)
            raise PayloadTooLargeError(f"request body exceeds the server's limit of {limit}")
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                if json_body:
                    raise _json_too_large(total, limit)
                raise PayloadTooLargeError(f"request body exceeds the server's limit of {limit}")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _authorize(self, scope: Scope) -> None:
        if self._token is None:
            return
        for name, value in scope["headers"]:
            if name == b"authorization":  # the first one decides, as the lane's check
                if self.authorized(value):
                    return
                raise AuthenticationError("the bearer token is wrong")
        raise AuthenticationError("this server needs 'Authorization: Bearer <token>'")

    def _log_access(self, scope: Scope, status: int, size: int, started: float) -> None:
        client = scope.get("client") or ("-", 0)
        access_log.info(
            json.dumps(
                {
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "bytes": size,
                    "ms": round((time.perf_counter() - started) * 1e3, 3),
                    "client": client[0],
                }
            )
        )


def _error(message: str) -> bytes:
    """``{"error": message}``; a message quoting a request's lone surrogate (JSON's
    ``\\ud800`` escape decodes to one, which no UTF-8 encoder takes) keeps it escaped."""
    try:
        return dumps({"error": message})
    except TypeError:  # orjson refuses lone surrogates; json escapes them as \\udXXX
        return json.dumps({"error": message}, ensure_ascii=True).encode()


def _json_object(body: bytes, path: str) -> dict[str, Any]:
    """A control request's body: empty (tritonclient sends none for the index) or a
    JSON object; anything else is 400."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the body of {path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"the body of {path} must be a JSON object")
    return value


def _allow(method: str, allowed: str, scope: Scope) -> None:
    """405 with ``Allow: <allowed>`` unless ``method`` is it (RFC 9110 section 15.5.6)."""
    if method != allowed:
        raise _Reply(
            405,
            _error(f"{method} is not allowed on {scope['path']}; use {allowed}"),
            [*JSON, (b"allow", allowed.encode())],
        )


def _json_too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the JSON of this request ({size} bytes so far) exceeds the server's JSON limit of "
        f"{limit} bytes (max_json_request_bytes); send large tensors with the binary tensor "
        "data extension (binary_data_size, Inference-Header-Content-Length), which only "
        "max_request_bytes limits"
    )


def _declared(scope: Scope) -> int | None:
    """The request's Content-Length (None when absent), checked as the infer path checks it."""
    values = [value for name, value in scope["headers"] if name == b"content-length"]
    return _length_value(values, b"content-length")


def _length_value(values: list[bytes], name: bytes) -> int | None:
    """A length header's value: ASCII digits only, at most once (else 400).

    ``int()`` would take ``1_3``, `` +13`` and ``١٣``; a second header with
    another value is ambiguous (which does the body follow?), so it is refused
    rather than the last one silently winning.
    """
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequestError(
            f"header {name.decode()!r} appears {len(values)} times; send it once"
        )
    value = values[0]
    if not value.isdigit() or len(value) > 19:  # bytes.isdigit: ASCII 0-9 only
        raise InvalidRequestError(
            f"header {name.decode()!r} must be a decimal byte count, got {value[:40]!r}"
        )
    return int(value)
