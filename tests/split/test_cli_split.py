"""`edgecloud split`: candidate table, versions in the repository, profile, plot, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgecloud import ModelRepository
from edgecloud.split import SplitProfile

from ..test_cli import assert_one_line_error, edgecloud


def test_split_writes_heads_tails_profile_and_plot(
    branched_repo: ModelRepository, tmp_path: Path
) -> None:
    plot = tmp_path / "split.png"
    result = edgecloud("split", "branched", "--repo", branched_repo.root,
                       "--cuts", "cut2,cut3", "--codec", "fp32,fp16",
                       "--bandwidths", "0.01,1000", "--plot", plot)  # fmt: skip
    assert result.returncode == 0, result.stderr
    for key in ("all-local", "all-remote", "cut2", "cut3/fp16", "0.01 Mbit/s", "1000 Mbit/s"):
        assert key in result.stdout
    assert "4 cut points; 4 splits written (2 heads, 4 tails)" in " ".join(result.stdout.split())
    names = branched_repo.model_names()
    assert {"branched.head.cut2", "branched.tail.cut3", "branched.tail.cut3.fp16"} <= set(names)
    tail = branched_repo.get("branched.tail.cut3.fp16")
    assert tail.metadata["parent_version"] == 1 and tail.metadata["codec"] == "fp16"
    profile = SplitProfile.load(branched_repo.root / "branched" / "split-profile.json")
    assert len(profile.candidates) == 6
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_split_mistakes_are_one_line_errors(branched_repo: ModelRepository, tmp_path: Path) -> None:
    root = branched_repo.root
    assert_one_line_error(edgecloud("split", "branched", "--repo", root, "--cuts", "cut99"),
                          "no cut point 'cut99'", "valid cuts: cut0, cut1, cut2, cut3")  # fmt: skip
    assert_one_line_error(edgecloud("split", "branched", "--repo", root, "--codec", "int4"),
                          "unknown activation codec 'int4'")  # fmt: skip
    assert_one_line_error(edgecloud("split", "nope", "--repo", root), "no model 'nope'")
    assert_one_line_error(
        edgecloud("split", "branched", "--repo", root, "--tail-profile", tmp_path / "none.json"),
        "does not exist",
    )
    (tmp_path / "bad.json").write_text("{not json")
    assert_one_line_error(
        edgecloud("split", "branched", "--repo", root, "--tail-profile", tmp_path / "bad.json"),
        "is not valid",
    )
    assert branched_repo.model_names() == ["branched"]  # nothing half-written


def _split(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``edgecloud split`` in a subprocess running this checkout's code (its PYTHONPATH)."""
    return subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "split", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"},
    )


def test_split_version_reaches_every_intact_version_on_disk(branched_repo: ModelRepository) -> None:
    """After a second version is added (as `compress` does), version 1 is no longer served;
    before, `split --version 1` was "no served version 1 (served: [2])"."""
    root = branched_repo.root
    parent = branched_repo.get("branched")
    branched_repo.add_version("branched", parent.model_path)
    assert branched_repo.served_versions("branched") == [2]
    result = _split("branched", "--repo", root, "--version", "1",
                       "--cuts", "cut2", "--codec", "fp32,int8")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert SplitProfile.load(root / "branched" / "split-profile.json").version == 1
    assert branched_repo.get("branched.tail.cut2.int8", 1).metadata["parent_version"] == 1
    assert_one_line_error(_split("branched", "--repo", root, "--version", "7"),
                          "no version 7 (on disk: [1, 2])")  # fmt: skip
    model = parent.model_path
    model.write_bytes(model.read_bytes() + b"\0")
    assert_one_line_error(_split("branched", "--repo", root, "--version", "1"),
                          "version 1", "is corrupt")  # fmt: skip


