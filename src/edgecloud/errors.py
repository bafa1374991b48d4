"""One exception hierarchy for everything edgecloud raises.

This module is also the one error catalogue of the wire: every class knows
the HTTP status and the gRPC status code the server answers with
(``status_code``, ``grpc_code``), and whether another path may succeed where
this one failed (``fallback``: the reason a Fallback, Cascade or outbox gives
when it tries elsewhere, or None when the caller's mistake must surface).
The server, the gateway and both clients map statuses with
:func:`error_for_http_status` and :func:`error_for_grpc_code` — there is no
other table. Messages say what to fix. Third-party exceptions (onnxruntime,
httpx, grpc, sqlite3) are translated at the boundary with
``raise SomeEdgecloudError(...) from exc``.

::

    EdgecloudError (500)
    ├── InvalidRequestError (400)            the caller sent something wrong
    │   ├── UnknownInputError                input name the model does not declare
    │   ├── MissingInputError                declared input absent from the request
    │   ├── ShapeMismatchError               wrong rank or dimension
    │   ├── DatatypeMismatchError            wrong dtype
    │   ├── UnsupportedDatatypeError         dtype with no Open Inference Protocol name
    │   ├── TensorValueError                 a value that does not fit its datatype
    │   ├── PayloadTooLargeError (413)       body above the server's size limit
    │   └── IdempotencyKeyReuseError (422)   a key reused with another payload
    ├── ConflictError (409)                  a request under the same key is in flight
    ├── AuthenticationError (401)            missing or wrong bearer token
    ├── PermissionDeniedError (403)          authenticated but not allowed
    │   └── PrivacyError                     data whose rules keep it on the device
    ├── ConfigError (400)                    invalid config / deployment / spec file
    ├── ModelNotFoundError (404)             unknown model name or version
    ├── ModelLoadError (503)                 model exists but cannot be loaded
    │   ├── ModelLoadFailedError (400)       an explicit load that did not load: fix the files
    │   └── ModelLayoutError                 a version directory that is not what it is named
    ├── UnavailableError (503)               server/link down or not ready: retryable
    │   └── RateLimitedError (429)           the server refused for load: retry after a while
    ├── DeadlineExceededError (504)          no answer within the request's time
    ├── CompressionError (422)               a model cannot be compressed, or lost too much
    ├── UpdateError (422)                    a model update cannot be built or applied
    │   ├── StructureChanged                 graphs differ beyond weights: send the full model
    │   ├── DeltaError                       a malformed delta, or one made for another base
    │   ├── UpdateRepositoryError (500)      update repository or signing keys missing, corrupt
    │   ├── PublishConflictError (409)       a version already published with other bytes
    │   ├── DownloadError (502)              a target's bytes are not what was signed, or no answer
    │   ├── LinkNotAllowedError (503)        the current link may not carry updates
    │   ├── UpdateStorageError (507)         the device's disk refused a write (full, read-only)
    │   └── UpdateAuthError (401)            the fleet server refused the device's token
    ├── InferenceError (500)                 the runtime failed on a valid request
    └── MissingDependencyError (500)         an optional extra is not installed
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tensors import RequestContext

__all__ = [
    "AuthenticationError",
    "CompressionError",
    "ConfigError",
    "ConflictError",
    "DatatypeMismatchError",
    "DeadlineExceededError",
    "DeltaError",
    "DownloadError",
    "EdgecloudError",
    "IdempotencyKeyReuseError",
    "InferenceError",
    "InvalidRequestError",
    "LinkNotAllowedError",
    "MissingDependencyError",
    "MissingInputError",
    "ModelLayoutError",
    "ModelLoadError",
    "ModelLoadFailedError",
    "ModelNotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PrivacyError",
    "PublishConflictError",
    "RateLimitedError",
    "ShapeMismatchError",
    "StructureChanged",
    "TensorValueError",
    "UnavailableError",
    "UnknownInputError",
    "UnsupportedDatatypeError",
    "UpdateAuthError",
    "UpdateError",
    "UpdateRepositoryError",
    "UpdateStorageError",
]

#: Most characters of a caller-supplied string an error message quotes.
CLIP_CHARS = 100


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters with an ellipsis, for error messages.

    Names, keys and values the caller sent are echoed in errors; unclipped, a
    10 KB model name becomes a 10 KB ``grpc-message`` header that the peer
    refuses (RESOURCE_EXHAUSTED instead of NOT_FOUND) and a bloated log line.
    """
    shown = repr(value) if isinstance(value, str) else repr(str(value))
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


