"""Leaf backends: where inference actually runs."""

from .base import Backend, FunctionBackend
from .local import LocalBackend
from .remote import RemoteBackend

__all__ = ["Backend", "FunctionBackend", "LocalBackend", "RemoteBackend"]
