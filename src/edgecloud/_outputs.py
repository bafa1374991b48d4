"""Writing a command's output files without losing a user's: refuse to replace
a file the user may have edited, and replace each file whole (by rename).

A command writes two kinds of files: *generated* ones (reports, plots), which
it replaces on every run, and *user-editable* ones (a ``deployment.yaml`` the
user tunes or ``calibrate`` writes a threshold into), which it replaces only
when they already hold exactly what it would write, or when told to (``--force``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

from .errors import ConfigError

__all__ = ["replace_atomically", "replaced", "write_outputs"]


def write_outputs(
    files: Mapping[Path, bytes],
    *,
    protected: Collection[Path] = (),
    force: bool = False,
    command: str,
) -> list[Path]:
    """Write ``files`` (path -> content), each replaced whole; the paths written.

    Before anything is written: ConfigError when a path is a directory, or
    when a ``protected`` path exists and holds something else than what would
    be written (unless ``force``), naming those files and ``--force``
    (``command``: the command that writes them, for the message). So a
    refusal writes nothing.
    """
    for path in files:
        if path.is_dir():
            raise ConfigError(f"{path} is a directory; {command} writes a file there")
    differ = [
        path
        for path in files
        if path in protected and path.exists() and _content(path) != files[path]
    ]
    if differ and not force:
        names = ", ".join(str(p) for p in differ)
        raise ConfigError(
            f"{names} {'differs' if len(differ) == 1 else 'differ'} from what {command} would "
            "write (edited since?); nothing written: move them away, use another output "
            "directory, or pass --force to replace them"
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
    directory cannot be written."""
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
    block succeeds; removed when it fails, leaving ``path`` as it was."""
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
