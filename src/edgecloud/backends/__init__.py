"""Leaf backends: where inference actually runs."""

from .base import Backend, FunctionBackend
from .local import LocalBackend

__all__ = ["Backend", "FunctionBackend", "LocalBackend"]
