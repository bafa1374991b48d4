"""Reading YAML config files into pydantic models, with errors that name file and field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError

__all__ = ["checked_path", "read_mapping", "validate"]

M = TypeVar("M", bound=BaseModel)


def read_mapping(path: Path, kind: str, needs: str) -> dict[str, Any]:
    """The YAML mapping in ``path``; ConfigError when missing, invalid or not a mapping."""
    checked_path(path, "file", f"{kind} file")
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise path_error(path, "file", f"{kind} file", exc) from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {kind} is a mapping with {needs}")
    return raw


def validate(model: type[M], raw: Any, at: str, where: str) -> M:
    """``model`` validated from ``raw``; the first error as ``where: yaml.path: message``."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in (*([at] if at else []), *first["loc"]))
        raise ConfigError(f"{where}: {loc or 'top level'}: {first['msg']}") from exc


def checked_path(
    path: Path, expect: Literal["file", "directory"], what: str, *, may_be_missing: bool = False
) -> Path:
    """``path`` once it is there, of the expected kind and readable; else a ConfigError.

    ``what`` names the path for the message (e.g. ``"deployment file"``); with
    ``may_be_missing`` a path that does not exist yet (one a command creates)
    passes, but one of the wrong kind does not.
    """
    if not path.exists():
        if may_be_missing and not path.is_symlink():
            return path
        raise ConfigError(f"{what} {path} does not exist; expected a {expect}")
    try:
        if expect == "file":
            if path.is_dir():
                raise ConfigError(f"{what} {path} is a directory; expected a file")
            with path.open("rb"):
                pass
        else:
            if not path.is_dir():
                raise ConfigError(f"{what} {path} is not a directory; expected a directory")
            os.listdir(path)
    except OSError as exc:
        raise path_error(path, expect, what, exc) from exc
    return path


def path_error(path: Path, expect: str, what: str, exc: OSError) -> ConfigError:
    """A ConfigError for an OSError reading ``path``: what went wrong, what was expected."""
    reason = exc.strerror or type(exc).__name__
    return ConfigError(f"{what} {path} cannot be read ({reason}); expected a readable {expect}")
