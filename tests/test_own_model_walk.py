"""The README's "Your own model, end to end" walk, run as written: no zoo model anywhere.

A data set from scikit-learn's ``make_classification`` (20 features), a small
logistic model on 4 of them and an MLP on all 20, both trained and exported
from torch inside the block; then ``import`` both → ``calibrate --data`` →
the cascade through a real ``edgecloud serve`` and the ``edgecloud edge``
gateway answering a v2 client → ``compress`` (int8 and prune) with
``--data`` → ``split`` → ``advise --measure``. Only the ports change (free
ones instead of 8000/8001/8080).
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

import numpy as np
import pytest
import yaml

import edgecloud
from edgecloud import InferRequest, ModelRepository
from edgecloud.server.launch import free_port

from .conftest import ROOT
from .trees import tree_sha256

HEADING = "### Your own model, end to end"


def walk_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(HEADING, 1)[1]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]


def run_walk(cwd: Path, block_zoo: Path) -> subprocess.CompletedProcess[str]:
    ports = {"8000": str(free_port()), "8001": str(free_port()), "8080": str(free_port())}
    script = walk_block()
    for old, new in ports.items():
        script = script.replace(f":{old}", f":{new}").replace(f"-port {old}", f"-port {new}")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        # block_zoo holds a sitecustomize that makes any import of edgecloud.zoo fail
        "PYTHONPATH": os.pathsep.join(
            [str(block_zoo), str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
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
    return subprocess.CompletedProcess(process.args, process.returncode, out, "")


@pytest.fixture(scope="module")
def walked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    cwd = tmp_path_factory.mktemp("own-model")
    sitecustomize = cwd / "block-zoo" / "sitecustomize.py"
    sitecustomize.parent.mkdir()
    sitecustomize.write_text(BLOCK_ZOO)
    result = run_walk(cwd, sitecustomize.parent)
    assert result.returncode == 0, result.stdout[-6000:]
    return cwd, result.stdout


BLOCK_ZOO = """
import importlib.abc, sys

# what `make demo`'s .venv lacks (the bench, compress and triton extras) is blocked too:
# the walk must run right after `make demo`
EXTRAS = ("matplotlib", "onnxconverter_common", "onnx_ir", "tritonclient")


class _BlockZoo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "edgecloud.zoo" or name.startswith("edgecloud.zoo."):
            raise ImportError(f"{name} is blocked: the walk must not need the zoo")
        if name.split(".")[0] in EXTRAS:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _BlockZoo())
"""


def test_the_walk_imports_both_models_with_their_samples(walked: tuple[Path, str]) -> None:
    cwd, out = walked
    assert "imported my-large version 1: inputs x FP32[20] -> outputs probabilities" in out
    assert "imported my-small version 1: inputs x FP32[4] -> outputs probabilities" in out
    repo = ModelRepository(cwd / "model-repo")
    first = repo.get("my-large", 1, served_only=False)
    assert "samples.npz" in first.files  # hashed with the version
    assert {"my-large", "my-small"} <= set(repo.model_names())


def test_calibrate_wrote_only_the_threshold_and_the_file_runs(walked: tuple[Path, str]) -> None:
    cwd, out = walked
    text = (cwd / "deployment.yaml").read_text()
    original = walk_block().split("cat > deployment.yaml <<'EOF'\n")[1].split("\nEOF")[0] + "\n"
    changed = [
        (a, b)
        for a, b in zip(original.splitlines(), text.splitlines(), strict=True)
        if a != b and "url:" not in a  # the test moved the server to a free port
    ]
    assert len(changed) == 1 and "threshold:" in changed[0][1], changed
    assert "# set by edgecloud calibrate" in changed[0][1]  # the comment stays
    threshold = yaml.safe_load(text)["root"]["cascade"]["threshold"]
    assert f"wrote threshold {threshold!r}" in out or f"wrote threshold {threshold}" in out
    assert "Clopper–Pearson" in out
    # the calibrated file runs on the device (large model local here) on request rows
    spec = yaml.safe_load(text)
    spec["repository"] = str(cwd / "model-repo")
    spec["root"]["cascade"]["large"] = "local"
    del spec["remotes"]
    rows = np.load(cwd / "val.npz")
    with edgecloud.load(spec, ready=True) as deployment:
        answer = deployment.infer(InferRequest("my-small", {"x": rows["x"][:200]}))
    accuracy = float(np.mean(answer.outputs["probabilities"].argmax(1) == rows["labels"][:200]))
    assert accuracy > 0.85, accuracy


def test_the_gateway_answered_a_v2_client_through_the_cascade(walked: tuple[Path, str]) -> None:
    _, out = walked
    start = out.index('{"model_name":"my-small"')  # curl prints no newline after a body
    answer, _ = json.JSONDecoder().raw_decode(out[start:])
    assert answer["outputs"][0]["name"] == "probabilities"
    assert answer["outputs"][0]["shape"] == [1, 3]
    assert abs(sum(answer["outputs"][0]["data"]) - 1) < 1e-5
    trace = json.loads(answer["parameters"]["edgecloud_trace"])
    assert trace["served_by"].startswith("local:my-small/1")


def test_compress_and_split_ran_on_the_users_data(walked: tuple[Path, str]) -> None:
    cwd, out = walked
    repo = ModelRepository(cwd / "model-repo")
    int8 = repo.get("my-large", 2, served_only=False)
    pruned = repo.get("my-large", 3, served_only=False)
    assert int8.metadata["method"] == "int8-dynamic"
    assert pruned.metadata["method"] == "prune"
    for version in (int8, pruned):
        evaluation = version.metadata["evaluation"]
        assert "val.npz" in json.dumps(evaluation), evaluation
    assert (cwd / "model-repo" / "my-large" / "split-profile.json").is_file()
    assert "splits written" in out


def test_advise_measured_the_users_models_and_wrote_a_deployment_that_loads(
    walked: tuple[Path, str],
) -> None:
    cwd, out = walked
    assert "val.npz" in out and "val-small.npz" in out  # what each figure ran on
    assert "note: no plots (matplotlib is not installed" in out  # as right after make demo
    with edgecloud.load(cwd / "advice" / "deployment.yaml", ready=True) as deployment:
        assert deployment.nodes
        # named from where the file is: the walk's own repository, not advice/model-repo
        assert deployment.repository.root.resolve() == (cwd / "model-repo").resolve()


def test_the_walk_leaves_the_repository_verifiable(walked: tuple[Path, str]) -> None:
    cwd, _ = walked
    repo = ModelRepository(cwd / "model-repo")
    before = tree_sha256(repo.root)
    for name in repo.model_names():
        for number in repo.versions(name):
            repo.get(name, number, served_only=False).verify()
    assert tree_sha256(repo.root) == before
