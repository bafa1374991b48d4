"""Start MLServer 1.7.1 (in its own virtualenv) serving an ONNX file via onnx_runtime.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from edgecloud.server.launch import ServerProcess, launch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def mlserver_venv() -> Path:
    """The MLServer virtualenv, created on first use (a few minutes, cached)."""
    out = subprocess.run(
        ["bash", str(HERE / "mlserver_env.sh"), str(ROOT / ".cache" / "mlserver-venv")],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return Path(out.stdout.strip().splitlines()[-1])


def start_mlserver(
    model_file: Path, name: str, workdir: Path, http_port: int, grpc_port: int, metrics_port: int
) -> ServerProcess:
    """MLServer serving ``model_file`` as ``name``, once that model is ready."""
    venv = mlserver_venv()
    shutil.rmtree(workdir, ignore_errors=True)
    model_dir = workdir / name
    model_dir.mkdir(parents=True)
    shutil.copy(HERE / "mlserver_onnx" / "onnx_runtime.py", workdir / "onnx_runtime.py")
    (workdir / "settings.json").write_text(json.dumps({
        "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "host": "127.0.0.1", "debug": False,
    }))  # fmt: skip
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": "onnx_runtime.OnnxModel",
        "parameters": {"uri": str(model_file)},
    }))  # fmt: skip
    return launch(
        [str(venv / "bin" / "mlserver"), "start", str(workdir)],
        f"http://127.0.0.1:{http_port}",
        timeout=120,
        log=workdir / "mlserver.log",
        ready_path=f"/v2/models/{name}/ready",
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(workdir)},
        group=True,
    )
