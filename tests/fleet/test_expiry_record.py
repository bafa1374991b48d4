"""The signing periods a repository was published with are kept by later signers: the
server re-signing the timestamp (``--fleet-keys``) and ``fleet rollout`` (``expiry.json``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgecloud.errors import UpdateRepositoryError
from edgecloud.fleet.keys import Expiry, new_signers, write_signers
from edgecloud.fleet.update_repo import EXPIRY_FILE, UpdateRepository, recorded_expiry
from edgecloud.server.fleet_files import FleetFiles


def _repo(tmp_path: Path, days: float) -> UpdateRepository:
    signers = new_signers()
    write_signers(tmp_path / "keys", signers)
    repo = UpdateRepository.create(tmp_path / "fleet", signers, expiry=Expiry(timestamp_days=days))
    repo.put_target("m/1/model.onnx", b"onnx", {"edgecloud": {"kind": "file"}})
    repo.sign()
    return repo


def test_a_later_signer_keeps_the_published_timestamp_validity(tmp_path: Path) -> None:
    _repo(tmp_path, 7.0)
    later = UpdateRepository(tmp_path / "fleet", tmp_path / "keys")  # no expiry given
    assert later.expiry.timestamp_days == 7.0
    later.refresh_timestamp()
    left = later.timestamp_expires() - datetime.now(UTC)
    assert timedelta(days=6.9) < left <= timedelta(days=7)


def test_the_server_re_signs_with_the_recorded_validity(tmp_path: Path) -> None:
    """FleetFiles' refresh step (the thread's body) on a 7-day repository: a timestamp
    with 3 days left (under half of 7) is re-signed for 7 days, not for the default 1."""
    _repo(tmp_path, 7.0)
    back = datetime.now(UTC) - timedelta(days=4)
    aged = UpdateRepository(tmp_path / "fleet", tmp_path / "keys", clock=lambda: back)
    aged.refresh_timestamp()  # signed 4 days ago: 3 days left
    server_side = UpdateRepository(tmp_path / "fleet", tmp_path / "keys", expiry=Expiry())
    files = FleetFiles.__new__(FleetFiles)
    files._refresh_if_due(server_side)
    left = server_side.timestamp_expires() - datetime.now(UTC)
    assert timedelta(days=6.9) < left <= timedelta(days=7)
    signed = (tmp_path / "fleet" / "metadata" / "timestamp.json").read_bytes()
    files._refresh_if_due(server_side)  # 7 days left now: not due again
    assert (tmp_path / "fleet" / "metadata" / "timestamp.json").read_bytes() == signed


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"timestamp_days": 1}',
        b'{"root_days": -1, "targets_days": 1, "snapshot_days": 1, "timestamp_days": 1}',
    ],
)
def test_a_damaged_record_is_an_error_naming_it(tmp_path: Path, body: bytes) -> None:
    _repo(tmp_path, 2.0)
    (tmp_path / "fleet" / EXPIRY_FILE).write_bytes(body)
    with pytest.raises(UpdateRepositoryError, match=EXPIRY_FILE):
        recorded_expiry(tmp_path / "fleet")


def test_without_a_record_the_defaults_apply(tmp_path: Path) -> None:
    _repo(tmp_path, 2.0)
    (tmp_path / "fleet" / EXPIRY_FILE).unlink()
    assert recorded_expiry(tmp_path / "fleet") == Expiry()
