"""One exception hierarchy for everything edgecloud raises.

Every error carries the HTTP status code (and so the gRPC code) the server
layer answers with, and a message that says what to fix. Third-party
exceptions (onnxruntime, httpx, grpc, sqlite3) are translated at the boundary
with ``raise SomeEdgecloudError(...) from exc``.

::

    EdgecloudError (500)
    ├── InvalidRequestError (400)            the caller sent something wrong
    │   ├── UnknownInputError                input name the model does not declare
    │   ├── MissingInputError                declared input absent from the request
    │   ├── ShapeMismatchError               wrong rank or dimension
    │   ├── DatatypeMismatchError            wrong dtype
    │   └── UnsupportedDatatypeError         dtype with no Open Inference Protocol name
    │   └── PayloadTooLargeError (413)       body above the server's size limit
    ├── AuthenticationError (401)            missing or wrong bearer token
    ├── PermissionDeniedError (403)          authenticated but not allowed
    │   └── PrivacyError                     data whose rules keep it on the device
    ├── ConfigError (400)                    invalid config / deployment / spec file
    ├── ModelNotFoundError (404)             unknown model name or version
    ├── ModelLoadError (503)                 model exists but cannot be loaded
    ├── UnavailableError (503)               server/link down or not ready: retryable
    ├── DeadlineExceededError (504)          no answer within the request's time
    ├── CompressionError (422)               a model cannot be compressed, or lost too much
    ├── InferenceError (500)                 the runtime failed on a valid request
    └── MissingDependencyError (500)         an optional extra is not installed
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CompressionError",
    "ConfigError",
    "DatatypeMismatchError",
    "DeadlineExceededError",
    "EdgecloudError",
    "InferenceError",
    "InvalidRequestError",
    "MissingDependencyError",
    "MissingInputError",
    "ModelLoadError",
    "ModelNotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PrivacyError",
    "ShapeMismatchError",
    "UnavailableError",
    "UnknownInputError",
    "UnsupportedDatatypeError",
]


class EdgecloudError(Exception):
    """Root of every error edgecloud raises on purpose."""

    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(EdgecloudError):
    """The request itself is wrong; retrying it unchanged cannot succeed."""

    status_code = 400


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


class PayloadTooLargeError(InvalidRequestError):
    """The request body is larger than the server accepts."""

    status_code = 413


class AuthenticationError(EdgecloudError):
    """No bearer token, or the wrong one."""

    status_code = 401


class PermissionDeniedError(EdgecloudError):
    """The caller is known but may not do this."""

    status_code = 403


class PrivacyError(PermissionDeniedError):
    """The request's data may not leave the device, and only a remote could serve it."""


class UnavailableError(EdgecloudError):
    """The server or the link is down, overloaded or not ready; retrying may work."""

    status_code = 503


class DeadlineExceededError(EdgecloudError):
    """No answer within the request's deadline or the server's timeout."""

    status_code = 504


class ConfigError(EdgecloudError):
    """A configuration, deployment or spec file is invalid; the message names where."""

    status_code = 400


class ModelNotFoundError(EdgecloudError):
    """No model (or no such version of it) in the repository."""

    status_code = 404


class ModelLoadError(EdgecloudError):
    """A model is present but its files are missing, corrupt or not loadable."""

    status_code = 503


class CompressionError(EdgecloudError):
    """A model could not be compressed, or the result failed its parity check."""

    status_code = 422


class InferenceError(EdgecloudError):
    """The runtime failed while running a request that passed validation."""

    status_code = 500


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
