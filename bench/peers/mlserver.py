"""Start MLServer 1.7.1 (in its own virtualenv) serving an ONNX file via onnx_runtime.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def mlserver_venv() -> Path:
    """The MLServer virtualenv, created on first use (a few minutes, cached)."""
    out = subprocess.run(
        ["bash", str(HERE / "mlserver_env.sh"), str(ROOT / ".cache" / "mlserver-venv")],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class MLServerProcess:
    process: subprocess.Popen[bytes]
    http_port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self, timeout: float = 15.0) -> float | None:
        """SIGTERM, then seconds until exit, or None if it had to be killed."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
            return time.monotonic() - started
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            return None


def start_mlserver(
    model_file: Path, name: str, workdir: Path, http_port: int, grpc_port: int, metrics_port: int
) -> MLServerProcess:
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
    with (workdir / "mlserver.log").open("wb") as log:
        process = subprocess.Popen(
            [str(venv / "bin" / "mlserver"), "start", str(workdir)],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(workdir)},
        )  # fmt: skip
    server = MLServerProcess(process, http_port, workdir)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"MLServer exited: {(workdir / 'mlserver.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{server.url}/v2/models/{name}/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError("MLServer did not become ready in 120 s")
