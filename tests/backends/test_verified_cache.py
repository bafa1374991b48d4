"""The record of verified files (edgecloud._verified): a load skips hashing a file only
while its stamp is as a full check left it; every other case is hashed in full.

Files written by a test are younger than RACY_NS (2 s), which the record never
trusts; the tests that need a file recorded set RACY_NS to 0 (the racy rule has
a test of its own).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from edgecloud import LocalBackend, ModelRepository, _verified
from edgecloud._verified import VerifiedRecord, record_file
from edgecloud.errors import ConfigError, ModelLoadError


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own state directory, and files trusted as soon as they are checked."""
    monkeypatch.setenv("EDGECLOUD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(_verified, "RACY_NS", 0)
    return tmp_path / "state"


def _model_file(repo: ModelRepository) -> Path:
    return repo.get("affine", verify=False).model_path


def _record(repo: ModelRepository) -> dict[str, object]:
    path = record_file(_model_file(repo).parent)
    assert path is not None
    data: dict[str, object] = json.loads(path.read_text())
    return data


def _load(repo: ModelRepository, verify: bool | str = True) -> None:
    with LocalBackend(repo, verify=verify) as local:  # type: ignore[arg-type]
        local.load("affine")


def _keep_times(path: Path, data: bytes) -> None:
    """Write ``data`` into ``path`` in place, then set its atime and mtime back."""
    st = path.stat()
    with path.open("r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_load_records_its_files_and_the_next_one_is_vouched_for(
    repo: ModelRepository, state: Path
) -> None:
    _load(repo)
    entry = repo.get("affine", verify=False)
    record = VerifiedRecord(entry.path)
    assert all(record.vouches(rel, sha) for rel, sha in entry.files.items())
    assert not record.vouches("model.onnx", "0" * 64)  # another expected sha256
    assert _record(repo)["path"] == str(entry.path.resolve())
    _load(repo)  # and loads from the record


def test_a_file_rewritten_with_its_size_and_mtime_kept_is_hashed(
    repo: ModelRepository, state: Path
) -> None:
    _load(repo)
    path = _model_file(repo)
    data = path.read_bytes()
    _keep_times(path, bytes([data[0] ^ 0xFF]) + data[1:])  # ctime moves: utime cannot set it
    assert path.stat().st_size == len(data)
    with pytest.raises(ModelLoadError, match="is corrupt"):
        _load(repo)


def test_a_file_replaced_by_another_of_the_same_size_and_times_is_hashed(
    repo: ModelRepository, state: Path
) -> None:
    _load(repo)
    path = _model_file(repo)
    data, st = path.read_bytes(), path.stat()
    other = path.with_name("other")
    other.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)  # a new inode at the same path
    with pytest.raises(ModelLoadError, match="is corrupt"):
        _load(repo)


def test_a_truncated_file_is_hashed(repo: ModelRepository, state: Path) -> None:
    _load(repo)
    path = _model_file(repo)
    st = path.stat()
    os.truncate(path, st.st_size - 10)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ModelLoadError, match="is corrupt"):
        _load(repo)


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff not json",
        b"[1, 2]",
        b'{"format": 2, "path": "PATH", "files": {}}',
        b'{"format": 1, "path": "PATH", "files": []}',
        b'{"format": 1, "path": "PATH", "files": {"model.onnx": "abc"}}',
        b" " * (_verified.MAX_RECORD_BYTES + 1),
    ],
    ids=["not-json", "not-object", "other-format", "files-not-object", "odd-entry", "too-big"],
)
def test_a_corrupt_record_is_ignored_and_rewritten(
    repo: ModelRepository, state: Path, content: bytes
) -> None:
    entry = repo.get("affine", verify=False)
    path = record_file(entry.path)
    assert path is not None
    path.parent.mkdir(parents=True)
    path.write_bytes(content.replace(b"PATH", str(entry.path.resolve()).encode()))
    _load(repo)
    assert VerifiedRecord(entry.path).vouches("model.onnx", entry.files["model.onnx"])


