"""Change one scalar of a user's YAML file and nothing else.

The file is the user's: comments, key order, flow mappings, anchors, quoting,
indentation and line endings are theirs. ruamel.yaml's round-trip composer
(YAML 1.2) finds the exact characters of the scalar at a path; only those are
replaced (an anchor or tag in front of them is kept), so ``diff`` shows one
changed line. The result is re-read the way ``edgecloud.load`` reads it and
must equal the old tree with that one value changed, else nothing is written.
The file is replaced atomically (a temporary file in the same directory,
fsynced, given the old file's permission bits, then renamed over it; a
symlink's target is the file replaced).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["Scalar", "locate", "replace_scalar"]

Key = str | int
BOM = "\ufeff"


class Scalar:
    """Where a scalar's value is in a file's text: ``text[start:end]``."""

    def __init__(self, text: str, start: int, end: int) -> None:
        self.text, self.start, self.end = text, start, end

    def replaced(self, value: str) -> str:
        return self.text[: self.start] + value + self.text[self.end :]


def _dotted(keys: Sequence[Key]) -> str:
    return ".".join(map(str, keys))


def locate(text: str, keys: Sequence[Key], where: str) -> Scalar:
    """The scalar at ``keys`` (mapping keys, or ints for list items) in YAML ``text``.

    Raises ConfigError (``where: path: ...``) when the path is not there, the
    value is not a plain scalar written at that key (an alias ``*name`` or a
    value that only a merge key ``<<`` provides: changing it would change
    other nodes too), or the text is not YAML.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    body = text[len(BOM) :] if text.startswith(BOM) else text
    try:
        node = YAML().compose(body)
    except YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from exc
    key_node = None
    for depth, key in enumerate(keys):
        here = _dotted(keys[: depth + 1])
        if isinstance(node, MappingNode):
            found = [(k, v) for k, v in node.value if getattr(k, "value", None) == key]
            if not found:
                merged = any(getattr(k, "tag", "").endswith(":merge") for k, _ in node.value)
                raise ConfigError(
                    f"{where}: {here}: "
                    + (
                        "comes from a YAML merge key (<<); write it in this mapping to change it"
                        if merged
                        else "not found"
                    )
                )
            key_node, node = found[-1]
        elif isinstance(node, SequenceNode) and isinstance(key, int) and key < len(node.value):
            key_node, node = None, node.value[key]
        else:
            raise ConfigError(f"{where}: {here}: not found")
    if not isinstance(node, ScalarNode):
        raise ConfigError(f"{where}: {_dotted(keys)}: not a single value")
    start, end = node.start_mark.index, node.end_mark.index
    if key_node is not None and start < key_node.end_mark.index:
        raise ConfigError(
            f"{where}: {_dotted(keys)}: is a YAML alias (*{node.anchor}); write the value "
            "there to change it"
        )
    # keep an anchor (&name) or tag (!!float) written before the value
    while body[start] in "&!":
        start += len(body[start:end].split(None, 1)[0])
        while body[start] in " \t":
            start += 1
    offset = len(text) - len(body)
    return Scalar(text, start + offset, end + offset)


def _set(tree: Any, keys: Sequence[Key], value: Any) -> None:
    for key in keys[:-1]:
        tree = tree[key]
    tree[keys[-1]] = value


def replace_scalar(path: Path, keys: Sequence[Key], value: Any, rendered: str) -> None:
    """Write ``rendered`` (the YAML of ``value``) in place of the scalar at ``keys``.

    Checks that the new file reads (PyYAML, as ``edgecloud.load`` does) as the
    old tree with ``value`` at ``keys``; ConfigError and the file untouched
    otherwise. See the module docstring for what is preserved.
    """
    target = path.resolve()
    with target.open(encoding="utf-8", newline="") as f:
        text = f.read()
    new = locate(text, keys, str(path)).replaced(rendered)
    expected = yaml.safe_load(text)
    _set(expected, keys, value)
    if yaml.safe_load(new) != expected:
        raise ConfigError(
            f"{path}: {_dotted(keys)}: could not rewrite this value alone (an unusual YAML "
            f"form); set it by hand to {rendered}"
        )
    try:
        write_atomically(target, new)
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot write it ({exc.strerror or exc}); set {_dotted(keys)} to "
            f"{rendered} by hand"
        ) from exc


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8, newlines as given) by rename, keeping its mode."""
    mode = stat.S_IMODE(path.stat().st_mode)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
