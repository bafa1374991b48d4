from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgecloud import (
    ConfigError,
    InferRequest,
    LocalBackend,
    ModelConfig,
    ModelLoadError,
    ModelNotFoundError,
    ModelRepository,
    VersionPolicy,
    config_from_onnx,
)

from .models import affine_config, affine_onnx, make_repo


def test_lists_models_and_versions(repo: ModelRepository) -> None:
    assert repo.model_names() == ["affine", "two-input"]
    assert repo.versions("affine") == [1, 2]
    statuses = {s.name: s for s in repo.status()}
    assert statuses["affine"].served == [2] and statuses["affine"].error is None


def test_latest_and_explicit_versions(repo: ModelRepository) -> None:
    assert repo.get("affine").version == 2
    assert repo.get("affine", "latest").version == 2
    assert repo.get("affine", "2").metadata == {"note": "second"}


def test_version_policy_decides_what_is_served(repo: ModelRepository) -> None:
    config = repo.config("affine").model_copy(
        update={"version_policy": VersionPolicy(kind="specific", versions=[1])}
    )
    repo.add_version("affine", repo.get("affine").model_path, config=config)
    assert repo.served_versions("affine") == [1]
    assert repo.get("affine").version == 1
    with pytest.raises(ModelNotFoundError, match=r"no served version 3 \(served: \[1\]\)"):
        repo.get("affine", 3)
    assert VersionPolicy(kind="latest", count=2).select([3, 1, 2]) == [2, 3]
    assert VersionPolicy(kind="all").select([2, 1]) == [1, 2]


def test_every_artefact_is_hashed(repo: ModelRepository) -> None:
    entry = repo.get("affine", 2)
    assert set(entry.files) == {"model.onnx"}
    assert len(entry.files["model.onnx"]) == 64
    entry.verify()


def test_unknown_model_and_version_are_not_found(repo: ModelRepository) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no model 'nope'.*models: affine, two-input"):
        repo.get("nope")
    with pytest.raises(ModelNotFoundError, match="no served version 9"):
        repo.get("affine", 9)
    with pytest.raises(ModelNotFoundError, match="versions are numbers or 'latest'"):
        repo.get("affine", "newest")
    with pytest.raises(ModelNotFoundError):
        repo.get("../affine")


def test_corrupt_model_file_names_the_path(repo: ModelRepository) -> None:
    path = repo.get("affine", 2).model_path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=rf"{path}.*is corrupt.*sha256"):
        repo.get("affine", 2)


def test_missing_model_file_names_the_path(repo: ModelRepository) -> None:
    path = repo.get("affine", 2).model_path
    path.unlink()
    with pytest.raises(ModelLoadError, match=rf"missing {path}"):
        repo.get("affine", 2)


def test_invalid_config_names_the_file(repo: ModelRepository) -> None:
    config = repo.root / "affine" / "config.yaml"
    config.write_text("name: affine\ninputs: [oops\n")
    with pytest.raises(ModelLoadError, match=rf"invalid config {config}"):
        repo.config("affine")
    data = yaml.safe_load((repo.root / "two-input" / "config.yaml").read_text())
    data["max_batch_size"] = -3
    config.write_text(yaml.safe_dump(data | {"name": "affine"}))
    with pytest.raises(ModelLoadError, match="max_batch_size"):
        repo.config("affine")


def test_config_must_name_its_directory(repo: ModelRepository) -> None:
    config = repo.root / "affine" / "config.yaml"
    config.write_text(config.read_text().replace("name: affine", "name: other"))
    with pytest.raises(ModelLoadError, match="names the model 'other'"):
        repo.config("affine")


def test_one_broken_model_never_takes_down_the_others(repo: ModelRepository) -> None:
    (repo.root / "affine" / "config.yaml").unlink()
    statuses = {s.name: s for s in repo.status()}
    assert (
        statuses["affine"].error is not None
        and "config.yaml is missing" in statuses["affine"].error
    )
    assert statuses["two-input"].error is None
    with LocalBackend(repo) as local:
        with pytest.raises(ModelLoadError, match="has no config"):
            local.infer(InferRequest("affine", {"x": np.zeros((1, 4), np.float32)}))
        inputs = {"a": np.ones((1, 2), np.float32), "b": np.full((1, 2), 3, np.int64)}
        out = local.infer(InferRequest("two-input", inputs)).outputs["out"]
        np.testing.assert_array_equal(out, [[3.0, 3.0]])


