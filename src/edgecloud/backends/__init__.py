"""Leaf backends: where inference actually runs.

Each backend is imported on first use (PEP 562 ``__getattr__``): a device that
only runs :class:`LocalBackend` never imports the remote clients (httpx, grpc).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Backend, FunctionBackend
    from .local import LocalBackend
    from .remote import RemoteBackend

__all__ = ["Backend", "FunctionBackend", "LocalBackend", "RemoteBackend"]

_EXPORTS = {
    "Backend": ".base",
    "FunctionBackend": ".base",
    "LocalBackend": ".local",
    "RemoteBackend": ".remote",
}


def __getattr__(name: str) -> Any:
    """Import a backend's module on first use and cache the name here (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
