"""An outbox on a full filesystem says so at open, whatever code SQLite gives.

SQLite reports the failed growth of its mmapped WAL index (``-shm``) on a full
disk as a disk I/O error (SQLITE_IOERR_SHMSIZE), not SQLITE_FULL; the outbox
asks the filesystem (``statvfs``) and names the cause. A real small tmpfs
(root only: skipped otherwise) filled to the last block.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.routing import Outbox
from edgecloud.routing.outbox_store import OutboxStorageError, storage_error


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (needs root: skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as out:
        while True:
            out.write(b"\0" * 4096)
            out.flush()
    return filler


@pytest.mark.parametrize("existing", [True, False], ids=["existing-outbox", "new-outbox"])
def test_opening_on_a_full_disk_names_the_full_disk(tmp_path: Path, existing: bool) -> None:
    with small_disk(tmp_path / "state", "2m") as state:
        path = state / "telemetry.db"
        if existing:
            Outbox(path).close()
            for side in ("-wal", "-shm"):
                Path(f"{path}{side}").unlink(missing_ok=True)
        filler = fill(state)
        with pytest.raises(OutboxStorageError) as caught:
            Outbox(path)
        message = caught.value.message
        # an existing file: SQLite's disk I/O error; a new one: SQLITE_FULL ("disk is full")
        assert ("no space left on the filesystem of" if existing else "disk is full") in message
        assert "check the storage device" not in message, message
        filler.unlink()
        box = Outbox(path)  # space back: it opens
        assert len(box) == 0
        box.close()


def test_a_disk_io_error_with_space_left_still_says_check_the_device(tmp_path: Path) -> None:
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = 10  # type: ignore[attr-defined]
    assert "check the storage device" in storage_error(tmp_path / "o.db", "open", error).message