class EdgecloudError(Exception):
    """Root of every error edgecloud raises on purpose."""

    status_code: int = 500
    """HTTP status the server answers with."""
    grpc_code: str = "INTERNAL"
    """Name of the ``grpc.StatusCode`` the gRPC front end answers with."""
    fallback: str | None = None
    """Why another path may succeed where this one failed (a Fallback's reason
    in the trace), or None: the caller's mistake, re-raised unchanged."""
    context: RequestContext | None = None
    """The privacy rules in force where the request failed (set by
    ``check_egress`` on a refusal and by every Guard the error passes), or
    None: what a deferral must store with the request so a Guard's decision
    is not lost (``edgecloud.routing.privacy.deferrable``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by message and attributes, not by constructor arguments.

        Errors cross process boundaries (``serve --workers`` children,
        multiprocessing pools). ``BaseException.__reduce__`` re-calls
        ``cls(*self.args)``, which breaks every subclass whose ``__init__``
        takes other arguments than the message (``MissingDependencyError``'s
        three, keyword-only ones): this rebuilds the instance without calling
        ``__init__`` and restores ``__dict__`` (message, sha256s, module, extra,
        ``retry_after_s``, a per-instance ``status_code``, ``context``).
        """
        return (_rebuild_error, (type(self), self.args, dict(self.__dict__)))


def _rebuild_error(
    cls: type[EdgecloudError], args: tuple[Any, ...], state: dict[str, Any]
) -> EdgecloudError:
    """The unpickling half of :meth:`EdgecloudError.__reduce__`."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class InvalidRequestError(EdgecloudError):
    """The request itself is wrong; retrying it unchanged cannot succeed."""

    status_code = 400
    grpc_code = "INVALID_ARGUMENT"


class UnknownInputError(InvalidRequestError):
    """The request names an input the model does not declare."""


class MissingInputError(InvalidRequestError):
    """A declared input is absent from the request."""


class ShapeMismatchError(InvalidRequestError):
    """An input tensor has the wrong rank or a wrong dimension."""


class DatatypeMismatchError(InvalidRequestError):
    """An input tensor has the wrong datatype."""


class UnsupportedDatatypeError(InvalidRequestError):
    """A numpy dtype or protocol datatype edgecloud cannot carry."""


class TensorValueError(InvalidRequestError):
    """A tensor value that does not fit its declared datatype (fraction for an
    integer, out of range, a string for a number, non-UTF-8 text); the message
    names the tensor, the element index, the datatype and the value."""


class PayloadTooLargeError(InvalidRequestError):
    """The request body is larger than the server accepts."""

    status_code = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class IdempotencyKeyReuseError(InvalidRequestError):
    """An idempotency key already bound to a different request payload
    (IETF httpapi Idempotency-Key draft: 422)."""

    status_code = 422
    grpc_code = "FAILED_PRECONDITION"


class ConflictError(EdgecloudError):
    """A request under the same idempotency key is still being computed
    (IETF httpapi Idempotency-Key draft: 409); retry shortly."""

    status_code = 409
    grpc_code = "ABORTED"


class AuthenticationError(EdgecloudError):
    """No bearer token, or the wrong one."""

    status_code = 401
    grpc_code = "UNAUTHENTICATED"


class PermissionDeniedError(EdgecloudError):
    """The caller is known but may not do this."""

    status_code = 403
    grpc_code = "PERMISSION_DENIED"


class PrivacyError(PermissionDeniedError):
    """The request's data may not leave the device, and only a remote could serve it."""

    fallback = "privacy"


class UnavailableError(EdgecloudError):
    """The server or the link is down, overloaded or not ready; retrying may work.

    Also the class of transient refusals (HTTP 408 Request Timeout, 425 Too
    Early): the request was fine, the moment was not.
    """

    status_code = 503
    grpc_code = "UNAVAILABLE"
    fallback = "unavailable"
    retry_after_s: float | None = None
    """Seconds the server asked the caller to wait before retrying (its
    ``Retry-After`` header, :func:`parse_retry_after`), or None: not said."""


class RateLimitedError(UnavailableError):
    """The server (or a proxy or quota in front of it) refused the request for
    load — HTTP 429 Too Many Requests, gRPC RESOURCE_EXHAUSTED that is not
    about message size. Not the request's fault: a fallback serves it
    elsewhere, an outbox keeps it and retries after ``retry_after_s``."""

    status_code = 429
    grpc_code = "RESOURCE_EXHAUSTED"
    fallback = "rate-limited"


