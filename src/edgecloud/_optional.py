"""Lazy imports of optional extras, with an actionable error when one is missing.

Every import of a package outside the core (numpy, onnxruntime, pydantic,
pyyaml, typer, rich) goes through :func:`require`, or sits in a
``try: ... except ImportError:`` with a fallback, or under ``TYPE_CHECKING``;
``tests/adversarial/test_first_run.py`` checks every module's imports with
``ast`` so a bare one cannot come back.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependencyError

__all__ = ["require"]


def available(module: str) -> bool:
    """Whether ``module`` (top level, e.g. ``"matplotlib"``) can be imported here, without
    importing it: for what is drawn or written only when an extra is installed."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` (dotted, e.g. ``"matplotlib.pyplot"``) and return it.

    Raises:
        MissingDependencyError: ``module`` or a package it imports is not
            installed; the message names the missing package, the
            ``feature`` that needs it and ``pip install 'edgecloud[extra]'``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        raise MissingDependencyError(missing, extra, feature) from exc
