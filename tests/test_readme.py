"""The README's Python examples run as written (against the demo zoo)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from edgecloud import ModelRepository

from .conftest import ROOT


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_examples_run(zoo_repo: ModelRepository, tmp_path: Path) -> None:
    (tmp_path / "model-repo").symlink_to(zoo_repo.root)
    blocks = python_blocks()
    assert len(blocks) >= 4
    runnable = [b for b in blocks if "my.onnx" not in b and "RemoteBackend(" not in b]
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(runnable)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "served by local:digits-small/" in result.stdout
    assert "expects shape [?, 64] (? = any size), got [1, 65]" in result.stdout


def test_readme_add_model_example(tmp_path: Path) -> None:
    from .models import affine_onnx

    affine_onnx(tmp_path / "my.onnx")
    (block,) = [b for b in python_blocks() if "my.onnx" in b]
    result = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert ModelRepository(tmp_path / "model-repo").versions("my-model") == [1]


def test_readme_remote_example_against_a_real_server(
    zoo_repo: ModelRepository, tmp_path: Path
) -> None:
    from .server.conftest import start_server

    server = start_server(zoo_repo, tmp_path)
    try:
        first = next(b for b in python_blocks() if "LocalBackend(" in b)
        (remote,) = [b for b in python_blocks() if "RemoteBackend(" in b]
        remote = remote.replace("http://127.0.0.1:8000", server.url)
        script = first + remote + "\nprint(response.trace.served_by)\n"
        (tmp_path / "model-repo").symlink_to(zoo_repo.root)
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert f"remote:{server.url}" in result.stdout