class DeadlineExceededError(EdgecloudError):
    """No answer within the request's deadline or the server's timeout."""

    status_code = 504
    grpc_code = "DEADLINE_EXCEEDED"
    fallback = "timeout"


class ConfigError(EdgecloudError):
    """A configuration, deployment or spec file is invalid; the message names where."""

    status_code = 400
    grpc_code = "INVALID_ARGUMENT"


class ModelNotFoundError(EdgecloudError):
    """No model (or no such version of it) in the repository."""

    status_code = 404
    grpc_code = "NOT_FOUND"


class ModelLoadError(EdgecloudError):
    """A model is present but its files are missing, corrupt or not loadable."""

    status_code = 503
    grpc_code = "UNAVAILABLE"
    fallback = "not-ready"


class ModelLoadFailedError(ModelLoadError):
    """An explicit load (the repository extension) that did not load what it names:
    nothing of the model serves, or a new copy failed and the old one serves on.

    400 / INVALID_ARGUMENT, as Triton answers a failed load: the same load fails
    again until the model's files are fixed, so it is not a retryable 503.
    """

    status_code = 400
    grpc_code = "INVALID_ARGUMENT"


class ModelLayoutError(ModelLoadError):
    """A version directory that is not the version it is named: its ``version.json``
    records another number (a copy or link of another version), or it (or a file
    in it) links out of the repository.

    Permanent: no wait makes it load, so model control reports it as what it is,
    never as "incomplete or still changing" (a copy under way).
    """


class CompressionError(EdgecloudError):
    """A model could not be compressed, or the result failed its parity check."""

    status_code = 422
    grpc_code = "FAILED_PRECONDITION"


class UpdateError(EdgecloudError):
    """A model update (delta, download, install) cannot be built or applied."""

    status_code = 422
    grpc_code = "FAILED_PRECONDITION"


class StructureChanged(UpdateError):
    """Two model versions differ beyond their weights (renamed initializers, new
    nodes, other shapes, external or typed-field data): no tensor delta can
    carry the change, send the full model (Mender's fallback to the full image)."""


class DeltaError(UpdateError):
    """A delta that is malformed, truncated, or made for another base model.

    ``expected_sha256`` is the base the delta was made from and
    ``actual_sha256`` the model it was applied to, when the mismatch is the
    reason (both None otherwise).
    """

    def __init__(
        self,
        message: str,
        *,
        expected_sha256: str | None = None,
        actual_sha256: str | None = None,
    ) -> None:
        super().__init__(message)
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256


class UpdateRepositoryError(UpdateError):
    """The update repository or its signing keys are missing, unreadable,
    corrupt, or do not match each other (a key that is not the role's)."""

    status_code = 500
    grpc_code = "INTERNAL"


class PublishConflictError(UpdateError):
    """A model version is already published with other bytes: published
    versions are immutable (devices may have installed them); publish a new
    version number."""

    status_code = 409
    grpc_code = "ALREADY_EXISTS"


class DownloadError(UpdateError):
    """A target's bytes are not what the signed metadata says (length, sha256), or
    the update server did not answer a download; the device keeps the version it runs."""

    status_code = 502
    grpc_code = "UNAVAILABLE"


class UpdateAuthError(UpdateError):
    """The fleet server refused the device's bearer token (HTTP 401/403), or none was set."""

    status_code = 401
    grpc_code = "UNAUTHENTICATED"


class UpdateStorageError(UpdateError):
    """The device's storage refused an update's write (a full disk, a read-only or
    unwritable directory, an I/O error): nothing half-installed is served, and the
    update is tried again once the storage is fixed."""

    status_code = 507
    grpc_code = "RESOURCE_EXHAUSTED"


class LinkNotAllowedError(UpdateError):
    """The link the device is on may not carry updates (a metered link with
    ``metered_ok: false``); the download waits, its staging file kept."""

    status_code = 503
    grpc_code = "UNAVAILABLE"


class InferenceError(EdgecloudError):
    """The runtime failed while running a request that passed validation."""

    status_code = 500
    grpc_code = "INTERNAL"
    fallback = "server-error"


class MissingDependencyError(EdgecloudError):
    """A feature needs an optional extra that is not installed."""

    status_code = 500

    def __init__(self, module: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'edgecloud[{extra}]'"
        )
        self.module = module
        self.extra = extra