def test_a_record_of_another_directory_or_sha256_is_not_trusted(
    repo: ModelRepository, state: Path
) -> None:
    """A record that would vouch for the damaged file, but names another directory (a
    record file reused for another version) or another expected sha256, is ignored."""
    _load(repo)
    entry = repo.get("affine", verify=False)
    good = _record(repo)
    path = _model_file(repo)
    _keep_times(path, b"\x00")
    st = path.stat()
    stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    record = record_file(entry.path)
    assert record is not None
    others = [("/elsewhere/affine/2", entry.files["model.onnx"]), (good["path"], "0" * 64)]
    for where, sha in others:
        record.write_text(
            json.dumps({"format": 1, "path": where, "files": {"model.onnx": [sha, *stamp]}})
        )
        with pytest.raises(ModelLoadError, match="is corrupt"):
            _load(repo)


def test_a_change_the_stamp_does_not_show_needs_a_full_check(
    repo: ModelRepository, state: Path
) -> None:
    """The documented limit: damage that bypasses the file system (bit rot) keeps the
    stamp, so the record vouches for the file; ``verify="full"``, ``verify()`` and
    ``models list`` (status) hash it."""
    _load(repo)
    entry = repo.get("affine", verify=False)
    path = _model_file(repo)
    _keep_times(path, b"\x00")
    st = path.stat()
    data = _record(repo)
    files = data["files"]
    assert isinstance(files, dict)
    files["model.onnx"][1:] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    record = record_file(entry.path)
    assert record is not None
    record.write_text(json.dumps(data))  # as if the disk had flipped the byte
    entry.verify(full=False)  # vouched for: not read
    with pytest.raises(ModelLoadError, match="is corrupt"):
        entry.verify()
    with pytest.raises(ModelLoadError, match="is corrupt"):
        _load(repo, verify="full")
    status = {s.name: s.error for s in repo.status()}
    assert status["affine"] is not None and "is corrupt" in status["affine"]


def test_an_unwritable_record_directory_only_costs_the_hashing(
    repo: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_verified, "RACY_NS", 0)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("EDGECLOUD_STATE_DIR", str(blocker))  # mkdir fails: ENOTDIR
    _load(repo)
    _load(repo)
    monkeypatch.setenv("EDGECLOUD_STATE_DIR", str(tmp_path / "state"))
    entry = repo.get("affine", verify=False)
    taken = record_file(entry.path)
    assert taken is not None
    taken.mkdir(parents=True)  # the record's name is a directory: neither read nor replaced
    _load(repo)
    assert taken.is_dir() and not list(taken.parent.glob(".*.tmp"))
    _keep_times(_model_file(repo), b"\x00")
    with pytest.raises(ModelLoadError, match="is corrupt"):  # and the check still runs
        _load(repo)


def test_a_file_changed_within_racy_ns_is_not_recorded(
    repo: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECLOUD_STATE_DIR", str(tmp_path / "state"))
    entry = repo.get("affine", verify=False)
    for rel in entry.files:
        (entry.path / rel).touch()  # changed just now (ctime: now)
    assert time.time_ns() - _model_file(repo).stat().st_ctime_ns < _verified.RACY_NS
    _load(repo)
    record = record_file(entry.path)
    assert record is not None and not record.exists()


def test_concurrent_loaders_leave_a_valid_record(repo: ModelRepository, state: Path) -> None:
    """Threads of one process and separate processes load at once: every load passes
    and the record that is left vouches for every file."""
    entry = repo.get("affine", verify=False)
    child = (
        "import sys; import edgecloud._verified as v; v.RACY_NS = 0\n"
        "from edgecloud import LocalBackend\n"
        "for _ in range(5):\n"
        "    with LocalBackend(sys.argv[1]) as local: local.load('affine')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", child, str(repo.root)], env=os.environ.copy())
        for _ in range(2)
    ]
    errors: list[BaseException] = []

    def loads() -> None:
        try:
            for _ in range(5):
                _load(repo)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=loads) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert not errors
    record = VerifiedRecord(entry.path)
    assert all(record.vouches(rel, sha) for rel, sha in entry.files.items())
    path = record_file(entry.path)
    assert path is not None and not list(path.parent.glob(".*.tmp"))


