"""Concurrent writers of one model (issue 15): real processes, one repository.

Members of the kind: several imports of a new model at once (who creates the
model, who numbers which version), imports of an existing model, and readers
listing the repository meanwhile. Each writer holds the model's lock
(``<repo>/.locks/<model>.lock``) from reading its config to removing its
journal record, so every import succeeds with its own number, and a reader
sees a version only once it is complete and checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from edgecloud import ModelRepository

from ..models import affine_onnx

WRITERS = 6


def _import_all(model: Path, name: str, repo: Path, writers: int) -> list[str]:
    """Run ``writers`` imports at once; each one's stdout, once all succeeded."""
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    command = [sys.executable, "-m", "edgecloud.cli", "import", str(model), "--name", name]
    procs = [
        subprocess.Popen(
            [*command, "--repo", str(repo)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(writers)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0 and f"imported {name} version" in out, err
    return [out for out, _ in outputs]


def _number(out: str) -> int:
    return int(out.split(" version ")[1].split(":")[0])


def _watch(repo: ModelRepository, name: str, stop: threading.Event, seen: list[str]) -> None:
    """List the repository until ``stop``; note every state a reader should never see."""
    while not stop.is_set():
        for status in repo.status():
            if status.name == name and status.error is not None:
                seen.append(status.error)


def test_concurrent_imports_of_a_new_model_get_versions_one_to_six(tmp_path: Path) -> None:
    """Before: all six failed ('Directory not empty', "no model 'cc'") or one saw
    another's half-rolled-back version ('version.json is missing')."""
    model = affine_onnx(tmp_path / "affine.onnx")
    root = tmp_path / "repo"
    root.mkdir()
    reader = ModelRepository(root)
    stop, seen = threading.Event(), list[str]()
    watcher = threading.Thread(target=_watch, args=(reader, "cc", stop, seen))
    watcher.start()
    try:
        first = _import_all(model, "cc", root, WRITERS)  # a new model
        assert reader.versions("cc") == list(range(1, WRITERS + 1))
        more = _import_all(model, "cc", root, 3)  # new versions of an existing model
        assert reader.versions("cc") == list(range(1, WRITERS + 4))
    finally:
        stop.set()
        watcher.join()
    assert not seen, seen[:3]
    assert sorted(map(_number, first)) == list(range(1, WRITERS + 1))
    assert sorted(map(_number, more)) == [WRITERS + 1, WRITERS + 2, WRITERS + 3]
    for version in reader.versions("cc"):
        reader.get("cc", version, served_only=False).verify()
    assert [p.name for p in (root / "cc").iterdir() if p.name.startswith(".")] == []
    assert not list((root / ".pending").glob("*.json"))
