"""What a device refuses: python-tuf's ngclient Updater against our update repository.

The mirror is a plain HTTP server over a directory the test (the attacker)
controls; nothing in the client is patched.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata

from edgecloud.errors import UpdateRepositoryError
from edgecloud.fleet.keys import new_signers
from edgecloud.fleet.publish import publish
from edgecloud.fleet.update_repo import UpdateRepository

from .conftest import Fleet, make_fleet


def _publish(fleet: Fleet, version: int, **repo_kwargs: object) -> None:
    publish(fleet.models, "affine", version, fleet.repo(**repo_kwargs), deltas=None)


def test_device_installs_what_was_signed(fleet: Fleet, mirror_of, tmp_path: Path) -> None:
    _publish(fleet, 1)
    device = mirror_of(fleet.path).device(tmp_path / "dev", fleet.root_bytes)
    device.refresh()
    target = device.get_targetinfo("affine/1/model.onnx")
    assert target is not None
    assert target.custom["edgecloud"]["kind"] == "model"
    assert target.custom["edgecloud"]["files"] == ["affine/1/config.json"]
    path = device.download_target(target)
    assert (
        Path(path).read_bytes()
        == fleet.models.get("affine", 1, served_only=False).model_path.read_bytes()
    )


@pytest.mark.parametrize("same_length", [True, False])
def test_tampered_target_is_refused(
    fleet: Fleet, mirror_of, tmp_path: Path, same_length: bool
) -> None:
    _publish(fleet, 1)
    [file] = (fleet.path / "targets" / "affine" / "1").glob("*.model.onnx")
    data = bytearray(file.read_bytes())
    if same_length:
        data[len(data) // 2] ^= 0x01  # one bit flipped after signing
    else:
        data += b"\x00"
    file.write_bytes(bytes(data))
    device = mirror_of(fleet.path).device(tmp_path / "dev", fleet.root_bytes)
    device.refresh()
    target = device.get_targetinfo("affine/1/model.onnx")
    # a flipped bit: LengthOrHashMismatchError; an extra byte: DownloadLengthMismatchError
    with pytest.raises((tuf_errors.RepositoryError, tuf_errors.DownloadError)):
        device.download_target(target)
    assert not list((tmp_path / "dev" / "downloads").iterdir())


def _metadata(fleet: Fleet) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (fleet.path / "metadata").iterdir() if p.is_file()}


def test_replayed_older_timestamp_and_snapshot_are_refused(
    fleet: Fleet, mirror_of, tmp_path: Path
) -> None:
    _publish(fleet, 1)
    old = _metadata(fleet)
    _publish(fleet, 2)
    mirror = mirror_of(fleet.path)
    device = mirror.device(tmp_path / "dev", fleet.root_bytes)
    device.refresh()
    assert device.get_targetinfo("affine/2/model.onnx") is not None
    metadata = fleet.path / "metadata"
    newest = _metadata(fleet)
    # the attacker replays the whole older state: timestamp (and what it names)
    (metadata / "timestamp.json").write_bytes(old["timestamp.json"])
    with pytest.raises(tuf_errors.BadVersionNumberError):
        mirror.device(tmp_path / "dev", fleet.root_bytes).refresh()
    # or keeps the newest timestamp but serves the older snapshot under the new name
    (metadata / "timestamp.json").write_bytes(newest["timestamp.json"])
    version = Metadata.from_bytes(newest["timestamp.json"]).signed.snapshot_meta.version
    (metadata / f"{version}.snapshot.json").write_bytes(old[f"{version - 1}.snapshot.json"])
    fresh = mirror.device(tmp_path / "fresh", fleet.root_bytes)  # never saw the newer one
    with pytest.raises(tuf_errors.RepositoryError):  # hash/length the timestamp signed
        fresh.refresh()


def test_expired_metadata_is_refused(tmp_path: Path, mirror_of) -> None:
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    fleet = make_fleet(tmp_path, clock=lambda: two_days_ago)
    _publish(fleet, 1, clock=lambda: two_days_ago)  # timestamp valid 1 day from then
    device = mirror_of(fleet.path).device(tmp_path / "dev", fleet.root_bytes)
    with pytest.raises(tuf_errors.ExpiredMetadataError):
        device.refresh()


def test_freeze_attack_is_refused(tmp_path: Path, mirror_of) -> None:
    """A mirror frozen at a state signed two days ago cannot hide the newer version
    past the timestamp's expiry: the device refuses instead of reporting no update."""
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    fleet = make_fleet(tmp_path, clock=lambda: two_days_ago)
    _publish(fleet, 1, clock=lambda: two_days_ago)
    frozen = tmp_path / "frozen"
    shutil.copytree(fleet.path, frozen)
    _publish(fleet, 2)  # signed now, at the origin
    with pytest.raises(tuf_errors.ExpiredMetadataError):
        mirror_of(frozen).device(tmp_path / "dev", fleet.root_bytes).refresh()
    honest = mirror_of(fleet.path).device(tmp_path / "dev", fleet.root_bytes)
    honest.refresh()
    assert honest.get_targetinfo("affine/2/model.onnx") is not None


def test_metadata_signed_by_a_key_that_is_not_the_roles_is_refused(
    fleet: Fleet, mirror_of, tmp_path: Path
) -> None:
    _publish(fleet, 1)
    rogue = new_signers()["targets"]
    metadata = fleet.path / "metadata"
    current = Metadata.from_bytes((metadata / "2.targets.json").read_bytes())
    evil = dict(current.signed.targets["affine/1/model.onnx"].to_dict())
    current.signed.targets["affine/1/model.onnx"] = type(
        current.signed.targets["affine/1/model.onnx"]
    ).from_dict({**evil, "length": 3}, "affine/1/model.onnx")
    current.signatures.clear()
    current.sign(rogue)
    (metadata / "2.targets.json").write_bytes(current.to_bytes())
    device = mirror_of(fleet.path).device(tmp_path / "dev", fleet.root_bytes)
    with pytest.raises(tuf_errors.UnsignedMetadataError):
        device.refresh()
    # and the publisher refuses to build on metadata that is not validly signed
    with pytest.raises(UpdateRepositoryError, match="not signed by the targets key"):
        fleet.repo().sign()


def test_publisher_refuses_a_key_root_does_not_name(fleet: Fleet) -> None:
    with pytest.raises(UpdateRepositoryError, match="is not the one .* names for targets"):
        UpdateRepository(fleet.path, new_signers()).sign()
