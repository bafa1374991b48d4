"""The README's "Fleet updates" walk, run as written: a real device installs, updates, refuses.

A model trained and fine-tuned with torch inside the block → ``edgecloud
import`` → ``fleet keys`` → ``fleet publish`` 1 → ``serve --fleet`` → a device
deployment with ``updates:`` provisioned by ``fleet check`` → ``edgecloud
edge`` serving it → version 2 published with deltas and rolled out with
``--auto`` (the device takes the delta and swaps) → a broken version 3 that
the device's health check refuses and the rollout aborts. Only the ports
change (free ones instead of 8000/8001/8080); no zoo model anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgecloud import ModelRepository
from edgecloud.server.launch import free_port

from .conftest import ROOT

HEADING = "### Fleet updates"

pytestmark = pytest.mark.network

BLOCK_ZOO = """
import importlib.abc, sys


class _BlockZoo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "edgecloud.zoo" or name.startswith("edgecloud.zoo."):
            raise ImportError(f"{name} is blocked: the walk must not need the zoo")
        return None

sys.meta_path.insert(0, _BlockZoo())
"""


def walk_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"{HEADING}\n", 1)[1]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]


@pytest.fixture(scope="module")
def walked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    cwd = tmp_path_factory.mktemp("fleet-walk")
    sitecustomize = cwd / "block-zoo" / "sitecustomize.py"
    sitecustomize.parent.mkdir()
    sitecustomize.write_text(BLOCK_ZOO)
    script = walk_block()
    for old in ("8000", "8001", "8080"):
        new = str(free_port())
        script = script.replace(f":{old}", f":{new}").replace(f"-port {old}", f"-port {new}")
    inherited = os.environ.get("PYTHONPATH")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",  # fleet status's table on one line per device
        "PYTHONPATH": os.pathsep.join(
            [str(sitecustomize.parent), str(ROOT / "src"), *filter(None, [inherited])]
        ),
    }
    process = subprocess.Popen(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = process.communicate(timeout=600)
    finally:  # the server and the gateway run in the background of the block
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    assert process.returncode == 0, out[-6000:]
    return cwd, out


def answers(out: str) -> list[dict[str, object]]:
    """The gateway's infer answers the block printed (curl prints no newline after a body)."""
    found = []
    for match in re.finditer(r'\{"model_name":"my-clf"', out):
        answer, _ = json.JSONDecoder().raw_decode(out[match.start() :])
        found.append(answer)
    return found


def test_a_fresh_device_is_provisioned_and_serves_version_1(walked: tuple[Path, str]) -> None:
    _, out = walked
    assert "my-clf: updated (version 1)" in out
    first, _ = answers(out)  # before and after the update
    assert first["model_version"] == "1"
    trace = json.loads(first["parameters"]["edgecloud_trace"])  # type: ignore[index]
    assert trace["served_by"] == "local:my-clf/1"


def test_version_2_arrives_by_its_delta_and_the_gateway_swaps(walked: tuple[Path, str]) -> None:
    cwd, out = walked
    assert "delta 1-2.xor-zstd.delta" in out and "delta 1-2.int8.delta" in out
    assert "complete: every device runs 2" in out
    assert answers(out)[1]["model_version"] == "2"
    device = ModelRepository(cwd / "device" / "device-repo")
    installed = device.get("my-clf", 2, served_only=False)
    assert installed.metadata["fleet"]["via"] == "delta xor-zstd"
    published = ModelRepository(cwd / "model-repo").get("my-clf", 2, served_only=False)
    assert installed.files["model.onnx"] == published.files["model.onnx"]  # the signed bytes


def test_the_broken_version_is_refused_and_the_rollout_aborts(walked: tuple[Path, str]) -> None:
    cwd, out = walked
    assert "rolled back 3: lab-1" in out
    assert "rollout aborted (exit 3)" in out
    state = json.loads((cwd / "device" / "fleet-state" / "agent.json").read_text())
    assert state["my-clf"]["active"] == 2 and 3 in state["my-clf"]["bad"], state
    device = ModelRepository(cwd / "device" / "device-repo")
    assert 3 not in device.versions("my-clf")  # never served, removed
    assert "1 (last from 3)" in out  # fleet status: the rollback, reported by telemetry
