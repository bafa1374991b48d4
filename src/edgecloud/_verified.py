"""A record of files already checked against their sha256, so a load need not read them again.

LocalBackend checks every file of a version against its recorded sha256 before
loading it. For a large model that is most of a device's cold start
(``minilm``'s 90 MB ``model.onnx``: 100-150 ms of hashing on the 2-core bench
machine, bench/edge_footprint.py's "edge, first start" minus "edge"). This
module lets a check skip a file that has not changed since a full check found
it intact, the way git's index skips unchanged files: by the file's identity
as the kernel reports it.

What the check is for, and what this keeps: the load-time sha256 check exists
to catch *accidental* damage between the write of a version (``add_version``
hashes what it writes) and its load — a partial copy or download, a truncated
file, a file overwritten by a tool or another version, a disk that filled up
mid-write. Authenticity is checked elsewhere: the fleet agent verifies the
signed sha256 of what it installs. Every such change goes through the kernel
and changes the file's *stamp* ``(st_dev, st_ino, st_size, st_mtime_ns,
st_ctime_ns)``: a rewrite or truncation changes ``ctime`` (and size or mtime),
a replacement (``cp``, rename over, delete and recreate) changes the inode and
``ctime``, and ``ctime`` cannot be set from user space (``utime`` restoring the
mtime sets ctime to now). So a file whose stamp and expected sha256 are both
as recorded after a full check is skipped; any other is hashed in full.

Only on file systems that keep such a stamp for every write, memory-mapped ones
included (:data:`TRACKED_FILE_SYSTEMS`: ext2/3/4, XFS, Btrfs, F2FS); on any other
(tmpfs, network, FUSE, FAT) nothing is recorded and every file is hashed.

What it does not catch: a change that bypasses the file system — media bit rot,
a write to the raw block device, an image of the file system restored with the
same inode numbers and timestamps; an in-place rewrite whose data reached the
disk but whose inode update was lost in a power failure; and, on a file system
without a kernel-kept ctime (FAT, exFAT: an SD card), a rewrite that keeps the
size and sets the mtime back. For those, force a full check:
``LocalBackend(verify="full")``, ``ModelVersion.verify()`` (full by default),
``edgecloud models list`` (:meth:`ModelRepository.status`, always full), or
delete the record directory.

The record can only skip work, never make a version pass:

- it is read from ``<state dir>/verified/<dev>-<ino>.json`` (the version
  directory's identity; state dir: ``$EDGECLOUD_STATE_DIR``, else
  ``$XDG_STATE_HOME/edgecloud``, else ``~/.local/state/edgecloud``, as the
  server's idempotency store), never from the repository, which loading leaves
  untouched (it may be read-only, or replaced by an update);
- one that is unreadable, not a regular file, over :data:`MAX_RECORD_BYTES`, not
  JSON, of another format or another directory's path is ignored, and so is an
  entry whose sha256 or stamp differs: the file is hashed;
- a file changed less than :data:`RACY_NS` before its check is not recorded
  (git's "racy clean" rule: a change within the timestamps' granularity could
  leave the stamp as it was), nor one whose stamp changed while it was hashed;
  a file is fsynced before it is hashed, so the bytes vouched for are on disk
  (a version written without fsync, then a power loss, must still fail its
  check, not be vouched for by a stamp that survived) and a write through a
  shared mapping while it is hashed faults and changes the stamp;
- the record is written to a temporary file and renamed into place, so a
  concurrent loader reads the old record or the new one; two loaders that
  write at once each write a valid record. A record that cannot be written
  (read-only or full disk, no home directory) is left out silently: the check
  itself was complete.

Trust: an entry only says "a file with this stamp was hashed and matched this
sha256"; a file changed through the file system no longer has that stamp. So
whoever can write the record directory can make a check skip files, not change
them; whoever can change the files can also rewrite ``version.json``, so the
check never was a defence against them (the fleet's signatures are).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat as stat_module
import time
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_RECORD_BYTES",
    "RACY_NS",
    "TRACKED_FILE_SYSTEMS",
    "VerifiedRecord",
    "file_system_type",
    "record_directory",
    "record_file",
    "tracks_writes",
]

FORMAT = 1
"""The record's ``format``: a record of any other is ignored."""
RACY_NS = 2_000_000_000
"""A file whose ctime is less than this before its check is not recorded: 2 s, the
coarsest timestamp granularity of a common file system (FAT's mtime); the kernel's
own is a clock tick (1-10 ms)."""
MAX_RECORD_BYTES = 1 << 20
"""A record larger than this is ignored (a version lists a few files: ~200 bytes each)."""


def record_directory() -> Path | None:
    """``<state dir>/verified``, or None when there is no state directory (no home).

    The state dir rule is :func:`edgecloud.server.idempotency.state_dir`'s,
    repeated here so the edge path does not import the server.
    """
    explicit = os.environ.get("EDGECLOUD_STATE_DIR")
    if explicit:
        return Path(explicit) / "verified"
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg) / "edgecloud" / "verified"
    try:
        return Path.home() / ".local" / "state" / "edgecloud" / "verified"
    except (RuntimeError, KeyError):  # no home directory (a service without one)
        return None


def record_file(directory: Path) -> Path | None:
    """Where the record of version ``directory`` is: ``<record_directory>/<dev>-<ino>.json``
    (hex: the directory's own identity). OSError when ``directory`` cannot be stat'ed."""
    base = record_directory()
    if base is None:
        return None
    info = os.stat(directory)
    return base / f"{info.st_dev:x}-{info.st_ino:x}.json"