def test_split_runs_on_data_given_and_names_a_file_that_does_not_fit(tmp_path: Path) -> None:
    """A model imported without samples splits on --data; a file that does not fit the
    model is one line naming it, and nothing is written."""
    from edgecloud.repository import config_from_onnx

    from .test_partition import branched_onnx

    repo = ModelRepository(tmp_path / "repo")
    path = branched_onnx(tmp_path / "branched.onnx")
    repo.add_version("branched", path, config=config_from_onnx(path, "branched", max_batch_size=4))
    np.savez(tmp_path / "wide.npz", x=np.ones((2, 9), np.float32))
    assert_one_line_error(_split("branched", "--repo", repo.root, "--data", tmp_path / "wide.npz"),
                          "wide.npz", "x (FP32 [rows, 8])")  # fmt: skip
    assert_one_line_error(_split("branched", "--repo", repo.root, "--data", tmp_path / "no.npz"),
                          "no.npz", "does not exist")  # fmt: skip
    for name, bad in (("nan", np.nan), ("inf", -np.inf)):  # a measurement on them is meaningless
        rows = np.ones((5, 8), np.float32)
        rows[1:] = bad
        np.savez(tmp_path / f"{name}.npz", x=rows)
        refused = _split("branched", "--repo", repo.root, "--data", tmp_path / f"{name}.npz")
        assert_one_line_error(refused, f"{name}.npz", "input 'x' holds 32 NaN or infinite "
                              "values (first at row 1)")  # fmt: skip
        assert "Warning" not in refused.stderr
    assert_one_line_error(_split("branched", "--repo", repo.root, "--plot", tmp_path / "p.json"),
                          "--plot writes a PNG")  # fmt: skip
    (tmp_path / "mine.yaml").write_text("root: local\n")  # never replaced by a profile
    assert_one_line_error(_split("branched", "--repo", repo.root, "--data", tmp_path / "nan.npz",
                                 "--profile-out", tmp_path / "mine.yaml"),
                          "mine.yaml exists and is not a split profile")  # fmt: skip
    assert (tmp_path / "mine.yaml").read_text() == "root: local\n"
    assert repo.model_names() == ["branched"]
    assert not (repo.root / "branched" / "split-profile.json").exists()
    rows = np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32)
    np.savez(tmp_path / "rows.npz", x=rows)
    ok = _split("branched", "--repo", repo.root, "--data", tmp_path / "rows.npz",
                "--cuts", "cut3", "--codec", "fp32")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    profile = SplitProfile.load(repo.root / "branched" / "split-profile.json")
    all_remote = next(c for c in profile.candidates if c.name == "all-remote")
    assert all_remote.bytes_up == rows[:1].nbytes  # the first row of the file, as a request


def test_one_row_is_timed_and_up_to_32_rows_check_fidelity(
    branched_repo: ModelRepository, tmp_path: Path
) -> None:
    from edgecloud.split.workflow import FIDELITY_ROWS, _split_inputs

    parent = branched_repo.get("branched")
    timed, checked = _split_inputs(parent, None)  # the version's 4 sample rows
    assert timed["x"].shape == (1, 8) and checked["x"].shape == (4, 8)
    np.savez(tmp_path / "many.npz", x=np.ones((40, 8), np.float32))
    timed, checked = _split_inputs(parent, tmp_path / "many.npz")
    assert timed["x"].shape == (1, 8) and checked["x"].shape == (FIDELITY_ROWS, 8)


def test_a_profile_is_strict_json_even_when_a_cosine_is_not_finite(tmp_path: Path) -> None:
    """A split whose outputs held NaN has a NaN cosine: saved as null (``NaN`` is not
    JSON, other readers refuse it) and read back as NaN."""
    import json
    import math

    from edgecloud.split import CutProfile

    candidates = [CutProfile("all-local", 0.1, 0.0, 0, 0),
                  CutProfile("cut2", 0.05, 0.05, 10, 10, "fp32", math.nan)]  # fmt: skip
    profile = SplitProfile("m", 1, 1, "test", candidates, {})
    path = profile.save(tmp_path / "p.json")

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a JSON file")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data["candidates"][1]["cosine"] is None
    assert math.isnan(SplitProfile.load(path).candidates[1].cosine)
    assert SplitProfile.load(path).candidates[0].cosine == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # written by rename, no leftovers
