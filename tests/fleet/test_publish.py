"""``edgecloud fleet keys`` / ``publish`` and the UpdateRepository API."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edgecloud.errors import ConfigError, PublishConflictError, UpdateRepositoryError
from edgecloud.fleet.keys import check_apart, new_signers, write_signers
from edgecloud.fleet.publish import load_delta_maker, parse_version, publish
from edgecloud.fleet.update_repo import UpdateRepository, check_target_path

from .conftest import Fleet


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "fleet", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_keys_stay_out_of_the_repository_and_are_private(tmp_path: Path) -> None:
    done = cli("keys", "--keys", "k", "--fleet", "f", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    keys = sorted(p.name for p in (tmp_path / "k").iterdir())
    assert keys == ["root.json", "root.pem", "snapshot.pem", "targets.pem", "timestamp.pem"]
    for pem in (tmp_path / "k").glob("*.pem"):
        assert pem.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "k" / "root.json").read_bytes() == (
        tmp_path / "f" / "metadata" / "1.root.json"
    ).read_bytes()
    secrets = [p.read_bytes().strip() for p in (tmp_path / "k").glob("*.pem")]
    for file in (tmp_path / "f").rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            assert b"PRIVATE KEY" not in data
            assert not any(secret in data for secret in secrets)
    # never inside the repository, nor the repository inside the keys
    # never inside the repository, nor the repository inside the keys
    for keys_dir, fleet_dir in (
        ("f/keys", "f"),
        ("k2", "k2/fleet"),
        ("same", "same"),
        ("f/..", "f"),
    ):
        with pytest.raises(ConfigError, match="overlap"):
            check_apart(tmp_path / keys_dir, tmp_path / fleet_dir)
    # never overwritten: a new root would orphan every provisioned device
    with pytest.raises(ConfigError, match="already exists"):
        write_signers(tmp_path / "k", new_signers())
    # an existing repository, or a file in its place: each said in its own words
    again = cli("keys", "--keys", "k3", "--fleet", "f", cwd=tmp_path)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "--fleet f is already an update repository; nothing was created" in again.stderr
    (tmp_path / "plain").write_text("")
    a_file = cli("keys", "--keys", "k4", "--fleet", "plain", cwd=tmp_path)
    assert a_file.returncode == 1 and "--fleet plain is a file, not a directory" in a_file.stderr
    assert not (tmp_path / "k3").exists() or not list((tmp_path / "k3").glob("*.pem"))


def test_a_key_readable_by_others_is_refused(fleet: Fleet) -> None:
    os.chmod(fleet.keys / "targets.pem", 0o644)
    with pytest.raises(UpdateRepositoryError, match="chmod 600"):
        fleet.repo()


def test_publish_twice_is_a_no_op_and_other_bytes_are_refused(fleet: Fleet) -> None:
    first = publish(fleet.models, "affine", 1, fleet.repo(), deltas=None)
    assert not first.unchanged and first.targets_version == 2
    metadata = {p.name: p.read_bytes() for p in (fleet.path / "metadata").iterdir()}
    again = publish(fleet.models, "affine", 1, fleet.repo(), deltas=None)
    assert again.unchanged and again.targets_version == 2
    assert metadata == {p.name: p.read_bytes() for p in (fleet.path / "metadata").iterdir()}
    # the model repository's version 1 changes under the same number: refused
    config = fleet.models.root / "affine" / "config.yaml"
    config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
    with pytest.raises(PublishConflictError, match="immutable"):
        publish(fleet.models, "affine", 1, fleet.repo(), deltas=None)
    assert metadata == {p.name: p.read_bytes() for p in (fleet.path / "metadata").iterdir()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("affine", "-1"), "VERSION must be a version number"),
        (("affine", "1", "--timestamp-days", "nan"), "expiry of timestamp"),
    ],
)
def test_bad_publish_arguments_are_one_line(
    fleet: Fleet, args: tuple[str, ...], message: str
) -> None:
    base = ["--repo", str(fleet.models.root), "--fleet", str(fleet.path), "--keys", str(fleet.keys)]
    done = cli("publish", *base, *args[2:], "--", *args[:2], cwd=fleet.path.parent)
    assert done.returncode == 1, done.stdout
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("text", ["01", "0", "1.5", " ", "x", "²", "99999999999999999999"])
def test_bad_versions_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="VERSION must be a version number"):
        parse_version(text)


def test_bad_publish_inputs_are_refused(fleet: Fleet, tmp_path: Path) -> None:
    from edgecloud.errors import ModelNotFoundError
    from edgecloud.fleet.keys import Expiry

    with pytest.raises(ModelNotFoundError, match="has no version 99"):
        publish(fleet.models, "affine", 99, fleet.repo(), deltas=None)
    with pytest.raises(ModelNotFoundError, match="no model 'nope'"):
        publish(fleet.models, "nope", 1, fleet.repo(), deltas=None)
    with pytest.raises(ConfigError, match="not valid"):
        publish(fleet.models, "affine", 1, fleet.repo(), codecs=("../x",), deltas=None)
    with pytest.raises(UpdateRepositoryError, match="does not exist"):
        UpdateRepository(fleet.path, tmp_path / "missing")
    with pytest.raises(UpdateRepositoryError, match="not an update repository"):
        UpdateRepository(tmp_path / "missing")
    for bad in (0, -1, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ConfigError, match="expiry of targets"):
            Expiry(targets_days=bad)  # type: ignore[arg-type]
    assert UpdateRepository(fleet.path).version() == 1  # nothing was signed


@pytest.mark.parametrize("path", ["", "/abs", "a/../b", "a//b", ".hidden", "a/.tmp", "a\\b", "ü"])
def test_bad_target_paths_are_refused(path: str) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        check_target_path(path)


class StandInDelta:
    """A stand-in for edgecloud.fleet.delta (make_delta / delta_info / StructureChanged)
    while that module has not landed on this branch."""

    class StructureChanged(Exception):
        pass

    def __init__(self) -> None:
        self.infos: dict[bytes, Any] = {}
        self.structure_changed = False

    def make_delta(self, old: bytes, new: bytes, *, codec: str) -> bytes:
        if self.structure_changed:
            raise self.StructureChanged("initializer W renamed to W_1")
        delta = f"{codec}:{len(self.infos)}".encode()
        self.infos[delta] = SimpleNamespace(
            codec=codec, lossy=codec != "xor-zstd", tensors=1,
            from_sha256=hashlib.sha256(old).hexdigest(),
            to_sha256=hashlib.sha256(new).hexdigest(),
            result_sha256=hashlib.sha256(new).hexdigest(),
        )  # fmt: skip
        return delta

    def delta_info(self, delta: bytes) -> Any:
        return self.infos[delta]


@pytest.mark.skipif(load_delta_maker() is not None, reason="the real delta module is here")
def test_delta_targets_from_the_previous_published_version(
    fleet: Fleet, mirror_of, tmp_path: Path
) -> None:
    maker = StandInDelta()
    publish(fleet.models, "affine", 1, fleet.repo(), deltas=maker)
    result = publish(
        fleet.models, "affine", 2, fleet.repo(), codecs=("xor-zstd", "int8"), deltas=maker
    )
    assert sorted(result.deltas) == [
        "affine/deltas/1-2.int8.delta",
        "affine/deltas/1-2.xor-zstd.delta",
    ]
    device = mirror_of(fleet.path).device(tmp_path / "dev", fleet.root_bytes)
    device.refresh()
    info = device.get_targetinfo("affine/deltas/1-2.int8.delta").custom["edgecloud"]
    model = fleet.models.get("affine", 1, served_only=False).model_path.read_bytes()
    assert info == {
        "kind": "delta", "model": "affine", "from": 1, "to": 2, "codec": "int8", "lossy": True,
        "from_sha256": hashlib.sha256(model).hexdigest(),
        "result_sha256": hashlib.sha256(model).hexdigest(),
    }  # fmt: skip
    # a changed graph: no delta for that pair, said in the result
    onnx = fleet.models.get("affine", 2, served_only=False).model_path.read_bytes()
    fleet.models.add_version("affine", onnx, version=3)
    maker.structure_changed = True
    third = publish(fleet.models, "affine", 3, fleet.repo(), deltas=maker)
    assert third.deltas == {} and third.files
    assert "2->3: graph structure changed (initializer W renamed" in third.summary()


def test_nothing_signed_is_visible_before_sign(fleet: Fleet) -> None:
    repo = fleet.repo()
    repo.put_target("affine/rollout.json", b"{}", {"edgecloud": {"kind": "rollout"}})
    assert "affine/rollout.json" not in UpdateRepository(fleet.path).targets()
    version = repo.sign()
    reader = UpdateRepository(fleet.path)
    assert reader.read_target("affine/rollout.json") == b"{}" and reader.version() == version
    repo.remove_target("affine/rollout.json")
    repo.sign()
    assert "affine/rollout.json" not in reader.targets()


CHILD = textwrap.dedent(
    """
    import os, sys
    from edgecloud.fleet.update_repo import UpdateRepository
    repo = UpdateRepository(sys.argv[1], sys.argv[2])
    start = repo.version()
    for i in range(start, start + 10_000):
        repo.put_target(f"m/{i}/model.onnx", os.urandom(50_000), {"edgecloud": {"kind": "file"}})
        repo.sign()
        print(repo.version(), flush=True)
    """
)


def test_sigkill_mid_publish_leaves_a_repository_devices_accept(
    fleet: Fleet, mirror_of, tmp_path: Path
) -> None:
    """A real publisher process killed at random instants, three times: after each kill a
    device that followed along and a fresh one both accept the repository, at the
    version last committed or the one being written, and every target downloads."""
    mirror = mirror_of(fleet.path)
    rng = random.Random(16)
    follower = tmp_path / "follower"
    for round_ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(fleet.path), str(fleet.keys)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdout is not None
        committed = int(child.stdout.readline())  # it is publishing
        for _ in range(rng.randrange(0, 3)):
            committed = int(child.stdout.readline())
        time.sleep(rng.uniform(0, 0.02))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        version = UpdateRepository(fleet.path).version()
        # the child may commit again between the line read and the kill (a busy machine)
        assert version >= committed
        for home in (follower, tmp_path / f"fresh{round_}"):
            device = mirror.device(home, fleet.root_bytes)
            device.refresh()
            newest = f"m/{version - 1}/model.onnx"
            target = device.get_targetinfo(newest)
            assert target is not None
            assert Path(device.download_target(target)).stat().st_size == 50_000


@pytest.mark.skipif(load_delta_maker() is None, reason="edgecloud.fleet.delta not merged yet")
def test_real_delta_targets_rebuild_the_new_model(fleet: Fleet) -> None:
    from edgecloud.fleet import delta  # type: ignore[attr-defined]

    publish(fleet.models, "affine", 1, fleet.repo())
    result = publish(fleet.models, "affine", 2, fleet.repo())
    repo = UpdateRepository(fleet.path)
    old = repo.read_target("affine/1/model.onnx")
    new = repo.read_target("affine/2/model.onnx")
    for path in result.deltas:
        info = repo.targets()[path].custom["edgecloud"]
        assert info["from_sha256"] == hashlib.sha256(old).hexdigest()
        assert delta.apply_delta(old, repo.read_target(path)) == new
    assert result.deltas or result.skipped


def test_a_damaged_target_file_is_rewritten_on_the_next_sign(fleet: Fleet) -> None:
    publish(fleet.models, "affine", 1, fleet.repo(), deltas=None)
    [file] = (fleet.path / "targets" / "affine" / "1").glob("*.model.onnx")
    good = file.read_bytes()
    file.write_bytes(bytes(len(good)))  # same size, wrong bytes
    repo = fleet.repo()
    repo.put_target("affine/1/model.onnx", good, {"edgecloud": {"kind": "file"}})
    repo.sign()
    assert file.read_bytes() == good


def test_bad_put_target_arguments_are_refused(fleet: Fleet) -> None:
    repo = fleet.repo()
    for data, custom in ((b"x", {"v": float("nan")}), (b"x", {"v": object()}), (b"x", [1]),
                         ("text", {}), (None, {})):  # fmt: skip
        with pytest.raises(ConfigError, match="target 'm/x'"):
            repo.put_target("m/x", data, custom)  # type: ignore[arg-type]
    assert repo.sign() == 2 and UpdateRepository(fleet.path).targets() == {}


def test_concurrent_writers_lose_nothing(fleet: Fleet) -> None:
    """Two writers (two open repositories, as two processes would hold) serialize on the
    repository lock: every target each one signed is in the final metadata."""
    import threading

    def write(name: str) -> None:
        repo = fleet.repo()
        for i in range(5):
            repo.put_target(f"{name}/{i}", name.encode(), {})
            repo.sign()

    threads = [threading.Thread(target=write, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    repo = UpdateRepository(fleet.path)
    assert sorted(repo.targets()) == [f"{n}/{i}" for n in "ab" for i in range(5)]
    assert repo.version() == 11


def test_publishing_needs_no_root_key(fleet: Fleet) -> None:
    (fleet.keys / "root.pem").unlink()  # kept offline
    assert publish(fleet.models, "affine", 1, fleet.repo(), deltas=None).targets_version == 2
    (fleet.keys / "snapshot.pem").unlink()
    with pytest.raises(UpdateRepositoryError, match="needs the snapshot key"):
        publish(fleet.models, "affine", 2, fleet.repo(), deltas=None)
