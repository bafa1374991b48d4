"""Issue 14, kind 10: commands documented as idempotent leave the repository as it was.

The README promises ``zoo build`` is "cached: re-running is a no-op"; the
split docs promise "writing the same split again reuses it"; ``calibrate``
writes its threshold into the deployment, so a second run must find it there.
Each is checked by the sha256 of the whole tree (every path and every file's
bytes) before and after the re-run, with other commands interleaved —
``compress`` adding a newer version, ``split`` adding head/tail models — the
way they are used. Real CLI processes on a copy of the cached test zoo's
digits models; nothing is rebuilt.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgecloud import ModelRepository
from edgecloud.zoo import RECIPES, build_zoo

from ..trees import tree_sha256

#: What ``split`` measures each time it runs (head/tail timings on this
#: machine): a fresh measurement on purpose, not a model artefact.
MEASUREMENTS = frozenset({"split-profile.json"})


def edgecloud(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def digits(zoo_repo: ModelRepository, tmp_path: Path) -> ModelRepository:
    """digits-small and digits-large as the zoo built them (recipe provenance included),
    as version 1 (the zoo cache may hold versions of older recipes before it)."""
    repo = ModelRepository(tmp_path / "repo")
    for name in ("digits-small", "digits-large"):
        entry = zoo_repo.get(name)
        extra = {f: entry.path / f for f in entry.files if f != "model.onnx"}
        repo.add_version(name, entry.model_path, config=entry.config, extra_files=extra,
                         metadata=entry.metadata)  # fmt: skip
    return repo


def _zoo_build(repo: ModelRepository) -> None:
    result = edgecloud("zoo", "build", "--repo", repo.root, "--only", "digits-small")
    assert "up to date" in result.stdout


def test_zoo_build_after_split_and_compress_is_a_no_op(digits: ModelRepository) -> None:
    repo = digits
    before = tree_sha256(repo.root)
    _zoo_build(repo)
    assert tree_sha256(repo.root) == before

    edgecloud("split", "digits-small", "--repo", repo.root)
    after_split = tree_sha256(repo.root)
    _zoo_build(repo)
    assert tree_sha256(repo.root) == after_split

    edgecloud("compress", "digits-small", "--repo", repo.root, "-m", "int8-dynamic",
              "--data", "random")  # fmt: skip
    assert repo.get("digits-small").metadata["method"] == "int8-dynamic"
    after_compress = tree_sha256(repo.root)
    _zoo_build(repo)  # used to add a copy of version 1 as version 3, served instead of 2
    assert tree_sha256(repo.root) == after_compress
    assert repo.versions("digits-small") == [1, 2]
    assert repo.get("digits-small").version == 2  # the compressed version is still served


def test_a_repeated_split_reuses_every_model_version(digits: ModelRepository) -> None:
    repo = digits
    edgecloud("split", "digits-small", "--repo", repo.root, "--codec", "fp32,int8")
    first = tree_sha256(repo.root, skip=MEASUREMENTS)
    assert any(".tail." in p.name for p in repo.root.iterdir())
    edgecloud("split", "digits-small", "--repo", repo.root, "--codec", "fp32,int8")
    assert tree_sha256(repo.root, skip=MEASUREMENTS) == first


@pytest.mark.parametrize("newer", ["compressed", "imported"])
def test_build_zoo_recognises_its_version_under_any_newer_one(
    newer: str, digits: ModelRepository
) -> None:
    """In-process, the other ways a newer version appears: any ``add_version``."""
    repo = digits
    entry = repo.get("digits-small")
    metadata = {"method": "int8-dynamic"} if newer == "compressed" else {"note": "by hand"}
    repo.add_version("digits-small", entry.model_path, metadata=metadata)
    before = tree_sha256(repo.root)
    (result,) = build_zoo(repo, ["digits-small"])
    assert result.cached and result.version.version == 1
    assert tree_sha256(repo.root) == before


def test_build_zoo_rebuilds_a_damaged_recipe_version_only(digits: ModelRepository) -> None:
    """The cache trusts a version only if its files match their recorded sha256."""
    repo = digits
    (repo.root / "digits-small" / "1" / "model.onnx").write_bytes(b"truncated")
    assert RECIPES["digits-small"].fingerprint == repo.get(
        "digits-small", verify=False
    ).metadata.get("recipe")
    from edgecloud.zoo import up_to_date

    assert up_to_date(repo, RECIPES["digits-small"]) is None


def test_calibrate_twice_writes_the_same_deployment(
    digits: ModelRepository, tmp_path: Path
) -> None:
    path = tmp_path / "deployment.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "repository": str(digits.root),
                "root": {
                    "cascade": {
                        "small": "local",
                        "large": "local",
                        "small_model": "digits-small",
                        "large_model": "digits-large",
                        "threshold": 0.5,
                    }
                },
            }
        )
    )
    from edgecloud.zoo import datasets

    val = datasets.digits("val")
    np.savez(tmp_path / "val.npz", pixels=val.x, labels=val.y)
    repo_before = tree_sha256(digits.root)
    edgecloud("calibrate", "-d", path, "--data", tmp_path / "val.npz", "--target", "0.995")
    once = hashlib.sha256(path.read_bytes()).hexdigest()
    edgecloud("calibrate", "-d", path, "--data", tmp_path / "val.npz", "--target", "0.995")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == once
    assert tree_sha256(digits.root) == repo_before  # calibrating reads the models only
