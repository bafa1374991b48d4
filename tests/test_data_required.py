"""Every command that needs data, on a model imported without samples and given no
``--data``: one line on stderr naming ``--data`` (and the inputs it must hold),
exit status 1 (the CLI's for an EdgecloudError), no traceback, nothing written.

Given ``--data``, the same command runs on that file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from edgecloud import ModelRepository

from .conftest import ROOT
from .models import affine_onnx
from .trees import tree_sha256


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``edgecloud ARGS`` in a subprocess running this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", *map(str, args)],
        capture_output=True, text=True, timeout=180, env=env, cwd=cwd,
    )  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, exactly one line on stderr, starting ``error:``, holding every needle."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_names_data(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """:func:`one_line`, naming ``--data FILE.npz``."""
    return one_line(result, "--data FILE.npz", *needles)


def mean_onnx(path: Path) -> Path:
    """y = mean(x) over the tokens; x: FP32 [batch, tokens], any number of tokens:
    a model whose cost grows with its input's length (random inputs cannot say which)."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=1)],
        "mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    """``mine`` (affine, x: FP32 [rows, 4]) and ``tokens`` (x: FP32 [rows, ?]), imported
    with ``edgecloud import`` and no ``--samples``."""
    root = tmp_path_factory.mktemp("bare")
    repo = root / "repo"
    for name, path in (("mine", affine_onnx(root / "mine.onnx")),
                       ("tokens", mean_onnx(root / "tokens.onnx"))):  # fmt: skip
        result = cli("import", path, "--name", name, "--repo", repo, "--max-batch-size", "8")
        assert result.returncode == 0, result.stderr
    repository = ModelRepository(repo)
    assert all("samples.npz" not in repository.get(n).files for n in ("mine", "tokens"))
    return repository


def test_split_without_data_names_it(bare: ModelRepository) -> None:
    before = tree_sha256(bare.root)
    line = assert_names_data(cli("split", "mine", "--repo", bare.root), "x (FP32 [rows, 4])")
    assert line.startswith("error: split needs data:")
    assert tree_sha256(bare.root) == before


def test_advise_measure_without_data_names_it(bare: ModelRepository, tmp_path: Path) -> None:
    """A variable-length input needs real rows; a fixed-shape one is timed on random
    rows (see the next test)."""
    spec = _workload(tmp_path, "tokens")
    result = cli("advise", spec, "--measure", "--repo", bare.root, "--out", tmp_path / "o")
    line = assert_names_data(result, "x (FP32 [rows, ?])")
    assert line.startswith("error: advise --measure needs data:")
    small = _workload(tmp_path, "mine", small="tokens")
    result = cli("advise", small, "--measure", "--repo", bare.root, "--out", tmp_path / "o")
    one_line(result, "advise --measure needs data", "--small-data FILE.npz", "'tokens'")
    assert not (tmp_path / "o").exists()


def test_advise_measure_runs_on_the_data_given(bare: ModelRepository, tmp_path: Path) -> None:
    np.savez(tmp_path / "long.npz", x=np.ones((3, 50), np.float32))
    spec = _workload(tmp_path, "mine", small="tokens")
    result = cli("advise", spec, "--measure", "--repo", bare.root, "--out", tmp_path / "o",
                 "--small-data", tmp_path / "long.npz", "--no-plot")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "random inputs (seed 0; fixed shapes)" in out  # mine: fixed shape, no samples
    assert "long.npz (3 of 3 rows)" in out
    wrong = cli("advise", spec, "--measure", "--repo", bare.root, "--no-plot",
                "--data", tmp_path / "long.npz", "--small-data", tmp_path / "long.npz")  # fmt: skip
    one_line(wrong, "long.npz", "x (FP32 [rows, 4])")  # mine takes 4 columns, not 50
    one_line(cli("advise", spec, "--data", tmp_path / "long.npz"), "--data", "--measure")


def test_calibrate_without_data_names_it(bare: ModelRepository, tmp_path: Path) -> None:
    path = tmp_path / "deployment.yaml"
    cascade = {"small": "local", "large": "local", "small_model": "mine",
               "large_model": "mine", "output": "z", "threshold": 0.5}  # fmt: skip
    path.write_text(yaml.safe_dump({"repository": str(bare.root), "root": {"cascade": cascade}}))
    before = path.read_bytes()
    assert_names_data(cli("calibrate", "-d", path, "--target-accuracy", "0.99"))
    assert path.read_bytes() == before


@pytest.mark.parametrize("method", ["int8-static", "prune"])
def test_compress_without_data_names_it(bare: ModelRepository, tmp_path: Path, method: str) -> None:
    """prune is given its torch module (``--module``), so data is all it lacks."""
    factory = tmp_path / "factory.py"
    factory.write_text(
        "import torch\n\n"
        "def make():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=-1))\n"
    )
    extra = ["--module", f"{factory}:make"] if method == "prune" else []
    before = tree_sha256(bare.root)
    assert_names_data(cli("compress", "mine", "--repo", bare.root, "-m", method, *extra))
    assert tree_sha256(bare.root) == before


def _workload(tmp_path: Path, model: str, small: str | None = None) -> Path:
    spec = {
        "name": f"{model}-workload",
        "application": {"latency_p50_ms": 50, "latency_p99_ms": 500, "requests_per_s": 1,
                        "payload_kb": 0.1, "availability": 0.99},
        "model": {"name": model, "memory_mb": 1, "gflops": 0.00001, "accuracy": 0.9},
        "device": {"memory_mb": 100, "gflops_per_s": 1},
        "network": {"rtt_ms": 40, "uplink_mbps": 5, "availability": 0.98},
    }  # fmt: skip
    if small is not None:
        small_model = {"small_name": small, "small_memory_mb": 0.5, "small_gflops": 0.000001,
                       "small_accuracy": 0.8}  # fmt: skip
        spec["model"] = {**spec["model"], **small_model}  # type: ignore[dict-item]
    path = tmp_path / f"{model}-{small}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
