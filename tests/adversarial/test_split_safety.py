"""Split never leaves half a pair (issue 14, kind 7).

Members of the kind: graphs with control flow (If, Loop: subgraphs capture
outer tensors by name), several inputs (a raw input only the tail consumes),
a graph output that later nodes consume too, and failures in the middle of
writing (a tail that fails the numerical check, a second write that fails, a
later codec refused after an earlier pair was written). Each split is either
exact (checked against the full model) or refused with a typed error, and a
refusal leaves the repository byte-identical (sha256 of the tree).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecloud import ConfigError, EdgecloudError, ModelRepository
from edgecloud.split import SplitProfile, cut_points, split_model, verify_split, write_split

from ..sample_data import random_samples
from ..trees import tree_sha256
from ._compress_helpers import (
    add_model,
    branch_onnx,
    cli_env,
    loop_onnx,
    reused_output_onnx,
    save,
    sensitive_onnx,
    two_input_onnx,
)

RNG = np.random.default_rng(11)
#: The (empty) journal directory a killed writer leaves behind, once rolled back.
PENDING = frozenset({".pending"})


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    repository = ModelRepository(tmp_path / "repo")
    for name, build in [("branch", branch_onnx), ("loop", loop_onnx), ("two", two_input_onnx),
                        ("reused", reused_output_onnx), ("sensitive", sensitive_onnx)]:  # fmt: skip
        add_model(repository, name, build(tmp_path / f"{name}.onnx"), batch=16)
    return repository


def _x(width: int, rows: int = 4) -> np.ndarray:
    return RNG.standard_normal((rows, width)).astype(np.float32)


@pytest.mark.parametrize(("model", "width"), [("branch", 32), ("loop", 8)])
def test_control_flow_splits_are_exact_at_every_cut(
    repo: ModelRepository, model: str, width: int
) -> None:
    parent = repo.get(model, served_only=False)
    cuts = cut_points(parent.model_path)
    assert cuts  # before: every cut separated the subgraph from what it captures
    if model == "loop":  # the Loop's output has no shape: that cut is refused, clearly
        before = tree_sha256(repo.root)
        with pytest.raises(ConfigError, match=r"at cut2: the head would exchange \['v'\]"):
            split_model(repo, model, cuts=["cut2"], inputs={"x": _x(width)}, repeats=1)
        assert tree_sha256(repo.root) == before
        cuts = [c for c in cuts if c.name != "cut2"]
    positive = {"x": np.abs(_x(width))}
    result = split_model(repo, model, cuts=[c.name for c in cuts], inputs=positive, repeats=1)
    assert len(result.pairs) == len(cuts)
    for pair in result.pairs:
        assert "x" in pair.cut.tensors and pair.cut.raw_inputs_of_tail == ("x",)
        for feed in (positive, {"x": -np.abs(_x(width))}):  # both If branches
            assert (
                verify_split(parent.model_path, pair.head.model_path, pair.tail.model_path, feed)
                < 1e-4
            )


def test_a_raw_input_only_the_tail_consumes_is_tail_input_and_reported(
    repo: ModelRepository,
) -> None:
    feed = {"x": _x(8), "z": _x(8)}
    result = split_model(repo, "two", codecs=["fp32", "int8"], inputs=feed, repeats=1)
    assert result.pairs
    for pair in result.pairs:
        assert pair.cut.raw_inputs_of_tail == ("z",)
        assert "z" in [t.name for t in pair.tail.config.inputs]
        assert pair.tail.metadata["raw_inputs_of_tail"] == ["z"]
        assert result.profile.raw_inputs_of_tail[pair.cut.name] == ["z"]
        if pair.codec == "fp32":
            assert (
                verify_split(
                    pair_parent(repo, "two"), pair.head.model_path, pair.tail.model_path, feed
                )
                < 1e-4
            )
    assert all(c.cosine > 0.99 for c in result.profile.candidates)
    saved = result.profile.save(repo.root / "two" / "split-profile.json")
    loaded = SplitProfile.load(saved)
    assert loaded.raw_inputs_of_tail == result.profile.raw_inputs_of_tail


def pair_parent(repo: ModelRepository, model: str) -> Path:
    return repo.get(model, served_only=False).model_path


def test_an_output_consumed_later_passes_through_exactly(repo: ModelRepository) -> None:
    feed = {"x": _x(8)}
    names = [c.name for c in cut_points(pair_parent(repo, "reused"))]
    result = split_model(repo, "reused", cuts=names, inputs=feed, repeats=1)
    for pair in result.pairs:
        assert [o.name for o in pair.tail.config.outputs] == ["r", "y"]
        assert (
            verify_split(
                pair_parent(repo, "reused"), pair.head.model_path, pair.tail.model_path, feed
            )
            < 1e-4
        )


def test_a_lossy_codec_on_a_passed_through_output_is_refused_and_undone(
    repo: ModelRepository,
) -> None:
    # cut2 sends r (an output) and t: fp32 is exact and is written first; int8 would
    # hand the caller r as uint8 — refused, and the fp32 pair already written is removed
    before = tree_sha256(repo.root)
    with pytest.raises(ConfigError, match=r"at cut2 with int8 activations.*nothing was written"):
        split_model(repo, "reused", codecs=["fp32", "int8"], cuts=["cut2"],
                    inputs={"x": _x(8)}, repeats=1)  # fmt: skip
    assert tree_sha256(repo.root) == before


def test_a_tail_that_fails_the_numerical_check_writes_nothing(repo: ModelRepository) -> None:
    before = tree_sha256(repo.root)
    split = r"cannot split 'sensitive' version 1 at cut1 with int8 activations"
    with pytest.raises(ConfigError, match=split + r".*cosine .* only; nothing was written"):
        split_model(repo, "sensitive", codecs=["fp32", "int8"], cuts=["cut1"],
                    inputs={"x": _x(8)}, repeats=1)  # fmt: skip
    assert tree_sha256(repo.root) == before


def test_a_failing_second_write_removes_the_head(repo: ModelRepository) -> None:
    parent = repo.get("two", served_only=False)
    cut = cut_points(parent.model_path)[0]
    (repo.root / f"two.tail.{cut.name}").write_text("in the way")  # the tail cannot be written
    before = tree_sha256(repo.root)
    with pytest.raises(EdgecloudError, match="nothing of this split was kept"):
        write_split(repo, parent, cut, inputs={"x": _x(8), "z": _x(8)})
    assert tree_sha256(repo.root) == before
    assert not (repo.root / f"two.head.{cut.name}").exists()


def test_a_failure_in_a_later_pair_undoes_the_earlier_pairs(repo: ModelRepository) -> None:
    parent = repo.get("branch", served_only=False)
    cuts = cut_points(parent.model_path)
    (repo.root / f"branch.tail.{cuts[-1].name}").write_text("in the way")
    before = tree_sha256(repo.root)
    with pytest.raises(EdgecloudError):
        split_model(repo, "branch", cuts=[c.name for c in cuts], inputs={"x": _x(32)}, repeats=1)
    assert tree_sha256(repo.root) == before


def _cli(repo: ModelRepository, model: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``edgecloud split MODEL ... --data`` seeded random rows of the model's inputs."""
    data = random_samples(repo.root.parent / f"{model}.npz", repo.get(model).config)
    return subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "split", model, *args, "--repo", str(repo.root),
         "--data", str(data)],
        capture_output=True, text=True, timeout=300, env=cli_env(),
    )  # fmt: skip


