"""Signing keys of the update repository: one ed25519 key per TUF role.

``edgecloud fleet keys --keys DIR --fleet REPO`` writes ``DIR/<role>.pem``
(PKCS#8 PEM, mode 0600, in a 0700 directory) for the four top-level roles of
TUF (root, targets, snapshot, timestamp), creates the update repository
``REPO`` signed with them (:meth:`UpdateRepository.create`), and copies the
trusted root metadata to ``DIR/root.json`` — the bytes a device is
provisioned with (``Updater(..., bootstrap=root_bytes)``).

Keys never travel in the update repository: a keys directory inside the
repository (or a repository inside the keys directory) is refused, and a key
file that others can read is refused as ssh refuses one (``chmod 600``).
Existing keys are never overwritten: a new root key would orphan every device
provisioned with the old root.

Expiry defaults (:class:`Expiry`) follow the periods python-tuf's reference
repository tool used for years (legacy python-tuf 0.x ``tuf/repository_tool.py``:
``ROOT_EXPIRATION`` 1 year, ``TARGETS_EXPIRATION`` 3 months,
``SNAPSHOT_EXPIRATION`` 1 week, ``TIMESTAMP_EXPIRATION`` 1 day): the more
often a role is re-signed and the more exposed its key (timestamp: online),
the shorter its metadata lives, which bounds how long a freeze attack can
hide an update (TUF specification, "Goals to protect against specific
attacks": indefinite freeze attacks).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._optional import require
from ..errors import ConfigError, MissingDependencyError, UpdateRepositoryError

if TYPE_CHECKING:
    from securesystemslib.signer._signer import Signer

__all__ = ["ROLES", "Expiry", "key_file", "load_signers", "new_signers", "write_signers"]

#: The top-level TUF roles, each with its own key (threshold 1).
ROLES = ("root", "targets", "snapshot", "timestamp")

#: Name of the trusted root a device bootstraps from, in the keys directory.
ROOT_FILE = "root.json"


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid after it is signed, in days.

    Defaults: root 365, targets 90, snapshot 7, timestamp 1 (python-tuf's
    reference repository tool, legacy ``tuf/repository_tool.py``; see the
    module docstring). A device refuses metadata past its expiry.
    """

    root_days: float = 365.0
    targets_days: float = 90.0
    snapshot_days: float = 7.0
    timestamp_days: float = 1.0

    def __post_init__(self) -> None:
        for role in ROLES:
            days = getattr(self, f"{role}_days")
            if isinstance(days, bool) or not isinstance(days, int | float):
                raise ConfigError(f"expiry of {role} must be a number of days, got {days!r}")
            if not math.isfinite(days) or days <= 0 or days > 100 * 365:
                raise ConfigError(
                    f"expiry of {role} must be more than 0 and at most 36500 days, got {days!r}"
                )

    def of(self, role: str) -> timedelta:
        """The validity period of ``role``'s metadata."""
        return timedelta(days=float(getattr(self, f"{role}_days")))


def key_file(keys_dir: Path, role: str) -> Path:
    """Where ``role``'s private key lives in ``keys_dir``."""
    return keys_dir / f"{role}.pem"


FEATURE = "signed fleet updates"


def signer_api() -> Any:
    """``securesystemslib.signer`` (installed with tuf), with cryptography present.

    Raises:
        MissingDependencyError: the ``fleet`` extra is not installed.
    """
    require("cryptography", extra="fleet", feature=FEATURE)
    require("tuf.api.metadata", extra="fleet", feature=FEATURE)
    try:
        import securesystemslib.signer as api
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "securesystemslib", "fleet", FEATURE) from exc
    return api


def new_signers() -> dict[str, Signer]:
    """A fresh ed25519 key per role (MissingDependencyError without the fleet extra)."""
    api = signer_api()
    return {role: api.CryptoSigner.generate_ed25519() for role in ROLES}


def check_apart(keys_dir: Path, fleet_dir: Path) -> None:
    """ConfigError when one directory lies inside the other: keys never travel
    with the repository a server publishes."""
    keys, fleet = keys_dir.resolve(), fleet_dir.resolve()
    if keys == fleet or keys.is_relative_to(fleet) or fleet.is_relative_to(keys):
        raise ConfigError(
            f"keys directory {keys_dir} and update repository {fleet_dir} overlap; "
            "keep the private keys outside the repository the server publishes"
        )


def write_signers(keys_dir: Path, signers: Mapping[str, Signer]) -> None:
    """Write each role's private key to ``keys_dir/<role>.pem`` (0600, never overwriting).

    Raises:
        ConfigError: a key file is already there (new keys would orphan the
            devices provisioned with the old root) or cannot be written.
    """
    existing = [key_file(keys_dir, role) for role in signers if key_file(keys_dir, role).exists()]
    if existing:
        raise ConfigError(
            f"{existing[0]} already exists; new keys would orphan every device provisioned "
            "with the old root: use another --keys directory or remove the old keys on purpose"
        )
    try:
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for role, signer in signers.items():
            pem: bytes = signer.private_bytes  # type: ignore[attr-defined]
            fd = os.open(key_file(keys_dir, role), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot write keys to {keys_dir}: {exc.strerror or exc}") from None


def load_signers(keys_dir: Path, roles: tuple[str, ...] = ROLES) -> dict[str, Signer]:
    """The signers of ``roles`` from ``keys_dir`` (a role whose file is absent is left out).

    Raises:
        UpdateRepositoryError: ``keys_dir`` is not a directory, a key file is
            readable by group or others (``chmod 600`` it), or is not an
            ed25519 PEM private key.
    """
    crypto_signer = signer_api().CryptoSigner
    ed25519 = require("cryptography.hazmat.primitives.asymmetric.ed25519", extra="fleet",
                      feature=FEATURE)  # fmt: skip
    serialization = require("cryptography.hazmat.primitives.serialization", extra="fleet",
                            feature=FEATURE)  # fmt: skip

    if not keys_dir.is_dir():
        raise UpdateRepositoryError(
            f"keys directory {keys_dir} does not exist; create keys with: "
            f"edgecloud fleet keys --keys {keys_dir} --fleet FLEET_REPO"
        )
    signers: dict[str, Signer] = {}
    for role in roles:
        path = key_file(keys_dir, role)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UpdateRepositoryError(f"cannot read key {path}: {exc.strerror}") from None
        if stat.S_IMODE(mode) & 0o077:
            raise UpdateRepositoryError(
                f"key {path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {path}"
            )
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), None)
        except (OSError, ValueError, TypeError) as exc:
            raise UpdateRepositoryError(
                f"key {path} is not a PEM private key: {str(exc).splitlines()[0]}"
            ) from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise UpdateRepositoryError(f"key {path} is not an ed25519 key")
        signers[role] = crypto_signer(key)
    return signers
