"""Change one scalar of a user's YAML file and nothing else.

The file is the user's: comments, key order, flow mappings, anchors, quoting,
indentation and line endings are theirs. ruamel.yaml's round-trip composer
(YAML 1.2) finds the exact characters of the scalar at a path; only those are
replaced (an anchor or tag in front of them is kept), so ``diff`` shows one
changed line. The result is re-read the way ``edgecloud.load`` reads it
(:func:`edgecloud._config_files.load_yaml`) and must equal the old tree with
that one value changed, else nothing is written.

Refused, the file untouched: a path through a node that is shared (a YAML
alias ``*name``, or an anchored ``&name`` node aliased elsewhere: changing it
would change the other places too), a value only a merge key ``<<`` provides,
a mapping with the same key twice, a file without a write bit or that the
caller may not write.

Writing: under an exclusive ``fcntl.flock`` on the file (POSIX), the text is
read again, edited and written to a temporary file in the same directory
(fsynced, given the old file's permission bits and, where the caller may,
its owner and group), then renamed over it; so concurrent edits of one file
(two ``edgecloud calibrate --at`` runs) are applied one after the other and
none is lost. A symlink stays a link: the file it points to is the one
replaced (relative paths *in* the file, such as ``repository:``, are resolved
against the file as named, the link's directory, as ``edgecloud.load`` does).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from ._config_files import load_yaml
from .errors import ConfigError

__all__ = ["Scalar", "check_writable", "locate", "locked", "replace_scalar"]

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


def _references(root: Any) -> dict[int, tuple[int, tuple[int, int]]]:
    """Per node of a composed graph: how many places hold it (> 1: shared by an alias)
    and the first, in document order, as (id of the parent, position): where it is
    written (YAML defines an anchor before any alias of it)."""
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    seen: dict[int, tuple[int, tuple[int, int]]] = {}
    todo: list[tuple[Any, tuple[int, int]]] = [(root, (0, 0))]
    while todo:
        node, edge = todo.pop()
        count, first = seen.get(id(node), (0, edge))
        seen[id(node)] = (count + 1, first)
        if count:
            continue
        if isinstance(node, MappingNode):
            children = [v for pair in node.value for v in pair]
        elif isinstance(node, SequenceNode):
            children = list(node.value)
        else:
            continue
        todo.extend((child, (id(node), i)) for i, child in reversed(list(enumerate(children))))
    return seen


def locate(text: str, keys: Sequence[Key], where: str) -> Scalar:
    """The scalar at ``keys`` (mapping keys, or ints for list items) in YAML ``text``.

    Raises ConfigError (``where: path: ...``) when the path is not there, a
    node on it (a mapping, a list or the value) is shared (written as an
    alias ``*name``, or anchored ``&name`` and aliased elsewhere: changing it
    would change other places too), the value only comes from a merge key
    ``<<``, a mapping on the path has the key twice, the value is not a single
    scalar, or the text is not YAML.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    body = text[len(BOM) :] if text.startswith(BOM) else text
    try:
        node = YAML().compose(body)
    except YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from exc
    references = _references(node)
    key_node, parent, position = None, node, 0
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
            if len(found) > 1:
                lines = ", ".join(str(k.start_mark.line + 1) for k, _ in found)
                raise ConfigError(
                    f"{where}: {here}: the key is written {len(found)} times (lines {lines}); "
                    "keep one"
                )
            parent, position = node, 2 * node.value.index(found[0]) + 1
            key_node, node = found[0]
        elif isinstance(node, SequenceNode) and isinstance(key, int) and key < len(node.value):
            parent, position = node, key
            key_node, node = None, node.value[key]
        else:
            raise ConfigError(f"{where}: {here}: not found")
        count, first = references[id(node)]
        if count > 1:
            line = node.start_mark.line + 1
            written_here = first == (id(parent), position)
            raise ConfigError(
                f"{where}: {here}: "
                + (
                    f"is anchored (&{node.anchor}) and used elsewhere as *{node.anchor}"
                    if written_here
                    else f"is a YAML alias (*{node.anchor}) of the node at line {line}"
                )
                + f"; changing {_dotted(keys)} there would change every place it is used: "
                "write a separate copy to change it alone"
            )
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


def _unshared(tree: Any) -> Any:
    """A copy of a loaded tree in which no two places share a dict or list (aliases)."""
    if isinstance(tree, dict):
        return {k: _unshared(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unshared(v) for v in tree]
    return tree


def check_writable(path: Path) -> None:
    """ConfigError unless the caller may replace ``path`` (followed through a symlink).

    A file with no write bit for anyone is read-only by intent and refused even
    for root (for whom ``os.access`` always says yes).
    """
    target = path.resolve()
    try:
        mode = target.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    if not mode & 0o222 or not os.access(target, os.W_OK):
        raise ConfigError(
            f"{path}: the file is read-only (mode {stat.filemode(mode)}); make it writable "
            "(chmod u+w) to let calibrate write, or pass --dry-run"
        )


@contextlib.contextmanager
def locked(path: Path) -> Iterator[TextIO]:
    """``path`` opened for reading (UTF-8, newlines as written) under an exclusive flock.

    The lock is on the file's inode; a writer replaces the file by rename, so
    after waiting for the lock the file is reopened until the inode locked is
    the one the path names. Held until the block ends (the rename included).
    """
    import fcntl

    while True:
        f = path.open(encoding="utf-8", newline="")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            if os.fstat(f.fileno()).st_ino == path.stat().st_ino:
                break
        except BaseException:
            f.close()
            raise
        f.close()  # replaced while we waited: lock the new file
    try:
        yield f
    finally:
        f.close()  # releases the lock


def replace_scalar(path: Path, keys: Sequence[Key], value: Any, rendered: str) -> None:
    """Write ``rendered`` (the YAML of ``value``) in place of the scalar at ``keys``.

    Under the file's lock, reads it again and checks that the new text reads
    (as ``edgecloud.load`` does) as the old tree with ``value`` at ``keys``;
    ConfigError and the file untouched otherwise (also for a read-only file,
    :func:`check_writable`). See the module docstring for what is preserved.
    """
    target = path.resolve()
    check_writable(path)
    try:
        with locked(target) as f:
            text = f.read()
            new = locate(text, keys, str(path)).replaced(rendered)
            expected = _unshared(load_yaml(text, str(path)))
            _set(expected, keys, value)
            if _unshared(load_yaml(new, str(path))) != expected:
                raise ConfigError(
                    f"{path}: {_dotted(keys)}: could not rewrite this value alone (an unusual "
                    f"YAML form); set it by hand to {rendered}"
                )
            write_atomically(target, new)
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot write it ({exc.strerror or exc}); set {_dotted(keys)} to "
            f"{rendered} by hand"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from exc


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8, newlines as given) by rename.

    The new file gets the old one's permission bits, and its owner and group
    where the caller may set them (root: both; others: the group, if they
    are in it), so a run as another user does not take the file over.
    """
    old = path.stat()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(old.st_mode))
        with contextlib.suppress(OSError):
            os.chown(tmp, old.st_uid if os.geteuid() == 0 else -1, old.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
