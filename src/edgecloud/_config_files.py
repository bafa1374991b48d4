r"""Reading YAML config files into pydantic models, with errors that name file and field.

Every YAML config file edgecloud reads (deployments, server settings, workload
specs, model configs) goes through :class:`Loader` (:func:`load_yaml`,
:func:`read_mapping`): PyYAML's safe loader with two changes, so a file means
what editors, JSON Schema validators and ruamel.yaml (YAML 1.2, which
``edgecloud calibrate`` edits with) say it means:

- a key written twice in one mapping is an error naming the key and both
  lines (PyYAML silently keeps the last one; YAML 1.2 section 3.2.1.1 says
  keys are unique);
- floats are also resolved as YAML 1.2's core schema writes them
  (section 10.3.2: ``[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?``),
  so ``5e-1`` and ``1e-3`` are numbers, not the strings YAML 1.1 makes them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError

__all__ = ["DuplicateKeyError", "Loader", "checked_path", "load_yaml", "read_mapping", "validate"]

M = TypeVar("M", bound=BaseModel)

MERGE = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping writes one key twice."""


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader refusing duplicate keys and reading YAML 1.2 floats."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE:  # keys a merge brings may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # unhashable: the safe loader refuses it itself
                    continue
                if earlier is not key_node:
                    raise DuplicateKeyError(
                        f"line {key_node.start_mark.line + 1}: the key {key!r} is written a "
                        f"second time (first at line {earlier.start_mark.line + 1}); a key "
                        "may appear once in a mapping: keep one"
                    )
        return super().construct_mapping(node, deep=deep)


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def load_yaml(text: str, where: str) -> Any:
    """The YAML document ``text`` read by :class:`Loader`; ConfigError ``where: not valid YAML``."""
    try:
        return yaml.load(text, Loader=Loader)  # Loader is a SafeLoader
    except DuplicateKeyError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from exc


def read_mapping(path: Path, kind: str, needs: str) -> dict[str, Any]:
    """The YAML mapping in ``path`` (read by :class:`Loader`); ConfigError when missing,
    invalid, with a key twice, or not a mapping."""
    checked_path(path, "file", f"{kind} file")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"), str(path))
    except OSError as exc:
        raise path_error(path, "file", f"{kind} file", exc) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid YAML: not UTF-8 text ({exc.reason})") from exc
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