#: HTTP statuses a client maps to a class, where the status alone decides.
_BY_STATUS: dict[int, type[EdgecloudError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: ModelNotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    500: InferenceError,
    408: UnavailableError,  # Request Timeout: the server gave up waiting; re-send
    425: UnavailableError,  # Too Early (RFC 8470): re-send later
    429: RateLimitedError,
    503: UnavailableError,
    504: DeadlineExceededError,
}

#: gRPC status code names a client maps to a class.
_BY_GRPC: dict[str, type[EdgecloudError]] = {
    "INVALID_ARGUMENT": InvalidRequestError,
    "OUT_OF_RANGE": InvalidRequestError,
    "NOT_FOUND": ModelNotFoundError,
    "UNAUTHENTICATED": AuthenticationError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "RESOURCE_EXHAUSTED": PayloadTooLargeError,
    "FAILED_PRECONDITION": InvalidRequestError,
    "ABORTED": ConflictError,
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "CANCELLED": UnavailableError,
    "INTERNAL": InferenceError,
    "UNKNOWN": InferenceError,
}


def error_for_http_status(
    status: int, message: str, retry_after: str | None = None, *, now: float | None = None
) -> EdgecloudError:
    """The error a client raises for a non-200 HTTP answer.

    A 422 is an :class:`InvalidRequestError` (servers use it for bodies they
    cannot process, not only for reused idempotency keys); transient refusals
    (408, 425, 429, 503) are retryable (:class:`UnavailableError`, 429 a
    :class:`RateLimitedError`) and carry ``retry_after_s`` from the answer's
    ``Retry-After`` header value ``retry_after`` (:func:`parse_retry_after`,
    ``now``: Unix seconds, default the clock); another unknown 4xx is an
    :class:`InvalidRequestError`, an unknown 5xx an :class:`UnavailableError`.
    The error keeps the server's ``status_code``.
    """
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = UnavailableError if status >= 500 else InvalidRequestError
    error = cls(message)
    error.status_code = status
    if isinstance(error, UnavailableError):
        error.retry_after_s = parse_retry_after(retry_after, now=now)
    return error


#: Longest ``Retry-After`` a client honours, in seconds (one hour): a larger or
#: far-future value is clipped, so a misconfigured proxy cannot park an item for days.
MAX_RETRY_AFTER_S = 3600.0

#: Words with which gRPC and this server say RESOURCE_EXHAUSTED is about the
#: size of a message: grpc core's "Received message larger than max (N vs. M)"
#: / "Sent message larger than max", and this server's own 413 text
#: ("request body ... exceeds the server's limit of N"). Any other
#: RESOURCE_EXHAUSTED (a quota, a rate limiter) is a :class:`RateLimitedError`.
_SIZE_WORDS = ("larger than", "exceeds", "too large")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or None.

    RFC 9110 section 10.2.3: either delta-seconds (``"120"``, a non-negative
    integer) or an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``; ``now`` is
    the Unix time it is compared with, default ``time.time()``; a date in the
    past means 0). The result lies in ``[0, MAX_RETRY_AFTER_S]``; a missing or
    invalid value (a fraction, a negative number, an unreadable date) is None.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(int(text.lstrip("0")[:12] or 0)), MAX_RETRY_AFTER_S)
    from email.utils import parsedate_to_datetime  # here: email costs the edge 1.7 MB RSS

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one came without a zone
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(delay):
        return None
    return min(max(delay, 0.0), MAX_RETRY_AFTER_S)


def error_for_grpc_code(code: str, message: str) -> EdgecloudError:
    """The error a client raises for a failed gRPC call (``code`` is the
    ``grpc.StatusCode`` name, e.g. ``"INVALID_ARGUMENT"``).

    RESOURCE_EXHAUSTED is a :class:`PayloadTooLargeError` when the message is
    about message size (:data:`_SIZE_WORDS`), else a :class:`RateLimitedError`
    (quota, rate limiter: retryable; gRPC carries no Retry-After).
    """
    if code == "RESOURCE_EXHAUSTED" and not any(w in message.lower() for w in _SIZE_WORDS):
        return RateLimitedError(message)
    return _BY_GRPC.get(code, InferenceError)(message)


def describe(exc: BaseException) -> str:
    """One line saying what went wrong: the exception's text, else its type.

    Every place an exception becomes a message (the CLI, compression and
    split refusals) goes through this, so a refusal always ends in a reason:
    ``AssertionError()`` from onnxruntime's shape inference has an empty
    ``str`` and reads ``AssertionError (no message)``. An EdgecloudError's
    message stands alone; others are prefixed with their type.
    """
    text = " ".join(str(getattr(exc, "message", "") or exc).split())
    name = type(exc).__name__
    if not text:
        return f"{name} (no message)"
    return text if isinstance(exc, EdgecloudError) else f"{name}: {text}"