def test_cli_splits_control_flow_and_refuses_in_one_line(repo: ModelRepository) -> None:
    ok = _cli(repo, "loop", "--codec", "fp32", "--cuts", "cut1")
    assert ok.returncode == 0, ok.stderr
    assert (repo.root / "loop.head.cut1" / "1").is_dir()
    assert (repo.root / "loop.tail.cut1" / "1").is_dir()
    before = tree_sha256(repo.root)
    bad = _cli(repo, "sensitive", "--codec", "fp32,int8", "--cuts", "cut1")
    assert bad.returncode == 1
    assert "nothing was written" in " ".join(bad.stderr.split())
    assert "Traceback" not in bad.stderr and "internal error" not in bad.stderr
    assert tree_sha256(repo.root) == before
    # the splits are fine but their profile cannot be written: none of them is kept
    unwritable = _cli(repo, "two", "--codec", "fp32", "--profile-out", "/dev/null/profile.json")
    assert unwritable.returncode == 1, unwritable.stderr
    assert "cannot write the split profile" in " ".join(unwritable.stderr.split())
    assert tree_sha256(repo.root) == before


def test_zoo_vad_splits_exactly_and_reports_its_raw_inputs(
    zoo_repo: ModelRepository, tmp_path: Path
) -> None:
    """The reported 'internal error': Silero VAD (an If whose branches capture input, state)."""
    repo = ModelRepository(tmp_path / "zoo")
    shutil.copytree(zoo_repo.root / "vad", repo.root / "vad")
    chunk = {
        "input": (0.1 * _x(512, rows=1)),
        "state": np.zeros((2, 1, 128), np.float32),
        "sr": np.array(16000, np.int64),
    }
    names = [c.name for c in cut_points(repo.get("vad").model_path)]
    result = split_model(repo, "vad", cuts=names, inputs=chunk, repeats=1)
    raw = {pair.cut.name: pair.cut.raw_inputs_of_tail for pair in result.pairs}
    # Equal_0_C = Equal(sr, 16000): computed from a raw input by a non-feature op, so raw too
    # (partition.FEATURE_OPS; privacy fails closed).
    assert raw["cut0"] == ("input", "state", "Equal_0_C") and len(result.pairs) == len(names)