def test_add_version_needs_a_config_for_a_new_model(repo: ModelRepository, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is new: pass a config"):
        repo.add_version("fresh", affine_onnx(tmp_path / "m.onnx"))
    with pytest.raises(ConfigError, match="names the model 'affine' but it is added as 'x'"):
        repo.add_version("x", tmp_path / "m.onnx", config=affine_config())
    with pytest.raises(ConfigError, match="already has version 1"):
        repo.add_version("affine", tmp_path / "m.onnx", version=1)


def test_failed_add_leaves_no_trace(repo: ModelRepository, tmp_path: Path) -> None:
    before = sorted(p.name for p in (repo.root / "affine").iterdir())
    with pytest.raises(FileNotFoundError):
        repo.add_version("affine", tmp_path / "does-not-exist.onnx")
    assert sorted(p.name for p in (repo.root / "affine").iterdir()) == before


def test_config_from_onnx_reads_tensors(tmp_path: Path) -> None:
    path = affine_onnx(tmp_path / "m.onnx")
    config = config_from_onnx(path, "m", max_batch_size=16, labels=["a", "b", "c"])
    assert [(s.name, s.datatype, s.shape) for s in config.inputs] == [("x", "FP32", (4,))]
    assert [s.name for s in config.outputs] == ["y", "z"]
    unbatched = config_from_onnx(path, "m")
    assert unbatched.inputs[0].shape == (-1, 4)


def test_config_from_garbage_is_a_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=rf"cannot read ONNX model {bad}"):
        config_from_onnx(bad, "bad")


def test_empty_or_missing_repository_lists_nothing(tmp_path: Path) -> None:
    assert ModelRepository(tmp_path / "absent").model_names() == []
    assert ModelRepository(tmp_path).status() == []


def test_a_pending_write_of_a_live_process_is_hidden_and_kept(
    repo: ModelRepository, tmp_path: Path
) -> None:
    """The journal: another process's unfinished write is invisible to readers (its new
    version, its new model, the config it rewrote) and only rolled back once it is gone."""
    import json
    import subprocess
    import sys

    from edgecloud.repository import _Journal

    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        config_before = repo.config("affine")
        versions_before = repo.versions("affine")
        journal = _Journal(repo.root)
        journal.data["owner"] = {"pid": writer.pid, "start": None}
        journal.record("affine", 9, config_file=True)
        journal.record("fresh", 1, config_file=True)
        (repo.root / "affine" / "9").mkdir()
        (repo.root / "fresh" / "1").mkdir(parents=True)
        (repo.root / "affine" / "config.yaml").write_text("not: [a config")
        assert repo.versions("affine") == versions_before
        assert repo.config("affine") == config_before
        assert "fresh" not in repo.model_names()
        with pytest.raises(ModelNotFoundError, match="no model 'fresh'"):
            repo.get("fresh", 1, served_only=False)
        assert repo.recover() == []  # alive: left alone
        assert json.loads(journal.path.read_text())["versions"] == [["affine", 9], ["fresh", 1]]
    finally:
        writer.kill()
        writer.wait()
    assert repo.recover() == [journal.path.stem]
    assert not (repo.root / "affine" / "9").exists() and not (repo.root / "fresh").exists()
    assert repo.config("affine") == config_before and repo.versions("affine") == versions_before


def test_versions_get_the_umask_permissions_not_0700(tmp_path: Path) -> None:
    """A repository one user builds is servable by another (a service account)."""
    old = os.umask(0o022)
    try:
        repo = make_repo(tmp_path)
    finally:
        os.umask(old)
    for version in (repo.root / "affine").iterdir():
        if version.is_dir():
            assert version.stat().st_mode & 0o777 == 0o755, version


def test_metadata_that_json_cannot_carry_is_refused_and_nothing_added(tmp_path: Path) -> None:
    """version.json is strict JSON: a NaN in the metadata is one error, no version appears."""
    repo = ModelRepository(tmp_path / "repo")
    model = affine_onnx(tmp_path / "m.onnx")
    repo.add_version("affine", model, config=affine_config("affine"))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="metadata holds NaN or infinity"):
            repo.add_version("affine", model, metadata={"accuracy": bad})
    assert repo.versions("affine") == [1]
    assert sorted(p.name for p in (repo.root / "affine").iterdir()) == ["1", "config.yaml"]


CONFIG_OUT_OF_RANGE = {
    "max_batch_size int32": {"max_batch_size": 2**31},
    "max_batch_size 10**20": {"max_batch_size": 10**20},
    "dimension": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2**63]}]},
    "value bound": {
        "inputs": [{"name": "x", "datatype": "INT64", "shape": [4], "max_value": 2**64}]
    },
    "policy count": {"version_policy": {"kind": "latest", "count": 2**31}},
    "policy versions": {"version_policy": {"kind": "specific", "versions": [2**63]}},
    "queue delay": {"dynamic_batching": {"max_queue_delay_us": 2**63}},
    "preferred size": {"dynamic_batching": {"preferred_batch_sizes": [2**31]}},
    "preferred size 0": {"dynamic_batching": {"preferred_batch_sizes": [0]}},
}


