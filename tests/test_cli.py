"""The CLI as users run it: a real process, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecloud import ModelRepository


def edgecloud(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    text = " ".join(lines)
    assert text.startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in text


def test_models_list_shows_every_model(repo: ModelRepository) -> None:
    result = edgecloud("models", "list", "--repo", repo.root)
    assert result.returncode == 0, result.stderr
    assert "affine" in result.stdout and "two-input" in result.stdout and "ready" in result.stdout


def test_models_list_shows_a_broken_model_beside_healthy_ones(repo: ModelRepository) -> None:
    (repo.root / "affine" / "config.yaml").write_text("name: [")
    result = edgecloud("models", "list", "--repo", repo.root)
    assert result.returncode == 0
    assert "invalid config" in result.stdout and "ready" in result.stdout


def test_infer_prints_outputs_labels_and_trace(repo: ModelRepository, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    result = edgecloud("infer", "affine", "--input", tmp_path / "x.npy", "--repo", repo.root)
    assert result.returncode == 0, result.stderr
    assert "served by local:affine/2" in result.stdout
    assert "c: " in result.stdout  # top label of the softmax output


def test_infer_unknown_model(repo: ModelRepository, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    result = edgecloud("infer", "ghost", "-i", tmp_path / "x.npy", "--repo", repo.root)
    assert_one_line_error(result, "no model 'ghost'", "affine")


def test_infer_wrong_shape(repo: ModelRepository, tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"x": [[1, 2, 3]]}))
    result = edgecloud("infer", "affine", "-i", tmp_path / "x.json", "--repo", repo.root)
    assert_one_line_error(result, "input 'x'", "expects shape", "got [1, 3]")


def test_infer_wrong_dtype(repo: ModelRepository, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float64))
    result = edgecloud("infer", "affine", "-i", tmp_path / "x.npy", "--repo", repo.root)
    assert_one_line_error(result, "is float64 but model 'affine' declares FP32")


def test_infer_corrupt_model(repo: ModelRepository, tmp_path: Path) -> None:
    path = repo.get("affine").model_path
    path.write_bytes(b"broken")
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    result = edgecloud("infer", "affine", "-i", tmp_path / "x.npy", "--repo", repo.root)
    assert_one_line_error(result, str(path), "corrupt")


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02"])
def test_infer_unreadable_input(repo: ModelRepository, tmp_path: Path, content: bytes) -> None:
    (tmp_path / "x.npy").write_bytes(content)
    result = edgecloud("infer", "affine", "-i", tmp_path / "x.npy", "--repo", repo.root)
    assert_one_line_error(result, "cannot read")


def test_usage_errors_are_not_tracebacks() -> None:
    result = edgecloud("infer")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Missing argument" in result.stderr


def test_serve_threads_help_says_what_workers_do_with_0() -> None:
    """``--threads 0`` is all cores split among the workers (cores / N each), not
    "onnxruntime decides" in every worker (server/workers.py ``_split``)."""
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "per call in each worker (default 1)" in text, text
    assert "with --workers N each worker gets cores / N" in text, text
    assert "lets onnxruntime decide" not in text