#: File systems (``/proc/self/mountinfo``'s type) on which a file's stamp sees every
#: write, including writes through a shared memory mapping once the file was
#: fsynced: the flush cleans the file's pages and write-protects them, so the next
#: write through a mapping faults and the kernel updates mtime and ctime. tmpfs and
#: ramfs never write pages back, so a mapping's later writes change no stamp (the
#: issue-17 hostile review served a tampered file from /dev/shm that way); network,
#: FUSE, FAT/exFAT and overlay file systems are left out too. Elsewhere nothing is
#: recorded and every load hashes every file.
TRACKED_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"})

_tracked_devices: dict[int, bool] = {}


def tracks_writes(path: Path) -> bool:
    """Whether ``path`` is on a file system of :data:`TRACKED_FILE_SYSTEMS` (Linux
    only; cached per device). False when it cannot be told."""
    try:
        device = os.stat(path).st_dev
    except OSError:
        return False
    return _tracked(device)


def _tracked(device: int) -> bool:
    known = _tracked_devices.get(device)
    if known is None:
        known = _tracked_devices[device] = file_system_type(device) in TRACKED_FILE_SYSTEMS
    return known


def file_system_type(device: int) -> str | None:
    """The type of the file system mounted from ``device`` (an ``st_dev``), from
    ``/proc/self/mountinfo`` (field after the `` - `` separator); None when no
    mount names it (not Linux, or a device number mountinfo does not show)."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        return None
    return None


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class VerifiedRecord:
    """The files of one version directory known to match their sha256, by stamp.

    >>> record = VerifiedRecord(version_dir)  # doctest: +SKIP
    >>> if not record.vouches("model.onnx", expected): ...hash it, then record.note(...)
    >>> record.save()

    Never raises for the record's own sake (see the module docstring): a
    problem with it means files are hashed.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._path: Path | None = None
        self._files: dict[str, Any] = {}
        self._changed = False
        self._where = ""
        try:
            self._where = str(directory.resolve())
            if not tracks_writes(directory):  # nothing recorded, nothing trusted
                return
            self._path = record_file(directory)
        except OSError:
            return
        if self._path is not None:
            self._files = self._read(self._path)

    def _read(self, path: Path) -> dict[str, Any]:
        """The record's files, or {} for a missing, unreadable, odd or foreign record."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            return {}
        try:
            if not stat_module.S_ISREG(os.fstat(fd).st_mode):
                return {}
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(MAX_RECORD_BYTES + 1)
            if len(data) > MAX_RECORD_BYTES:
                return {}
            record = json.loads(data)
        except (OSError, ValueError):
            return {}
        finally:
            os.close(fd)
        if (
            not isinstance(record, dict)
            or record.get("format") != FORMAT
            or record.get("path") != self._where
            or not isinstance(record.get("files"), dict)
        ):
            return {}
        files: dict[str, Any] = record["files"]
        return files

    def vouches(self, rel: str, sha256: str) -> bool:
        """Whether file ``rel`` (relative to the directory) is recorded as matching
        ``sha256`` with its current stamp: then it need not be hashed."""
        if self._path is None:
            return False
        entry = self._files.get(rel)
        if not isinstance(entry, list):
            return False
        try:
            now = os.stat(self.directory / rel)
        except OSError:
            return False
        # the file's own file system: a mount inside the version (a bind mount of a
        # tmpfs file) is not the directory's
        return entry == [sha256, *_stamp(now)] and _tracked(now.st_dev)

    def settle(self, rel: str) -> os.stat_result | None:
        """Before hashing file ``rel``: flush it to disk and return its stat (None: it
        will not be recorded). The flush puts the bytes about to be vouched for on
        disk (a power loss must not keep a stamp with other bytes) and cleans and
        write-protects the file's pages, so a write through a shared mapping during
        the hashing faults and changes the stamp, which :meth:`note` then sees."""
        if self._path is None:
            return None
        try:
            fd = os.open(self.directory / rel, os.O_RDONLY)
            try:
                os.fsync(fd)
                before = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError:
            return None
        return before if _tracked(before.st_dev) else None  # its own file system

    def note(self, rel: str, sha256: str, before: os.stat_result | None) -> None:
        """Record that file ``rel`` matched ``sha256`` when hashed; ``before``: what
        :meth:`settle` returned before the hashing. Left out when that was None, or
        the file changed meanwhile or too recently (:data:`RACY_NS`)."""
        if self._path is None or before is None:
            return
        try:
            after = os.stat(self.directory / rel)
        except OSError:
            return
        stamp = _stamp(before)
        if _stamp(after) != stamp or time.time_ns() - before.st_ctime_ns < RACY_NS:
            return
        self._files[rel] = [sha256, *stamp]
        self._changed = True

    def save(self) -> None:
        """Write the record if :meth:`note` added to it: atomically, or not at all."""
        if self._path is None or not self._changed:
            return
        import tempfile  # a fresh name, O_EXCL, 0600: never follows a planted symlink

        text = json.dumps({"format": FORMAT, "path": self._where, "files": self._files})
        tmp: str | None = None
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self._path)
        except OSError:  # read-only, full, or not ours: the check was complete anyway
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self._changed = False
