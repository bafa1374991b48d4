"""The edge gateway: a deployment behind the v2 HTTP API, responses carrying their trace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as triton
import yaml

from edgecloud import ModelRepository
from edgecloud.server.launch import ServerProcess, free_port, launch
from edgecloud.zoo import datasets

from ..server.conftest import Server


def start_gateway(path: Path, port: int) -> ServerProcess:
    argv = [sys.executable, "-m", "edgecloud.cli", "edge", "-d", str(path), "--port", str(port)]
    return launch(argv, f"http://127.0.0.1:{port}", log=path.with_suffix(".log"))


def write(tmp: Path, repo: ModelRepository, url: str) -> Path:
    spec = {
        "repository": str(repo.root),
        "remotes": {"cloud": {"url": url, "timeout_s": 1}},
        "root": {"cascade": {
            "small": "local", "large": {"prefer_remote": {"remote": "cloud", "local": "local"}},
            "small_model": "digits-small", "large_model": "digits-large", "threshold": 0.9,
        }},
    }  # fmt: skip
    path = tmp / "deployment.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def infer_with_trace(port: int, x: np.ndarray) -> tuple[np.ndarray, dict]:
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = triton.InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("digits-small", [tensor])
    trace = json.loads(result.get_response()["parameters"]["edgecloud_trace"])
    return result.as_numpy("probabilities"), trace


def test_gateway_routes_and_explains(
    zoo_repo: ModelRepository, zoo_server: Server, tmp_path: Path
) -> None:
    port = free_port()
    gateway = start_gateway(write(tmp_path, zoo_repo, zoo_server.url), port)
    try:
        x = datasets.digits("test").x[:40]
        probs, trace = infer_with_trace(port, x)
        assert probs.shape == (40, 10)
        reasons = [s["reason"] for s in trace["spans"] if s["kind"] == "decision"]
        assert any(r.startswith("cascade:escalate") for r in reasons)
        assert "remote:" in trace["served_by"] and trace["bytes_up"] > 0
    finally:
        gateway.stop()


def test_gateway_keeps_answering_with_the_server_down(
    zoo_repo: ModelRepository, tmp_path: Path
) -> None:
    port = free_port()
    gateway = start_gateway(write(tmp_path, zoo_repo, f"http://127.0.0.1:{free_port()}"), port)
    try:
        probs, trace = infer_with_trace(port, datasets.digits("test").x[:40])
        assert probs.shape == (40, 10)
        reasons = [s["reason"] for s in trace["spans"] if s["kind"] == "decision"]
        assert any(r.startswith("fallback:unavailable") for r in reasons)
        assert "remote:" not in trace["served_by"]
    finally:
        gateway.stop()


def test_gateway_refuses_a_broken_deployment(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").write_text("root: {teleport: {}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "edge", "-d", str(tmp_path / "d.yaml"),
         "--port", str(free_port())],  # never the default 8080: it may be taken
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "root: unknown node 'teleport'" in result.stderr