# --- every graph the repository can hold (finding C1) ------------------------


def _mlp_onnx(path: Path, width: int = 64) -> Path:
    """x: FP32 [batch, 64] -> MatMul -> Relu -> MatMul -> y: FP32 [batch, 8]; big enough
    for int4-weight's 32-wide blocks, so every compress method rewrites both MatMuls."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((width, width)) / 8).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((width, 8)) / 8).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [w1, w2],
    )
    return save(graph, path)


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-static", "fp16", "int4-weight"])
def test_every_compressed_version_splits_exactly_at_every_cut(method: str, tmp_path: Path) -> None:
    """Before: int8-dynamic then split = "internal error: IndexError" (a rank-0 scale crossed
    the cut); int4-weight refused every cut (MatMulNBits outputs had no inferred type);
    fp16's first cut diverged by 3e-4 against an fp32 tolerance."""
    from edgecloud.compress import compress
    from edgecloud.split.artifacts import fidelity

    repo = ModelRepository(tmp_path / "repo")
    add_model(repo, "mlp", _mlp_onnx(tmp_path / "mlp.onnx"), batch=16)
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=RNG.standard_normal((64, 64)).astype(np.float32))
    options = {"calibration": calibration} if method == "int8-static" else {}
    compress(repo, "mlp", method, options=options, data="random")
    parent = repo.get("mlp")
    assert parent.version == 2
    x = {"x": _x(64)}
    cuts = cut_points(parent.model_path)
    assert cuts
    for cut in cuts:
        for codec in ("fp32", "fp16", "int8"):
            pair = write_split(repo, parent, cut, codec, x)  # any refusal fails the test
            if codec == "fp32":
                verify_split(parent.model_path, pair.head.model_path, pair.tail.model_path, x,
                             rtol=1e-2, atol=1e-3)  # fmt: skip
            assert fidelity(parent, pair, x) >= 0.99
    # The fp32 original is no longer served, yet it can be split (and profiled) by number.
    result = split_model(
        repo, "mlp", version=1, codecs=("fp32",), cuts=["cut0"], inputs=x, repeats=1
    )
    assert result.profile.version == 1 and result.pairs
    for pair in result.pairs:
        assert pair.head.version == pair.tail.version == 1
        assert 1 in repo.served_versions(pair.head.name)  # every split version is served


