"""Writing a command's output files without losing a user's: replace a file
only when it is one the command itself writes, and replace each file whole
(by rename, through a symlink: the link stays, its target is replaced).

A command replaces an existing file when it holds exactly what it would
write, or when it is recognisably that command's own generated output (a
report starting with the command's header, a PNG by its signature); a file
the user may have edited (a ``deployment.yaml`` the user tunes or
``calibrate`` writes a threshold into) is only ever replaced when identical.
Anything else is refused unless told to (``--force``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from .errors import ConfigError

__all__ = ["PNG_SIGNATURE", "is_png", "replace_atomically", "replaced", "write_outputs"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
"""The first eight bytes of every PNG file (RFC 2083, section 3.1)."""


def is_png(data: bytes) -> bool:
    """Whether ``data`` starts with the PNG signature (:data:`PNG_SIGNATURE`)."""
    return data.startswith(PNG_SIGNATURE)


def write_outputs(
    files: Mapping[Path, bytes],
    *,
    ours: Mapping[Path, Callable[[bytes], bool]] | None = None,
    force: bool = False,
    command: str,
) -> list[Path]:
    """Write ``files`` (path -> content), each replaced whole; the paths written.

    ``ours``: for the generated files, a test telling the command's own output
    (the existing content -> True to replace it). Before anything is written:
    ConfigError when a path is a directory, or (unless ``force``) when an
    existing path holds something else than what would be written and is not
    recognised by ``ours``, naming those files and ``--force`` (``command``:
    the command that writes them, for the message). So a refusal writes
    nothing.
    """
    tests = ours or {}
    for path in files:
        if path.is_dir():
            raise ConfigError(f"{path} is a directory; {command} writes a file there")
    foreign = []
    for path, data in files.items():
        if not path.exists() and not path.is_symlink():
            continue
        existing = _content(path)
        if existing == data:
            continue
        if existing is not None and path in tests and tests[path](existing):
            continue
        foreign.append(path)
    if foreign and not force:
        names = ", ".join(str(p) for p in foreign)
        one = len(foreign) == 1
        raise ConfigError(
            f"{names} {'exists' if one else 'exist'} and {'is' if one else 'are'} not what "
            f"{command} would write (your own file, or edited since?); nothing written: move "
            f"{'it' if one else 'them'} away, use another output directory, or pass --force "
            f"to replace {'it' if one else 'them'}"
        )
    for path, data in files.items():
        replace_atomically(path, data)
    return list(files)


def _content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def replace_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` by rename: a reader sees the old file or the
    new one, never a part; a failure leaves the old one. ConfigError when the
    directory cannot be written. A symlink stays: its target is replaced."""
    path = path.resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replaced(path: Path) -> Iterator[Path]:
    """A scratch file beside ``path`` (same suffix, for writers that infer the
    format from it, like matplotlib) that replaces ``path`` by rename when the
    block succeeds; removed when it fails, leaving ``path`` as it was. A
    symlink stays: its target is replaced."""
    path = path.resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
