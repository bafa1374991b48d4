"""edgecloud: run ML inference on the device, on a server, or split between them.

The public surface lives here; modules beginning with ``_`` are private.

Importing the package is cheap: each public name is imported from its module
on first use (PEP 562 ``__getattr__``), so ``import edgecloud`` followed by a
:class:`LocalBackend` request loads numpy, onnxruntime and the modules that
request needs — not pydantic, PyYAML, the routing, deployment and remote
backends (see ``tests/test_edge_imports.py``, ``bench/edge_footprint.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends.base import Backend, FunctionBackend
    from .backends.local import LocalBackend
    from .backends.remote import RemoteBackend
    from .deployment import Deployment, DeploymentSpec, load
    from .errors import (
        AuthenticationError,
        CompressionError,
        ConfigError,
        ConflictError,
        DatatypeMismatchError,
        DeadlineExceededError,
        DeltaError,
        DownloadError,
        EdgecloudError,
        IdempotencyKeyReuseError,
        InferenceError,
        InvalidRequestError,
        LinkNotAllowedError,
        MissingDependencyError,
        MissingInputError,
        ModelLayoutError,
        ModelLoadError,
        ModelLoadFailedError,
        ModelNotFoundError,
        PayloadTooLargeError,
        PermissionDeniedError,
        PrivacyError,
        PublishConflictError,
        RateLimitedError,
        ShapeMismatchError,
        StructureChanged,
        TensorValueError,
        UnavailableError,
        UnknownInputError,
        UnsupportedDatatypeError,
        UpdateAuthError,
        UpdateError,
        UpdateRepositoryError,
        UpdateStorageError,
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
        Fastest,
        Guard,
        Outbox,
        OutboxFullError,
        OutboxStorageError,
        ShapedLink,
        prefer_local,
        prefer_remote,
    )
    from .routing.calibrate import calibrate
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

_EXPORTS: dict[str, str] = {
    "AuditLog": ".routing",
    "Backend": ".backends.base",
    "Backoff": ".routing",
    "Cascade": ".routing",
    "CircuitBreaker": ".routing",
    "Deployment": ".deployment",
    "DeploymentSpec": ".deployment",
    "DynamicBatching": ".repository",
    "Fallback": ".routing",
    "Fastest": ".routing",
    "FunctionBackend": ".backends.base",
    "Guard": ".routing",
    "InferRequest": ".tensors",
    "InferResponse": ".tensors",
    "LocalBackend": ".backends.local",
    "ModelConfig": ".repository",
    "ModelRepository": ".repository",
    "ModelStatus": ".repository",
    "ModelVersion": ".repository",
    "Outbox": ".routing",
    "OutboxFullError": ".routing",
    "OutboxStorageError": ".routing",
    "RemoteBackend": ".backends.remote",
    "RequestContext": ".tensors",
    "Sensitivity": ".tensors",
    "ShapedLink": ".routing",
    "Span": ".tensors",
    "TensorSpec": ".tensors",
    "Trace": ".tensors",
    "VersionPolicy": ".repository",
    "calibrate": ".routing",
    "config_from_onnx": ".repository",
    "datatype_of": ".tensors",
    "load": ".deployment",
    "numpy_dtype": ".tensors",
    "prefer_local": ".routing",
    "prefer_remote": ".routing",
}
"""Public name -> the module (relative to this package) that defines it; every other
name of ``__all__`` is an error class of :mod:`edgecloud.errors` (one tree, many names:
a new error is added to ``errors.py``, the TYPE_CHECKING import above and ``__all__``)."""

__all__ = [
    "AuditLog",
    "AuthenticationError",
    "Backend",
    "Backoff",
    "Cascade",
    "CircuitBreaker",
    "CompressionError",
    "ConfigError",
    "ConflictError",
    "DatatypeMismatchError",
    "DeadlineExceededError",
    "DeltaError",
    "Deployment",
    "DeploymentSpec",
    "DownloadError",
    "DynamicBatching",
    "EdgecloudError",
    "Fallback",
    "Fastest",
    "FunctionBackend",
    "Guard",
    "IdempotencyKeyReuseError",
    "InferRequest",
    "InferResponse",
    "InferenceError",
    "InvalidRequestError",
    "LinkNotAllowedError",
    "LocalBackend",
    "MissingDependencyError",
    "MissingInputError",
    "ModelConfig",
    "ModelLayoutError",
    "ModelLoadError",
    "ModelLoadFailedError",
    "ModelNotFoundError",
    "ModelRepository",
    "ModelStatus",
    "ModelVersion",
    "Outbox",
    "OutboxFullError",
    "OutboxStorageError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PrivacyError",
    "PublishConflictError",
    "RateLimitedError",
    "RemoteBackend",
    "RequestContext",
    "Sensitivity",
    "ShapeMismatchError",
    "ShapedLink",
    "Span",
    "StructureChanged",
    "TensorSpec",
    "TensorValueError",
    "Trace",
    "UnavailableError",
    "UnknownInputError",
    "UnsupportedDatatypeError",
    "UpdateAuthError",
    "UpdateError",
    "UpdateRepositoryError",
    "UpdateStorageError",
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


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and cache the name here (PEP 562).

    A name that is not public but is a submodule or subpackage
    (``edgecloud.errors``, ``edgecloud.fleet``, ``edgecloud.server``...) is
    imported on demand, as an eager package would have it bound after
    ``import edgecloud``; anything else is an AttributeError.
    """
    module = _EXPORTS.get(name) or (".errors" if name in __all__ else None)
    if module is None:
        return _submodule(name)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def _submodule(name: str) -> Any:
    """``edgecloud.<name>`` imported, or AttributeError when there is no such module.

    ``find_spec`` looks for the file first, so a missing name is an
    AttributeError (``hasattr`` works) while an ImportError raised *inside* an
    existing submodule still surfaces as itself.
    """
    from importlib.util import find_spec

    if name.startswith("__") or not name.isidentifier():
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if find_spec(f"{__name__}.{name}") is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f"{__name__}.{name}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
