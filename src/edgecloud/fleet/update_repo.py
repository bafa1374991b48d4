"""The update repository: TUF metadata and content-addressed targets on disk.

Layout (python-tuf ngclient's, consistent snapshots)::

    fleet-repo/
      metadata/1.root.json  root.json        trusted root, by version and latest
      metadata/timestamp.json                 the only file replaced in place
      metadata/N.snapshot.json  N.targets.json
      targets/<dir>/<sha256>.<name>           target <dir>/<name>, by content

Commit protocol (the promise against a crash at any instant, SIGKILL
included): :meth:`UpdateRepository.sign` writes new target files (new names:
content-addressed), then ``N+1.targets.json``, then ``M+1.snapshot.json``
(new names, fsynced), and only then replaces ``timestamp.json`` by rename —
the single commit point. Before that rename a device reading the repository
follows the old timestamp to the old snapshot and targets, all untouched;
after it, the new ones, all complete. A crash leaves unreferenced files that
the next :meth:`sign` overwrites. Writers (``fleet publish``, the rollout
commands, the server re-signing the timestamp) serialize on an ``flock`` of
``fleet-repo/.lock``.

What a device checks (python-tuf ``ngclient.Updater``): every file's
signature by the key root names for its role, version numbers never going
back (rollback), expiry (freeze), and each target's length and sha256.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._optional import require
from ..errors import ConfigError, UpdateRepositoryError
from ..repository import _write_atomic
from .keys import ROLES, Expiry, load_signers

if TYPE_CHECKING:
    from securesystemslib.signer._signer import Signer
    from tuf.api._payload import Root, TargetFile
    from tuf.api.metadata import Metadata

__all__ = ["EXPIRY_FILE", "UpdateRepository", "check_target_path", "recorded_expiry"]

METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
LOCK_FILE = ".lock"
#: Unsigned settings beside ``metadata/`` (never served): the validity periods the
#: repository was last signed with, so a later signer (the server re-signing the
#: timestamp, a rollout) keeps them instead of falling back to the defaults.
EXPIRY_FILE = "expiry.json"

#: One component of a target path: a letter or digit first (no hidden or
#: temporary names, no ``..``), then letters, digits, ``._+-``.
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


def check_target_path(path: str) -> str:
    """``path`` if it is a valid target path (``model/3/model.onnx``), else ConfigError.

    Relative, ``/``-separated, 1 to 16 components of ``[A-Za-z0-9][A-Za-z0-9._+-]*``
    (at most 200 characters each): nothing that could name a file outside
    ``targets/`` or a hidden one.
    """
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or len(parts) > 16 or not all(_COMPONENT.fullmatch(p) for p in parts):
        raise ConfigError(
            f"target path {path!r} is not valid: use 1 to 16 '/'-separated names of "
            "letters, digits and ._+- (each starting with a letter or digit)"
        )
    return path


def _tuf() -> Any:
    require("cryptography", extra="fleet", feature="signed fleet updates")
    return require("tuf.api.metadata", extra="fleet", feature="signed fleet updates")


class UpdateRepository:
    """A TUF update repository at ``path``, signed with ``keys``.

    Args:
        path: the repository directory (created by :meth:`create`).
        keys: a keys directory (``edgecloud fleet keys``) or role -> signer;
            None opens it read-only. Roles whose key is absent cannot be
            signed (the server holds only the timestamp key).
        expiry: validity period of each role's metadata when signed; None: the
            periods recorded by the last :meth:`sign` (``expiry.json``), else the defaults.
        clock: the time metadata expiry counts from (UTC; default now).

    Raises:
        UpdateRepositoryError: ``path`` holds no signed root (create it with
            ``edgecloud fleet keys``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        keys: str | os.PathLike[str] | Mapping[str, Signer] | None = None,
        *,
        expiry: Expiry | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.path = Path(path)
        self.expiry = expiry or recorded_expiry(self.path)
        self._clock = clock or (lambda: datetime.now(UTC))
        if keys is None:
            self._signers: dict[str, Signer] = {}
        elif isinstance(keys, Mapping):
            self._signers = dict(keys)
        else:
            from .keys import check_apart

            check_apart(Path(keys), self.path)
            self._signers = load_signers(Path(keys))
        self._pending: dict[str, tuple[bytes, dict[str, Any]] | None] = {}
        self._lock_depth = 0
        self._lock_fd: int | None = None
        if not (self.metadata_dir / "root.json").is_file():
            raise UpdateRepositoryError(
                f"{self.path} is not an update repository (no {METADATA_DIR}/root.json); "
                f"create it with: edgecloud fleet keys --keys KEYS_DIR --fleet {self.path}"
            )

    def __repr__(self) -> str:
        return f"UpdateRepository({str(self.path)!r})"

    @property
    def metadata_dir(self) -> Path:
        return self.path / METADATA_DIR

    @property
    def targets_dir(self) -> Path:
        return self.path / TARGETS_DIR

    # -- creating --------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        signers: Mapping[str, Signer],
        *,
        expiry: Expiry | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> UpdateRepository:
        """Create an empty repository: root v1 naming one key per role (threshold
        1, consistent snapshots), empty targets, snapshot and timestamp v1.

        Raises:
            ConfigError: ``path`` already holds a root (re-creating it would
                orphan the devices provisioned with it).
        """
        tuf = _tuf()
        root_dir = Path(path)
        if (root_dir / METADATA_DIR / "root.json").exists():
            raise ConfigError(
                f"{root_dir} is already an update repository; its root is what devices "
                "trust: publish to it, or choose another --fleet directory"
            )
        expiry = expiry or Expiry()
        now = (clock or (lambda: datetime.now(UTC)))()
        root = tuf.Root(expires=_stamp(now + expiry.of("root")), consistent_snapshot=True)
        for role in ROLES:
            root.add_key(signers[role].public_key, role)
        metadata = root_dir / METADATA_DIR
        try:
            metadata.mkdir(parents=True, exist_ok=True)
            (root_dir / TARGETS_DIR).mkdir(exist_ok=True)
            data = _signed_bytes(tuf.Metadata(root), signers["root"])
            _write_atomic(metadata / "1.root.json", data, durable=True)
            _write_atomic(metadata / "root.json", data, durable=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {root_dir}: {exc.strerror or exc}") from None
        repo = cls(root_dir, signers, expiry=expiry, clock=clock)
        empty = tuf.Targets()
        empty.version = 0  # _commit counts up: every role starts at version 1
        with repo.locked():
            repo._commit(empty, 0, 0)
        return repo

    # -- reading ---------------------------------------------------------------

    def root_bytes(self) -> bytes:
        """The newest root metadata, as a device is provisioned with it."""
        return (self.metadata_dir / "root.json").read_bytes()

    def root(self) -> Root:
        root: Root = self._read("root.json", "root").signed
        return root

    def _read(self, name: str, role: str, root: Root | None = None) -> Metadata[Any]:
        """Metadata file ``name``, its signature checked against ``root`` (if given)."""
        tuf = _tuf()
        exceptions = require("tuf.api.exceptions", extra="fleet", feature="signed fleet updates")

        path = self.metadata_dir / name
        try:
            md: Metadata[Any] = tuf.Metadata.from_bytes(path.read_bytes())
        except OSError as exc:
            raise UpdateRepositoryError(f"cannot read {path}: {exc.strerror or exc}") from None
        except Exception as exc:  # tuf's DeserializationError and friends
            raise UpdateRepositoryError(f"{path} is not TUF metadata: {exc}") from None
        if md.signed.type != role:
            raise UpdateRepositoryError(f"{path} holds {md.signed.type} metadata, not {role}")
        if root is not None:
            try:
                root.verify_delegate(role, md.signed_bytes, md.signatures)
            except exceptions.RepositoryError as exc:
                raise UpdateRepositoryError(
                    f"{path} is not signed by the {role} key root names: {exc}"
                ) from None
        return md

    def _state(self) -> tuple[Root, Metadata[Any], Metadata[Any], Metadata[Any]]:
        """(root, timestamp, snapshot, targets) as signed now, each signature checked."""
        root = self.root()
        timestamp = self._read("timestamp.json", "timestamp", root)
        snapshot_version = timestamp.signed.snapshot_meta.version
        snapshot = self._read(f"{snapshot_version}.snapshot.json", "snapshot", root)
        targets_version = snapshot.signed.meta["targets.json"].version
        targets = self._read(f"{targets_version}.targets.json", "targets", root)
        return root, timestamp, snapshot, targets

    def targets(self) -> dict[str, TargetFile]:
        """Every signed target: path -> TargetFile (length, hashes, custom)."""
        return dict(self._state()[3].signed.targets)

    def version(self) -> int:
        """The version of the signed targets metadata (0 before the first publish)."""
        return int(self._state()[3].signed.version)

    def target_file(self, target: TargetFile) -> Path:
        """Where ``target``'s bytes lie: ``targets/<dir>/<sha256>.<name>``."""
        directory, _, name = target.path.rpartition("/")
        return self.targets_dir / directory / f"{target.hashes['sha256']}.{name}"

    def read_target(self, path: str) -> bytes:
        """The bytes of signed target ``path``, checked against its signed length and sha256.

        Raises:
            UpdateRepositoryError: no such target, or its file is missing or corrupt.
        """
        target = self.targets().get(path)
        if target is None:
            raise UpdateRepositoryError(f"{self.path} has no target {path!r}")
        file = self.target_file(target)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise UpdateRepositoryError(f"cannot read {file}: {exc.strerror or exc}") from None
        if len(data) != target.length or hashlib.sha256(data).hexdigest() != target.hashes.get(
            "sha256"
        ):
            raise UpdateRepositoryError(f"{file} does not match target {path!r}: it is corrupt")
        return data

    # -- changing --------------------------------------------------------------

    def put_target(self, path: str, data: bytes, custom: dict[str, Any]) -> None:
        """Stage target ``path`` with ``data`` and ``custom`` (JSON) for :meth:`sign`."""
        check_target_path(path)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ConfigError(f"target {path!r}: data must be bytes, got {type(data).__name__}")
        try:
            if not isinstance(custom, dict):
                raise TypeError(f"a dict, got {type(custom).__name__}")
            custom = json.loads(json.dumps(custom, allow_nan=False))  # a JSON copy
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"target {path!r}: custom must be JSON ({exc})") from None
        self._pending[path] = (bytes(data), custom)

    def remove_target(self, path: str) -> None:
        """Stage the removal of target ``path`` (its file stays for devices mid-download)."""
        self._pending[check_target_path(path)] = None

    def sign(self) -> int:
        """Apply the staged changes and sign targets, snapshot and timestamp (each version + 1,
        expiry from now). Returns the new targets version.

        Raises:
            UpdateRepositoryError: a key of those roles is missing or not the one root names.
        """
        with self.locked():
            root, timestamp, snapshot, targets_md = self._state()
            self._check_keys(root, ("targets", "snapshot", "timestamp"))
            tuf = _tuf()
            targets = targets_md.signed
            for path, change in self._pending.items():
                if change is None:
                    targets.targets.pop(path, None)
                    continue
                data, custom = change
                target = tuf.TargetFile.from_data(path, data, ["sha256"])
                target.unrecognized_fields["custom"] = custom
                file = self.target_file(target)
                if not _holds(file, target.hashes["sha256"]):  # absent, or damaged: rewrite
                    file.parent.mkdir(parents=True, exist_ok=True)
                    _write_atomic(file, data, durable=True)
                targets.targets[path] = target
            self._commit(targets, snapshot.signed.version, timestamp.signed.version)
            self._pending.clear()
            return int(targets.version)

    def _commit(self, targets: Any, snapshot_version: int, timestamp_version: int) -> None:
        """Write targets and snapshot (new names) then replace timestamp.json: the commit."""
        tuf = _tuf()
        now = self._clock()
        targets.version += 1
        targets.expires = _stamp(now + self.expiry.of("targets"))
        self._write_new(f"{targets.version}.targets.json", tuf.Metadata(targets), "targets")
        snapshot = tuf.Snapshot(
            version=snapshot_version + 1,
            expires=_stamp(now + self.expiry.of("snapshot")),
            meta={"targets.json": tuf.MetaFile(version=targets.version)},
        )
        data = self._write_new(
            f"{snapshot.version}.snapshot.json", tuf.Metadata(snapshot), "snapshot"
        )
        self._write_timestamp(tuf, timestamp_version + 1, snapshot.version, data)
        periods = {f"{role}_days": getattr(self.expiry, f"{role}_days") for role in ROLES}
        _write_atomic(self.path / EXPIRY_FILE, json.dumps(periods).encode(), durable=True)

    def _write_timestamp(
        self, tuf: Any, version: int, snapshot_version: int, snapshot: bytes
    ) -> None:
        meta = tuf.MetaFile(
            version=snapshot_version,
            length=len(snapshot),
            hashes={"sha256": hashlib.sha256(snapshot).hexdigest()},
        )
        now = self._clock()
        timestamp = tuf.Timestamp(
            version=version, expires=_stamp(now + self.expiry.of("timestamp")), snapshot_meta=meta
        )
        data = _signed_bytes(tuf.Metadata(timestamp), self._signers["timestamp"])
        _write_atomic(self.metadata_dir / "timestamp.json", data, durable=True)

    def _write_new(self, name: str, md: Any, role: str) -> bytes:
        data = _signed_bytes(md, self._signers[role])
        _write_atomic(self.metadata_dir / name, data, durable=True)
        return data

    def refresh_timestamp(self) -> int:
        """Re-sign the timestamp (version + 1, expiry from now) over the same snapshot;
        what the server does with the online timestamp key. Returns the new version."""
        with self.locked():
            root = self.root()
            self._check_keys(root, ("timestamp",))
            timestamp = self._read("timestamp.json", "timestamp", root).signed
            name = f"{timestamp.snapshot_meta.version}.snapshot.json"
            snapshot = (self.metadata_dir / name).read_bytes()
            version = int(timestamp.version) + 1
            self._write_timestamp(_tuf(), version, timestamp.snapshot_meta.version, snapshot)
            return version

    def timestamp_expires(self) -> datetime:
        """When the signed timestamp expires (UTC)."""
        expires: datetime = self._read("timestamp.json", "timestamp").signed.expires
        return expires

    def _check_keys(self, root: Root, roles: tuple[str, ...]) -> None:
        for role in roles:
            signer = self._signers.get(role)
            if signer is None:
                raise UpdateRepositoryError(
                    f"signing {role} metadata of {self.path} needs the {role} key; "
                    "give the keys directory made by edgecloud fleet keys"
                )
            if signer.public_key.keyid not in root.roles[role].keyids:
                raise UpdateRepositoryError(
                    f"the {role} key given is not the one {self.path}/metadata/root.json "
                    f"names for {role}: wrong keys directory?"
                )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository's writer lock (``flock`` of ``.lock``; re-entrant here)."""
        if self._lock_depth == 0:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None


def _holds(file: Path, sha256: str) -> bool:
    """Whether ``file`` exists with content of this sha256 (a content-addressed target)."""
    try:
        with file.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == sha256
    except OSError:
        return False


def recorded_expiry(path: Path) -> Expiry:
    """The periods of ``path/expiry.json`` (written at each sign); the defaults when absent.

    Raises:
        UpdateRepositoryError: the file is there but not valid periods.
    """
    try:
        periods = json.loads((path / EXPIRY_FILE).read_bytes())
    except FileNotFoundError:
        return Expiry()
    except (OSError, ValueError) as exc:
        raise UpdateRepositoryError(f"{path / EXPIRY_FILE}: unreadable ({exc})") from exc
    try:
        return Expiry(**{f"{role}_days": periods[f"{role}_days"] for role in ROLES})
    except (TypeError, KeyError, ConfigError) as exc:
        raise UpdateRepositoryError(
            f"{path / EXPIRY_FILE}: not the signing periods ({exc}); publish again to rewrite it"
        ) from exc


def _stamp(moment: datetime) -> datetime:
    """``moment`` in UTC, whole seconds (TUF's expiry format has no fractions)."""
    return moment.astimezone(UTC).replace(microsecond=0)


def _signed_bytes(md: Any, signer: Signer) -> bytes:
    md.sign(signer)
    data: bytes = md.to_bytes()
    return data
