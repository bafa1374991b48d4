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
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelLoadError
from ..repository import _write_atomic

__all__ = ["STATE_FILE", "AgentState"]

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
        self._data = _read_state(self.path)

    def get(self, model: str) -> dict[str, Any]:
        """A copy of ``model``'s entry, every key present (see the module docstring)."""
        return {**DEFAULTS, **self._data.get(model, {})}

    def save(self, model: str, **changes: Any) -> None:
        """Change ``model``'s entry and write the file (atomic, durable)."""
        self._data[model] = {**self.get(model), **changes}
        _write_atomic(self.path, json.dumps(self._data, indent=1).encode(), durable=True)

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


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (ValueError, OSError) as exc:
        raise ModelLoadError(
            f"{path}: the update agent's state is unreadable ({exc}); "
            "move it aside to start over from the versions on disk"
        ) from exc
    return data if isinstance(data, dict) else {}
