"""The update agent's durable state: what each model serves, what it keeps, what it refuses.

One JSON file, ``agent.json`` in the agent's state directory, replaced
atomically and durably (:func:`edgecloud.repository._write_atomic` with
fsync of the file and the directory) at every change, *before* the change it
describes is made visible: so after a SIGKILL or a power cut the file names a
version that is whole on disk. Per model::

    {"active": int | None,      # the version served
     "previous": int | None,    # kept on disk to roll back to
     "bad": [int, ...],         # failed a health check, a load or the watch: never again
     "watching": int | None,    # a swap whose first requests are being counted
     "installing": int | None}  # written before add_version: not served after a crash
                                # until its health check passes

An exclusive ``flock`` on ``agent.lock`` keeps a second agent (``fleet check``
while ``edgecloud edge`` runs) off the same directory.

A state file that is not this shape (torn, empty, ``[]``, a wrong type) has
one policy: it is moved aside to ``agent.json.corrupt-<UTC>`` and the agent
starts from the verified versions on disk (the newest that loads is served),
reporting one warning (:attr:`AgentState.recovered`, logged and sent as an
``error`` telemetry event). Nothing waits for a person to move the file.

Storage failures (a full disk, a read-only directory, an I/O error) are
translated once, by :func:`storage_errors`, into
:class:`~edgecloud.errors.UpdateStorageError`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UpdateStorageError
from ..repository import _write_atomic

__all__ = ["STATE_FILE", "AgentState", "storage_errors"]

log = logging.getLogger("edgecloud.fleet")

STATE_FILE = "agent.json"
DEFAULTS: dict[str, Any] = {
    "active": None, "previous": None, "bad": [], "watching": None, "installing": None,
}  # fmt: skip


class AgentState:
    """The state file of one agent, locked for this process's life."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / STATE_FILE
        self._lock_fd: int | None = _lock_state(state_dir)
        self.recovered: str | None = None
        """Why the state file was set aside at start (None: it was sound or absent)."""
        self._data, self.recovered = _read_state(self.path)
        if self.recovered is not None:
            log.warning("fleet: %s", self.recovered)

    def get(self, model: str) -> dict[str, Any]:
        """A copy of ``model``'s entry, every key present (see the module docstring)."""
        return {**DEFAULTS, **self._data.get(model, {})}

    def save(self, model: str, **changes: Any) -> None:
        """Change ``model``'s entry and write the file (atomic, durable)."""
        entry = {**self.get(model), **changes}
        data = {**self._data, model: entry}
        with storage_errors("the update agent's state"):
            _write_atomic(self.path, json.dumps(data, indent=1).encode(), durable=True)
        self._data = data  # in memory only once it is on disk

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _lock_state(state_dir: Path) -> int:
    """An exclusive ``flock`` on ``state_dir/agent.lock`` for this agent's life (released by
    the kernel when the process dies, SIGKILL included). ConfigError when another holds it."""
    import fcntl

    fd = os.open(state_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"another update agent (pid {holder}) uses {state_dir}; ask it to check now "
            f"with: kill -USR1 {holder}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _read_state(path: Path) -> tuple[dict[str, Any], str | None]:
    """The state in ``path`` and None; or, for a file that is not a state, ``{}`` and why
    (the file moved aside to ``<path>.corrupt-<UTC>``)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, _set_aside(path, f"unreadable ({os.strerror(exc.errno or 0).lower()})")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}, _set_aside(path, "not JSON (empty or torn)")
    problem = _shape_problem(data)
    if problem is not None:
        return {}, _set_aside(path, problem)
    return data, None


def _shape_problem(data: Any) -> str | None:
    """What makes ``data`` not a state (module docstring), None when it is one."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    for model, entry in data.items():
        if not isinstance(entry, dict):
            return f"{model!r} is a {type(entry).__name__}, not an object"
        for key in ("active", "previous", "watching", "installing"):
            value = entry.get(key)
            if value is not None and (type(value) is not int or value < 1):
                return f"{model}.{key} is {value!r}, not a version number"
        bad = entry.get("bad", [])
        if not isinstance(bad, list) or any(type(v) is not int for v in bad):
            return f"{model}.bad is {bad!r}, not a list of version numbers"
    return None


def _set_aside(path: Path, why: str) -> str:
    """Move ``path`` to ``<path>.corrupt-<UTC>``; the warning to report."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, aside)
        where = f"moved to {aside.name}"
    except OSError as exc:
        where = f"could not be moved aside ({os.strerror(exc.errno or 0).lower()})"
    return (
        f"{path}: the update agent's state is {why}; {where}; starting over from the "
        "verified versions on disk"
    )


@contextlib.contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Translate a storage failure while writing ``what`` into UpdateStorageError.

    ``OSError`` (ENOSPC, EDQUOT, EROFS, EACCES, EIO...) and SQLite's "database
    or disk is full"/"readonly database" (the telemetry outbox) become one line
    naming what was written and the cause, e.g. ``cannot write staging x.part:
    no space left on device (ENOSPC)``: the boundary translation of
    :mod:`edgecloud.errors`.
    """
    try:
        yield
    except OSError as exc:
        raise UpdateStorageError(f"cannot write {what}: {describe_os_error(exc)}") from exc
    except sqlite3.OperationalError as exc:
        raise UpdateStorageError(f"cannot write {what}: {exc}") from exc


def describe_os_error(exc: OSError) -> str:
    """``no space left on device (ENOSPC)``: the cause in words and its errno name."""
    code = exc.errno
    if code is None:
        return str(exc) or type(exc).__name__
    name = errno.errorcode.get(code, str(code))
    hint = {
        errno.ENOSPC: "; free space on the device and the update is tried again",
        errno.EDQUOT: "; raise the quota and the update is tried again",
        errno.EROFS: "; the directory must be writable",
        errno.EACCES: "; the directory must be writable by this user",
    }.get(code, "")
    where = f" at {exc.filename}" if exc.filename else ""
    return f"{os.strerror(code).lower()} ({name}){where}{hint}"