def test_split_of_a_version_that_fails_its_sha256_is_refused(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    add_model(repo, "mlp", _mlp_onnx(tmp_path / "mlp.onnx"), batch=16)
    repo.add_version("mlp", tmp_path / "mlp.onnx")
    model = repo.get("mlp", 1, served_only=False, verify=False).model_path
    model.write_bytes(model.read_bytes() + b"\0")
    before = tree_sha256(repo.root)
    with pytest.raises(EdgecloudError, match="corrupt"):
        split_model(repo, "mlp", version=1, codecs=("fp32",), inputs={"x": _x(64)}, repeats=1)
    assert tree_sha256(repo.root) == before


# --- a crash in the middle of a split (finding C6) ---------------------------


def _reader_view(root: Path) -> str:
    """sha256 of what a reader in another process sees: every model, its config as
    read, and the bytes of each version on disk that readers list."""
    import hashlib

    repo = ModelRepository(root)
    digest = hashlib.sha256()
    for name in repo.model_names():
        digest.update(name.encode() + repo.config(name).model_dump_json().encode())
        for version in repo.versions(name):
            entry = repo.get(name, version, served_only=False)
            digest.update(f"{version}".encode() + tree_sha256(entry.path).encode())
    return digest.hexdigest()


def _killed_split(root: Path, after_versions: int) -> subprocess.Popen[bytes]:
    """A split SIGKILLed after its n-th version, left unreaped (a zombie, as when `timeout -s
    KILL` kills itself with it): its pid still answers kill(pid, 0)."""
    import time

    env = {**cli_env(), "EDGECLOUD_TEST_KILL_AFTER_VERSIONS": str(after_versions)}
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecloud.cli", "split", "mlp", "--repo", str(root),
         "--codec", "fp32,int8", "--cuts", "cut0,cut1", "--data", str(root.parent / "mlp.npz")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    stat = Path(f"/proc/{process.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the split was not killed"
        time.sleep(0.05)
    return process


@pytest.mark.parametrize("after_versions", [1, 2, 4])
def test_a_split_killed_midway_is_invisible_and_rolled_back(
    after_versions: int, tmp_path: Path
) -> None:
    """Before: SIGKILL during `split` left 12 model directories (5 heads, 7 tails) that
    every reader listed. After: readers see the old repository until the next writer or
    `models list` rolls the dead write back; then the split runs cleanly.

    cut0 fp32 is split beforehand, so "old" is not empty; the killed split then writes
    4 versions (head and tail of cut1, two int8 tails) and a new profile, and is
    SIGKILLed right after its 1st, 2nd or 4th version (the last: before the profile
    and the commit).
    """
    repo = ModelRepository(tmp_path / "repo")
    add_model(repo, "mlp", _mlp_onnx(tmp_path / "mlp.onnx"), batch=16)
    first = _cli(repo, "mlp", "--codec", "fp32", "--cuts", "cut0")
    assert first.returncode == 0, first.stderr
    old_view, old_files = _reader_view(repo.root), tree_sha256(repo.root, skip=PENDING)
    killed = _killed_split(repo.root, after_versions)
    assert list((repo.root / ".pending").glob("*.json"))  # the dead write is still recorded
    assert _reader_view(repo.root) == old_view  # every reader sees the old repository
    if after_versions == 2:  # any writer rolls back first
        repo.add_version("other", tmp_path / "mlp.onnx", config=repo.config("mlp").model_copy(
            update={"name": "other"}))  # fmt: skip
        shutil.rmtree(repo.root / "other")
    else:
        listed = subprocess.run(
            [sys.executable, "-m", "edgecloud.cli", "models", "list", "--repo", str(repo.root)],
            capture_output=True, text=True, timeout=60, env=cli_env(),
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
    assert not list((repo.root / ".pending").glob("*.json"))
    assert (
        tree_sha256(repo.root, skip=PENDING) == old_files
    )  # byte for byte as before the killed split
    assert killed.wait() == -9
    again = _cli(repo, "mlp", "--codec", "fp32,int8", "--cuts", "cut0,cut1")
    assert again.returncode == 0, again.stderr
    profile = SplitProfile.load(repo.root / "mlp" / "split-profile.json")
    assert {c.name for c in profile.candidates} >= {"cut0", "cut1"}
    heads = {p.name for p in repo.root.iterdir() if ".head." in p.name}
    assert heads == {"mlp.head.cut0", "mlp.head.cut1"}
