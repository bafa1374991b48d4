"""RemoteBackend: an Open Inference Protocol (KServe v2) client over HTTP or gRPC.

``http://`` and ``https://`` URLs speak REST; ``grpc://host:port`` and
``grpcs://host:port`` speak ``inference.GRPCInferenceService``.

Works against edgecloud's server and any other v2 server (Triton, MLServer,
KServe). Binary tensors by default; a server that rejects them (MLServer
answers 422/400) is remembered and spoken to in JSON from then on. One
connection pool per backend, reused by sync and async calls. Failures are
translated into edgecloud's exception tree:

- connection refused, reset, DNS, TLS → :class:`UnavailableError` (retryable);
- timeouts → :class:`DeadlineExceededError`;

One time budget per request: ``min(timeout, the request's remaining
deadline)``, fixed when ``infer`` starts. Every network wait of the request
— the one-time ``/v2`` extensions probe, the call itself, a retry in JSON —
gets what is left of that budget, never a fresh ``timeout``, so against a
hung server ``infer`` returns after the budget, not a multiple of it (the
async path is also cut at the budget as a whole; gRPC uses the budget as the
call's deadline).
- 4xx → the matching client error with the server's message; 5xx → Unavailable
  (503) or InferenceError.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

from .._optional import require
from ..errors import (
    DeadlineExceededError,
    EdgecloudError,
    UnavailableError,
    clip,
    error_for_http_status,
)
from ..routing.privacy import AuditLog, check_egress
from ..tensors import InferRequest, InferResponse, Span
from ..wire.rest import HEADER_LENGTH, decode_response, encode_request, loads
from .base import Backend
from .remote_grpc import GrpcTransport
from .remote_url import check_timeout, check_url

__all__ = ["RemoteBackend"]


class RemoteBackend(Backend):
    """Send requests to a v2 inference server over HTTP(S).

    >>> with RemoteBackend("http://127.0.0.1:8000") as remote:  # doctest: +SKIP
    ...     remote.infer(InferRequest("digits-large", {"pixels": x}))
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        binary: bool = True,
        verify: bool | str | ssl.SSLContext = True,
        max_connections: int = 64,
        root_certificates: bytes | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        parts = check_url(url)
        self.url = parts.base
        self.name = f"remote:{self.url}"
        self.timeout = timeout = check_timeout(timeout, f"timeout of {self.url}")
        self.audit = audit
        self._grpc: GrpcTransport | None = None
        if parts.scheme in ("grpc", "grpcs"):
            self._grpc = GrpcTransport(
                parts.target,
                token=token,
                tls=parts.scheme == "grpcs",
                root_certificates=root_certificates,
            )
            binary = True
        httpx = require("httpx", extra="remote", feature="RemoteBackend")
        self.binary = binary
        self._checked_extensions = not binary
        self._binary_advertised = False
        """The server's metadata lists ``binary_tensor_data``: a 4xx is then
        about the request, never a reason to fall back to JSON."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if isinstance(verify, str):  # a CA bundle to trust (e.g. a self-signed certificate)
            verify = ssl.create_default_context(cafile=verify)
        limits = httpx.Limits(max_connections=max_connections)
        self._httpx = httpx
        self._client = httpx.Client(headers=headers, timeout=timeout, verify=verify, limits=limits)
        self._async: Any = None
        self._async_args = {
            "headers": headers,
            "timeout": timeout,
            "verify": verify,
            "limits": limits,
        }

    # -- public ----------------------------------------------------------------

    def infer(self, request: InferRequest) -> InferResponse:
        outgoing = self._egress(request)
        end = self._end_for(outgoing)
        if self._grpc is not None:
            answer = self._grpc.infer(outgoing, self._left(end, outgoing), self.name)
            return _answering(answer, request)
        return _answering(self._infer_http(outgoing, end), request)

    def _infer_http(self, request: InferRequest, end: float) -> InferResponse:
        """``request`` (already past egress) over HTTP within the budget ending at ``end``."""
        if not self._checked_extensions:
            self._check_extensions(end, request)
        body, headers, path = self._prepare(request)
        started = time.perf_counter()
        try:
            reply = self._send("POST", path, end, request, content=body, headers=headers)
        except self._httpx.HTTPError as exc:
            raise self._transport_error(exc, request) from exc
        response = self._finish(request, reply, len(body), started)
        return response if response is not None else self._infer_http(request, end)

    def _send(self, method: str, url: str, end: float, request: InferRequest, **kw: Any) -> Any:
        """One sync HTTP exchange in which each phase (pool wait, connect, send,
        read of the headers, read of the body) waits at most what is left of the
        budget when it starts, not a fresh timeout each.

        httpx gives every phase the full timeout; httpcore looks the phase's
        timeout up in the request's ``timeout`` extension as the phase starts,
        so a mapping that answers with the time left shrinks each in turn.
        Limit: within one phase the socket reads share the value taken at its
        start, so a server that trickles its answer byte by byte can stretch one
        phase (a hung or stopped server cannot).
        """
        built = self._client.build_request(method, url, timeout=self._left(end, request), **kw)
        built.extensions["timeout"] = _Remaining(end, built.extensions["timeout"])
        return self._client.send(built)

    async def infer_async(self, request: InferRequest) -> InferResponse:
        if self._grpc is not None:
            return await asyncio.to_thread(self.infer, request)
        if self._async is None:
            self._async = self._httpx.AsyncClient(**self._async_args)
        outgoing = self._egress(request)
        end = self._end_for(outgoing)
        try:
            async with asyncio.timeout(self._left(end, outgoing)):  # the budget as a whole
                return _answering(await self._infer_http_async(outgoing, end), request)
        except TimeoutError as exc:
            if isinstance(exc, EdgecloudError):
                raise
            raise self._out_of_time(outgoing) from None

    async def _infer_http_async(self, request: InferRequest, end: float) -> InferResponse:
        if not self._checked_extensions:
            await asyncio.to_thread(self._check_extensions, end, request)
        body, headers, path = self._prepare(request)
        started = time.perf_counter()
        try:
            reply = await self._async.post(
                path, content=body, headers=headers, timeout=self._left(end, request)
            )
        except self._httpx.HTTPError as exc:
            raise self._transport_error(exc, request) from exc
        response = self._finish(request, reply, len(body), started)
        return response if response is not None else await self._infer_http_async(request, end)

    def ready(self, model: str | None = None) -> bool:
        """Whether the server (or one model on it) answers ready; False when unreachable."""
        if self._grpc is not None:
            return self._grpc.ready(model)
        path = "/v2/health/ready" if model is None else f"/v2/models/{model}/ready"
        try:
            return bool(self._client.get(self.url + path).status_code == 200)
        except self._httpx.HTTPError:
            return False

    def ping(self) -> float | None:
        """Seconds for a liveness round trip (a light RTT probe), None when unreachable."""
        started = time.perf_counter()
        if self._grpc is not None:
            return time.perf_counter() - started if self._grpc.ready(None) else None
        try:
            reply = self._client.get(f"{self.url}/v2/health/live", timeout=min(self.timeout, 2.0))
        except self._httpx.HTTPError:
            return None
        return time.perf_counter() - started if reply.status_code == 200 else None

    def metadata(self, model: str) -> dict[str, Any]:
        """The server's metadata for ``model``."""
        if self._grpc is not None:
            return self._grpc.metadata(model)
        try:
            reply = self._client.get(f"{self.url}/v2/models/{model}")
        except self._httpx.HTTPError as exc:
            raise UnavailableError(f"{self.url} is unreachable: {exc}") from exc
        if reply.status_code != 200:
            raise _status_error(reply, self.url)
        result: dict[str, Any] = loads(reply.content)
        return result

    def close(self) -> None:
        self._client.close()
        if self._grpc is not None:
            self._grpc.close()
        if self._async is not None:
            # An AsyncClient cannot be closed without a loop; dropping it closes its pool.
            self._async = None

    async def aclose(self) -> None:
        self._client.close()
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    # -- internals -------------------------------------------------------------

    def _egress(self, request: InferRequest) -> InferRequest:
        """The one door requests leave by: privacy check, then the audit record.

        Returns the request as it may leave (``check_egress`` drops the
        caller's parameters and id under ``features_only``); raises
        :class:`~edgecloud.errors.PrivacyError` when it may not leave at all.
        """
        outgoing, dropped = check_egress(request, self.url)
        if self.audit is not None:
            self.audit.record(outgoing, self.url, dropped)
        return outgoing

    def _check_extensions(self, end: float, request: InferRequest) -> None:
        """Use binary tensors only if the server advertises ``binary_tensor_data``.

        Asked once, from the server metadata. Servers without the extension do
        not always answer a binary body with a clean 4xx (MLServer 1.7 fails
        with a 500), so the client must not find out by trial. It waits only
        for what is left of the request's budget (``end``, monotonic seconds).
        """
        try:
            reply = self._send("GET", f"{self.url}/v2", end, request)
        except self._httpx.HTTPError:
            return  # unreachable now: decide on the next call (the budget keeps counting)
        self._checked_extensions = True
        if reply.status_code == 200:
            try:
                extensions = loads(reply.content).get("extensions", [])
            except (ValueError, AttributeError):
                extensions = []
            self.binary = self._binary_advertised = "binary_tensor_data" in extensions

    def _prepare(self, request: InferRequest) -> tuple[bytes, dict[str, str], str]:
        body, length = encode_request(request, binary=self.binary)
        headers = {"Content-Type": "application/octet-stream" if length else "application/json"}
        if length is not None:
            headers["Inference-Header-Content-Length"] = str(length)
        if request.context.idempotency_key:
            headers["Idempotency-Key"] = request.context.idempotency_key
        version = f"/versions/{request.version}" if request.version else ""
        path = f"{self.url}/v2/models/{request.model}{version}/infer"
        return body, headers, path

    def _end_for(self, request: InferRequest) -> float:
        """``time.monotonic()`` by which the request must be answered: the client
        timeout, shortened to the request's deadline; raises if that has passed."""
        remaining = request.context.remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceededError(f"deadline passed before sending to {self.url}")
        budget = self.timeout if remaining is None else min(self.timeout, remaining)
        return time.monotonic() + budget

    def _left(self, end: float, request: InferRequest) -> float:
        """Seconds left of the request's budget; DeadlineExceededError when none."""
        left = end - time.monotonic()
        if left <= 0:
            raise self._out_of_time(request)
        return left

    def _out_of_time(self, request: InferRequest) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"{self.url} did not answer {clip(request.model)} within the request's time "
            f"(client timeout {self.timeout:g} s or the request's deadline, whichever is first)"
        )

    def _finish(
        self, request: InferRequest, reply: Any, sent: int, started: float
    ) -> InferResponse | None:
        """The response, or None when the server refused binary tensors (retry in JSON)."""
        elapsed = time.perf_counter() - started
        if reply.status_code != 200:
            if (
                self.binary
                and not self._binary_advertised
                and reply.status_code in (400, 415, 422)
                and _rejects_binary(reply)
            ):
                self.binary = False  # e.g. MLServer: no binary tensor extension
                return None
            raise _status_error(reply, self.url)
        length = reply.headers.get(HEADER_LENGTH)
        response = decode_response(
            reply.content, int(length) if length is not None else None, self.name
        )
        response.trace.spans[0] = Span(
            self.name, "network", elapsed, f"POST {request.model}", sent, len(reply.content)
        )
        return response

    def _transport_error(self, exc: Exception, request: InferRequest) -> EdgecloudError:
        if isinstance(exc, self._httpx.TimeoutException):
            return DeadlineExceededError(
                f"{self.url} did not answer {clip(request.model)} in time ({type(exc).__name__})"
            )
        return UnavailableError(f"{self.url} is unreachable: {type(exc).__name__}: {exc}")


