"""Reading YAML config files into pydantic models, with errors that name file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError

__all__ = ["read_mapping", "validate"]

M = TypeVar("M", bound=BaseModel)


def read_mapping(path: Path, kind: str, needs: str) -> dict[str, Any]:
    """The YAML mapping in ``path``; ConfigError when missing, invalid or not a mapping."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{kind} file {path} does not exist") from None
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