@pytest.mark.parametrize("kind", sorted(CONFIG_OUT_OF_RANGE))
def test_config_integers_are_bounded_for_every_writer(kind: str, repo: ModelRepository) -> None:
    """Every integer of a config fits Triton's model_config.proto (int32 batch sizes,
    int64 dims/versions/delays) and JSON: out of range, a hand-edited config.yaml makes
    its model alone not ready (before: stored, and /v2/models/x/config answered 500)."""
    path = repo.root / "affine" / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    raw.update(CONFIG_OUT_OF_RANGE[kind])
    with pytest.raises(ValueError):
        ModelConfig.model_validate(raw)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelLoadError, match="invalid config"):
        repo.config("affine")
    statuses = {s.name: s for s in repo.status()}
    assert statuses["affine"].error and "invalid config" in statuses["affine"].error
    assert statuses["two-input"].error is None


def test_preferred_batch_sizes_beyond_max_batch_size_are_refused(
    repo: ModelRepository, tmp_path: Path
) -> None:
    """A preferred size above max_batch_size could never be formed (a batch never holds
    more rows): refused with a line naming both, as Triton refuses it, for config.yaml
    (both readers) and config.pbtxt alike."""
    path = repo.root / "affine" / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["dynamic_batching"] = {"preferred_batch_sizes": [4, 16]}
    with pytest.raises(ValueError, match=r"preferred_batch_sizes \[16\] exceed max_batch_size 8"):
        ModelConfig.model_validate(raw)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelLoadError, match="preferred_batch_sizes"):
        repo.config("affine")
    raw["dynamic_batching"] = {"preferred_batch_sizes": [4, 8]}  # at the limit: kept
    path.write_text(yaml.safe_dump(raw))
    assert repo.config("affine").dynamic_batching.preferred_batch_sizes == [4, 8]

    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    model = tmp_path / "triton" / "t"
    (model / "1").mkdir(parents=True)
    affine_onnx(model / "1" / "model.onnx")
    (model / "config.pbtxt").write_text(
        'name: "t"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        "dynamic_batching { preferred_batch_size: [ 4, 16 ] }\n"
    )
    [status] = ModelRepository(tmp_path / "triton").status()
    assert status.error is not None and "preferred_batch_sizes" in status.error, status.error


def test_largest_in_range_values_are_kept(repo: ModelRepository) -> None:
    config = repo.config("affine").model_copy(update={"max_batch_size": 2**31 - 1})
    assert ModelConfig.model_validate(config.model_dump()).max_batch_size == 2**31 - 1


@pytest.mark.parametrize("odd", ["01", "0", "²", "١", "1.0", " 2", "+3", "99999999999999999999"])
def test_only_canonical_decimal_directories_are_versions(odd: str, repo: ModelRepository) -> None:
    """Versions are directories named as Triton names them (ASCII digits, no leading
    zero, int64); any other directory is ignored by every reader (before: '²' raised
    ValueError, '01' FileNotFoundError and stopped the server)."""
    directory = repo.root / "affine"
    shutil.copytree(directory / "1", directory / odd)
    assert repo.versions("affine") == [1, 2]
    assert {s.name: s.error for s in repo.status()} == {"affine": None, "two-input": None}
    assert {s.name: s.ignored for s in repo.status()}["affine"] == ((odd,) if odd.isdigit() else ())
    with LocalBackend(repo) as local:
        local.load("affine")
    version = repo.add_version("affine", directory / "1" / "model.onnx")
    assert version.version == 3 and repo.versions("affine") == [1, 2, 3]


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [
        ("max_batch_size: 99999999999", "99999999999"),
        ("dynamic_batching { max_queue_delay_microseconds: 18446744073709551615 }",
         "max_queue_delay_us"),
    ],
)  # fmt: skip
def test_triton_config_integers_are_bounded(setting: str, refusal: str, tmp_path: Path) -> None:
    """A Triton config.pbtxt goes through the same ModelConfig bounds: out of range,
    the model is not ready with one line naming the setting (never a 500 on /config)."""
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    model = tmp_path / "repo" / "t"
    (model / "1").mkdir(parents=True)
    affine_onnx(model / "1" / "model.onnx")
    (model / "config.pbtxt").write_text(f'name: "t"\nplatform: "onnxruntime_onnx"\n{setting}\n')
    [status] = ModelRepository(tmp_path / "repo").status()
    assert status.error is not None and refusal in status.error, status.error
