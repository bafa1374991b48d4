"""``edgecloud fleet keys`` and ``edgecloud fleet publish``: the signed update repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli import fleet_app

__all__ = ["keys", "publish"]

KeysOption = Annotated[
    Path,
    typer.Option(
        "--keys", envvar="EDGECLOUD_FLEET_KEYS", help="Directory of the private signing keys."
    ),
]
FleetOption = Annotated[
    Path,
    typer.Option("--fleet", envvar="EDGECLOUD_FLEET", help="Update repository directory."),
]
TargetsDays = Annotated[
    float, typer.Option("--targets-days", help="Targets metadata valid for (days).")
]
SnapshotDays = Annotated[
    float, typer.Option("--snapshot-days", help="Snapshot metadata valid for (days).")
]
TimestampDays = Annotated[
    float, typer.Option("--timestamp-days", help="Timestamp metadata valid for (days).")
]


def _echo(text: str) -> None:
    typer.echo(text)


@fleet_app.command("keys")
def keys(
    keys_dir: KeysOption = Path("fleet-keys"),
    fleet: FleetOption = Path("fleet-repo"),
    root_days: Annotated[
        float, typer.Option("--root-days", help="Root metadata valid for (days).")
    ] = 365.0,
    targets_days: TargetsDays = 90.0,
    snapshot_days: SnapshotDays = 7.0,
    timestamp_days: TimestampDays = 1.0,
) -> None:
    """Create signing keys and an empty update repository.

    One ed25519 key per TUF role (root, targets, snapshot, timestamp), 0600,
    in --keys and never in the repository. The trusted root is written to the
    repository and to KEYS/root.json, the file devices are provisioned with.
    """
    from ..errors import ConfigError
    from ..repository import _write_atomic
    from .keys import ROOT_FILE, Expiry, check_apart, key_file, new_signers, write_signers
    from .update_repo import UpdateRepository

    expiry = Expiry(root_days, targets_days, snapshot_days, timestamp_days)
    check_apart(keys_dir, fleet)
    if fleet.exists() and not fleet.is_dir():
        raise ConfigError(f"--fleet {fleet} is a file, not a directory; choose another --fleet")
    if (fleet / "metadata" / "root.json").exists():
        raise ConfigError(
            f"--fleet {fleet} is already an update repository; nothing was created (its root "
            "is what devices trust): publish to it with `edgecloud fleet publish`, or give "
            "another --fleet directory for a new one"
        )
    signers = new_signers()
    write_signers(keys_dir, signers)
    try:
        repo = UpdateRepository.create(fleet, signers, expiry=expiry)
        _write_atomic(keys_dir / ROOT_FILE, repo.root_bytes(), durable=True)
    except BaseException:  # no keys without the repository they sign: a rerun starts clean
        for role in signers:
            key_file(keys_dir, role).unlink(missing_ok=True)
        raise
    _echo(
        f"created keys in {keys_dir} (root, targets, snapshot, timestamp) and update repository "
        f"{fleet}; provision devices with {keys_dir / ROOT_FILE}"
    )


@fleet_app.command("publish")
def publish(
    model: Annotated[str, typer.Argument(help="Model name in the model repository.")],
    version: Annotated[str, typer.Argument(help="Version number to publish.")],
    repo: Annotated[
        Path, typer.Option("--repo", envvar="EDGECLOUD_REPO", help="Model repository directory.")
    ] = Path("model-repo"),
    fleet: FleetOption = Path("fleet-repo"),
    keys_dir: KeysOption = Path("fleet-keys"),
    codec: Annotated[
        str, typer.Option(help="Delta codecs, comma-separated (xor-zstd lossless; int8, topk).")
    ] = "xor-zstd",
    targets_days: TargetsDays = 90.0,
    snapshot_days: SnapshotDays = 7.0,
    timestamp_days: TimestampDays = 1.0,
) -> None:
    """Sign a model version's files and deltas into the update repository.

    Each file of MODEL VERSION becomes a signed target, and one delta per
    --codec from the newest published version below it. A published version
    is immutable: the same bytes again is a no-op, other bytes are refused.
    """
    from .._config_files import checked_path
    from ..errors import ConfigError
    from ..repository import ModelRepository
    from .keys import Expiry
    from .publish import parse_version
    from .publish import publish as run_publish
    from .update_repo import UpdateRepository

    number = parse_version(version)
    codecs = tuple(c.strip() for c in codec.split(",") if c.strip())
    if not codecs or len(set(codecs)) != len(codecs):
        raise ConfigError(f"--codec must name one or more distinct codecs, got {codec!r}")
    checked_path(repo, "directory", "model repository")
    expiry = Expiry(targets_days=targets_days, snapshot_days=snapshot_days,
                    timestamp_days=timestamp_days)  # fmt: skip
    fleet_repo = UpdateRepository(fleet, keys_dir, expiry=expiry)
    result = run_publish(ModelRepository(repo), model, number, fleet_repo, codecs=codecs)
    _echo(result.summary())