def test_verify_takes_true_false_or_full(repo: ModelRepository) -> None:
    with pytest.raises(ConfigError, match="verify must be True, False or 'full'"):
        LocalBackend(repo, verify="yes")  # type: ignore[arg-type]


# -- the issue-17 hostile review: writes the stamp did not see, a planted symlink -----


@pytest.fixture
def tracked(repo: ModelRepository, state: Path) -> None:
    if not _verified.tracks_writes(repo.root):
        pytest.skip(f"{repo.root} is not on a file system the record trusts")


def test_a_write_through_a_mapping_while_the_file_is_hashed_is_never_vouched_for(
    repo: ModelRepository, state: Path, tracked: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmap

    from edgecloud import repository as repository_module

    path = _model_file(repo)
    with path.open("r+b") as f, mmap.mmap(f.fileno(), 0) as mapping:
        mapping[0:1] = mapping[0:1]  # the page is dirty and writable before the check
        real = repository_module.sha256_file

        def hash_then_write(file: Path) -> str:
            digest = real(file)
            if file == path:  # a write lands after the bytes were read, before the re-stat
                mapping[-1:] = bytes([mapping[-1] ^ 0xFF])
            return digest

        monkeypatch.setattr(repository_module, "sha256_file", hash_then_write)
        with contextlib.suppress(ModelLoadError):  # hashed the old bytes; opens the new
            _load(repo)
        monkeypatch.setattr(repository_module, "sha256_file", real)
        with pytest.raises(ModelLoadError, match="corrupt"):  # hashed again, not vouched for
            _load(repo)


def test_on_tmpfs_nothing_is_recorded_and_every_load_hashes(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or _verified.file_system_type(shm.stat().st_dev) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    from ..models import make_repo

    root = Path(tempfile.mkdtemp(dir=shm))
    try:
        repo = make_repo(root)
        assert not _verified.tracks_writes(repo.root)
        _load(repo)
        assert not state.exists() or not any(state.rglob("*.json")), "recorded on tmpfs"
        _keep_times(_model_file(repo), b"\0")
        with pytest.raises(ModelLoadError, match="corrupt"):
            _load(repo)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_planted_symlink_in_the_record_directory_is_never_followed(
    repo: ModelRepository, state: Path, tracked: None, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    path = record_file(_model_file(repo).parent)
    assert path is not None
    path.parent.mkdir(parents=True)
    for name in (f".{path.name}.tmp", f".{path.name}.{os.getpid()}.tmp"):
        (path.parent / name).symlink_to(victim)
    (path.parent / path.name).symlink_to(victim)  # the record itself: replaced, not followed
    _load(repo)
    assert victim.read_text() == "keep me"
    assert not path.is_symlink() and _record(repo)["files"]


def test_a_file_mounted_from_another_file_system_is_never_vouched_for(
    repo: ModelRepository, state: Path, tracked: None
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or _verified.file_system_type(shm.stat().st_dev) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    path = _model_file(repo)
    source = Path(tempfile.mkdtemp(dir=shm)) / "model.onnx"
    source.write_bytes(path.read_bytes())
    mounted = subprocess.run(
        ["mount", "--bind", str(source), str(path)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        shutil.rmtree(source.parent, ignore_errors=True)
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        _load(repo)  # the directory is on a tracked file system, the file is not
        record = record_file(path.parent)
        assert record is not None
        assert not record.exists() or "model.onnx" not in _record(repo)["files"]  # type: ignore[operator]
    finally:
        subprocess.run(["umount", str(path)], check=False)
        shutil.rmtree(source.parent, ignore_errors=True)