def _answering(response: InferResponse, request: InferRequest) -> InferResponse:
    """``response`` echoing the caller's id (which may have been held back at egress)."""
    if request.id:
        response.id = request.id
    return response


class _Remaining(dict[str, float | None]):
    """httpcore's per-request timeouts, each answering the seconds left until ``end``
    (looked up as each phase of the exchange starts)."""

    def __init__(self, end: float, phases: dict[str, float | None]) -> None:
        super().__init__(phases)
        self.end = end

    def get(self, key: str, default: Any = None) -> Any:
        return max(self.end - time.monotonic(), 1e-3) if key in self else default


def _message(content: bytes) -> str:
    try:
        body = loads(content)
    except ValueError:
        return content[:200].decode(errors="replace")
    if isinstance(body, dict):
        error = body.get("error") or body.get("detail") or body
        return str(error)
    return str(body)


def _rejects_binary(reply: Any) -> bool:
    text = reply.content[:2000].decode(errors="replace").lower()
    return "binary" in text or "json" in text or "decode" in text or reply.status_code == 422


def _status_error(reply: Any, url: str) -> EdgecloudError:
    """The catalogue's error for a non-200 ``reply`` (an ``httpx.Response``),
    with its ``Retry-After`` header (a 408, 425, 429 or 503's wait)."""
    status = reply.status_code
    return error_for_http_status(
        status,
        f"{url} answered {status}: {_message(reply.content)}",
        reply.headers.get("retry-after"),
    )
