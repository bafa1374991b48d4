"""Issue 14, kind 9: "ready" only when every model the process will be asked for can serve.

Members of the kind, each with real processes and real files:

* ``edgecloud edge``: a repository path that does not exist (with a local
  node, and with a remote-only tree whose gateway still lists the
  repository's models), a cascade naming a model that is not there, a named
  model whose file is truncated or deleted, a repository with no loadable
  model — start-up fails with one line and exit code 1, before binding;
* ``edgecloud serve``: a repository that does not exist, is empty, or whose
  every model is broken fails start-up; one broken model among good ones is
  reported not ready (503) while the others serve;
* ``edgecloud models list``: "ready" only for files that match their sha256;
* ``edgecloud.load(path, ready=True)`` (the library's start-up) names the YAML path.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

import edgecloud
from edgecloud import ConfigError, ModelRepository
from edgecloud.repository import ModelVersion
from edgecloud.server.launch import free_port, serve_process

from ..models import make_repo


def _run(*argv: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "COLUMNS": "250"}


def _one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _deployment(tmp_path: Path, repository: Path, root: Any) -> Path:
    spec = {
        "repository": str(repository),
        "remotes": {"cloud": {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1}},
        "root": root,
    }
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cascade(small_model: str = "affine", large_model: str = "affine") -> dict[str, Any]:
    return {
        "cascade": {
            "small": "local",
            "large": {"prefer_remote": {"remote": "cloud", "local": "local"}},
            "small_model": small_model,
            "large_model": large_model,
            "threshold": 0.5,
        }
    }


def _edge(deployment: Path) -> subprocess.CompletedProcess[str]:
    # Start-up must fail before binding: the port is never listened on.
    return _run("edge", "-d", deployment, "--port", free_port())


def _truncate(repo: ModelRepository, model: str) -> Path:
    path = repo.get(model, verify=False).model_path
    path.write_bytes(path.read_bytes()[:100])
    return path


def _delete(repo: ModelRepository, model: str) -> Path:
    path = repo.get(model, verify=False).model_path
    path.unlink()
    return path


# --- edgecloud edge ---------------------------------------------------------


@pytest.mark.parametrize("root", ["local", "cloud"], ids=["local-node", "remote-only"])
def test_edge_refuses_a_repository_that_does_not_exist(root: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-repo"
    result = _edge(_deployment(tmp_path, missing, root))
    _one_line_error(result, "repository:", str(missing), "does not exist")


@pytest.mark.parametrize("role", ["small_model", "large_model"])
def test_edge_refuses_a_cascade_naming_a_model_that_is_not_there(
    role: str, repo: ModelRepository, tmp_path: Path
) -> None:
    result = _edge(_deployment(tmp_path, repo.root, _cascade(**{role: "ghost"})))
    where = "root.cascade.small" if role == "small_model" else "root.cascade.large"
    _one_line_error(result, where, "model 'ghost' is not in", "affine")


@pytest.mark.parametrize(("damage", "says"), [(_truncate, "is corrupt"), (_delete, "missing")])
def test_edge_refuses_a_named_model_with_damaged_files(
    damage: Any, says: str, repo: ModelRepository, tmp_path: Path
) -> None:
    damage(repo, "affine")
    result = _edge(_deployment(tmp_path, repo.root, _cascade()))
    _one_line_error(result, "root.cascade.small", "'affine'", says)


def test_edge_refuses_a_repository_with_nothing_that_can_serve(
    repo: ModelRepository, tmp_path: Path
) -> None:
    _truncate(repo, "affine")
    _delete(repo, "two-input")
    result = _edge(_deployment(tmp_path, repo.root, "local"))
    _one_line_error(result, "no model in", "affine", "two-input")


def test_load_names_the_yaml_path_of_a_missing_model(repo: ModelRepository, tmp_path: Path) -> None:
    path = _deployment(tmp_path, repo.root, {"guard": {"inner": _cascade(large_model="ghost")}})
    where = r"root\.guard\.inner\.cascade\.large\.prefer_remote\.local"
    with pytest.raises(ConfigError, match=where + ": model 'ghost' is not in"):
        edgecloud.load(path, ready=True)


# --- edgecloud serve --------------------------------------------------------


def _serve(repo: Path) -> subprocess.CompletedProcess[str]:
    return _run("serve", "--repo", repo, "--http-port", free_port(), "--grpc-port", "-1")


def test_serve_refuses_a_repository_that_does_not_exist(tmp_path: Path) -> None:
    _one_line_error(_serve(tmp_path / "nowhere"), "nowhere")


def test_serve_refuses_an_empty_repository(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _one_line_error(_serve(tmp_path / "empty"), "no model", "empty")


def test_serve_refuses_a_repository_where_nothing_loads(repo: ModelRepository) -> None:
    _truncate(repo, "affine")
    _delete(repo, "two-input")
    _one_line_error(_serve(repo.root), "no model in", "affine", "corrupt", "two-input", "missing")


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_serve_reports_one_broken_model_not_ready_and_serves_the_rest(
    repo: ModelRepository,
) -> None:
    _truncate(repo, "two-input")
    server = serve_process(repo.root)
    try:
        assert _status(f"{server.url}/v2/models/affine/ready") == 200
        assert _status(f"{server.url}/v2/models/two-input/ready") == 503
    finally:
        server.stop()


# --- edgecloud models list --------------------------------------------------


@pytest.mark.parametrize(("damage", "says"), [(_truncate, "is corrupt"), (_delete, "missing")])
def test_models_list_says_ready_only_for_intact_files(
    damage: Any, says: str, repo: ModelRepository
) -> None:
    damage(repo, "two-input")
    result = _run("models", "list", "--repo", repo.root)
    assert result.returncode == 0, result.stderr
    rows = {
        cells[1].strip(): cells[-2].strip()
        for cells in (line.split("│") for line in result.stdout.splitlines())
        if len(cells) > 2 and cells[1].strip()
    }
    assert rows["affine"] == "ready"
    assert rows["two-input"] != "ready" and says in rows["two-input"], result.stdout


def test_models_list_on_a_repository_that_does_not_exist(tmp_path: Path) -> None:
    _one_line_error(_run("models", "list", "--repo", tmp_path / "nowhere"), "does not exist")


def test_status_checks_every_served_version(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)  # affine has versions 1 and 2; only the older one is damaged
    config_file = repo.root / "affine" / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) | {"version_policy": {"kind": "all"}}
    config_file.write_text(yaml.safe_dump(config))
    path = repo.get("affine", 1, verify=False).model_path
    path.write_bytes(path.read_bytes() + b"\0")
    (status,) = [s for s in repo.status() if s.name == "affine"]
    assert status.error is not None and "version 1" in status.error


# --- a version with no usable hash record (issue 14 kind 9, finding C3) -------


def _drop_record(repo: ModelRepository, model: str) -> None:
    (repo.get(model, verify=False).path / "version.json").unlink()


def _record(repo: ModelRepository, model: str, edit: Any) -> None:
    path = repo.get(model, verify=False).path / "version.json"
    path.write_text(edit(path.read_text()))


_NO_RECORD: dict[str, Any] = {
    "deleted": (_drop_record, "version.json is missing"),
    "not-json": (lambda r, m: _record(r, m, lambda t: t[: len(t) // 2]), "not valid JSON"),
    "no-model-file": (
        lambda r, m: _record(r, m, lambda t: t.replace('"model.onnx"', '"other.onnx"')),
        "does not list model.onnx",
    ),
    "bad-digest": (
        lambda r, m: _record(r, m, lambda t: t.replace('"files": {', '"files": {"x": 3, ')),
        "not 64 hex digits",
    ),
    "escapes": (
        lambda r, m: _record(r, m, lambda t: t.replace('"files": {', '"files": {"../x": "0", ')),
        "not a file inside the version",
    ),
    "list": (lambda r, m: _record(r, m, lambda t: "[]"), "JSON object is expected"),
}


@pytest.mark.parametrize("kind", sorted(_NO_RECORD))
def test_a_version_without_a_usable_record_is_not_ready(kind: str, repo: ModelRepository) -> None:
    damage, says = _NO_RECORD[kind]
    damage(repo, "two-input")
    path = repo.root / "two-input"
    model = next(path.glob("*/model.onnx"))
    model.write_bytes(model.read_bytes()[:-8] + b"\x7f" * 8)  # and its bytes altered
    (status,) = [s for s in repo.status() if s.name == "two-input"]
    assert status.error is not None and says in status.error and "re-add" in status.error
    (good,) = [s for s in repo.status() if s.name == "affine"]
    assert good.error is None
    with pytest.raises(edgecloud.ModelLoadError, match="re-add"):
        repo.get("two-input")


def test_models_list_and_serve_treat_a_version_without_record_as_broken(
    repo: ModelRepository, tmp_path: Path
) -> None:
    _drop_record(repo, "two-input")
    listed = _run("models", "list", "--repo", repo.root)
    assert "version.json is missing" in listed.stdout, listed.stdout
    _drop_record(repo, "affine")
    _one_line_error(_serve(repo.root), "no model in", "version.json is missing")
    result = _edge(_deployment(tmp_path, repo.root, _cascade()))
    _one_line_error(result, "root.cascade.small", "'affine'", "version.json is missing")


def test_a_record_without_model_file_fails_verify() -> None:
    entry = ModelVersion("m", 1, Path("/nonexistent"), None, {}, {})  # type: ignore[arg-type]
    with pytest.raises(edgecloud.ModelLoadError, match="lists no model.onnx"):
        entry.verify()
