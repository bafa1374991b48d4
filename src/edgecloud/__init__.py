"""edgecloud: run ML inference on the device, on a server, or split between them.

The public surface lives here; modules beginning with ``_`` are private.
"""

from __future__ import annotations

from .backends.base import Backend, FunctionBackend
from .backends.local import LocalBackend
from .backends.remote import RemoteBackend
from .deployment import Deployment, load
from .errors import (
    AuthenticationError,
    ConfigError,
    DatatypeMismatchError,
    DeadlineExceededError,
    EdgecloudError,
    InferenceError,
    InvalidRequestError,
    MissingDependencyError,
    MissingInputError,
    ModelLoadError,
    ModelNotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PrivacyError,
    ShapeMismatchError,
    UnavailableError,
    UnknownInputError,
    UnsupportedDatatypeError,
)
from .repository import (
    DynamicBatching,
    ModelConfig,
    ModelRepository,
    ModelStatus,
    ModelVersion,
    VersionPolicy,
    config_from_onnx,
)
from .routing import (
    AuditLog,
    Backoff,
    Cascade,
    CircuitBreaker,
    Fallback,
    Guard,
    Outbox,
    OutboxFullError,
    calibrate,
    prefer_local,
    prefer_remote,
)
from .tensors import (
    InferRequest,
    InferResponse,
    RequestContext,
    Sensitivity,
    Span,
    TensorSpec,
    Trace,
    datatype_of,
    numpy_dtype,
)

__version__ = "0.1.0"

__all__ = [
    "AuditLog",
    "AuthenticationError",
    "Backend",
    "Backoff",
    "Cascade",
    "CircuitBreaker",
    "ConfigError",
    "DatatypeMismatchError",
    "DeadlineExceededError",
    "Deployment",
    "DynamicBatching",
    "EdgecloudError",
    "Fallback",
    "FunctionBackend",
    "Guard",
    "InferRequest",
    "InferResponse",
    "InferenceError",
    "InvalidRequestError",
    "LocalBackend",
    "MissingDependencyError",
    "MissingInputError",
    "ModelConfig",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelRepository",
    "ModelStatus",
    "ModelVersion",
    "Outbox",
    "OutboxFullError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PrivacyError",
    "RemoteBackend",
    "RequestContext",
    "Sensitivity",
    "ShapeMismatchError",
    "Span",
    "TensorSpec",
    "Trace",
    "UnavailableError",
    "UnknownInputError",
    "UnsupportedDatatypeError",
    "VersionPolicy",
    "__version__",
    "calibrate",
    "config_from_onnx",
    "datatype_of",
    "load",
    "numpy_dtype",
    "prefer_local",
    "prefer_remote",
]
