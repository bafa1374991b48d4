"""The README's Python examples run as written (against the demo zoo)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from edgecloud import ModelRepository

from .conftest import ROOT


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def curl_blocks() -> list[str]:
    """The README's shell blocks that call the server with curl."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [b for b in blocks if "curl -s localhost:8000/v2/models/" in b]


def run_curl_block(block: str, url: str, cwd: Path) -> str:
    """Run a README curl block against ``url`` (set -e: every line must succeed)."""
    script = "set -euo pipefail\n" + block.replace("localhost:8000", url.removeprefix("http://"))
    script = script.replace("curl -s ", "curl -sf ")  # an HTTP error fails the block
    script = script.replace("python -c", f"{sys.executable} -c")
    result = subprocess.run(
        ["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, (block, result.stdout, result.stderr)
    return result.stdout


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


def test_readme_remote_examples_against_a_real_server(
    zoo_repo: ModelRepository, tmp_path: Path
) -> None:
    from .server.conftest import start_server

    server = start_server(zoo_repo, tmp_path)
    try:
        first = next(b for b in python_blocks() if "LocalBackend(" in b)
        remote_blocks = [
            b for b in python_blocks() if "RemoteBackend(" in b and "SplitBackend(" not in b
        ]
        assert len(remote_blocks) == 2  # the client example and the hybrid tree
        (tmp_path / "model-repo").symlink_to(zoo_repo.root)
        outputs = []
        for block in remote_blocks:
            script = first + block.replace("http://127.0.0.1:8000", server.url)
            script += "\nprint(response.trace.served_by)\n"
            result = subprocess.run(
                [sys.executable, "-c", script],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, result.stderr
            outputs.append(result.stdout)
        curled = [json.loads(run_curl_block(b, server.url, tmp_path)) for b in curl_blocks()]
    finally:
        server.stop()
    assert curled and all(c["model_name"] == "digits-small" for c in curled)  # no `...` left
    assert f"remote:{server.url}" in outputs[0]
    assert "guard:public → may leave" in outputs[1] and "cascade:" in outputs[1]


def test_readme_split_example_against_a_real_server(
    zoo_repo: ModelRepository, tmp_path: Path
) -> None:
    import shutil

    from edgecloud.split import default_profile_path, split_model

    from .server.conftest import start_server

    repo = ModelRepository(tmp_path / "model-repo")
    shutil.copytree(zoo_repo.root / "resnet18-like", repo.root / "resnet18-like")
    result = split_model(repo, "resnet18-like", codecs=["int8"], cuts=["cut28"], repeats=1)
    result.profile.save(default_profile_path(repo, "resnet18-like"))
    (block,) = [b for b in python_blocks() if "SplitBackend(" in b]
    server = start_server(repo, tmp_path)
    try:
        result = subprocess.run(
            [sys.executable, "-c", block.replace("http://127.0.0.1:8000", server.url)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("split:")
