"""The generated deployment loads and runs against a real server; --measure probes a real
model and server; the CLI writes its report and fails clearly on bad specs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import edgecloud
from edgecloud import ConfigError, InferRequest, ModelRepository
from edgecloud.advisor import advise, deployment_yaml, load_workload, scenario, scenario_names
from edgecloud.advisor.measure import measure
from edgecloud.cli import app
from edgecloud.split import CutProfile, SplitProfile
from edgecloud.zoo import datasets

from ..routing.conftest import metric
from ..server.conftest import Server
from ..test_cli import assert_one_line_error
from ..test_cli import edgecloud as run_cli


def digits_workload(url: str) -> dict[str, Any]:
    """A cascade-shaped workload on the demo zoo's digits models."""
    return {
        "name": "digits-assistant",
        "remote_url": url,
        "application": {"latency_p50_ms": 50, "latency_p99_ms": 500, "requests_per_s": 1,
                        "payload_kb": 0.3, "availability": 0.999, "min_accuracy": 0.96},
        "model": {"name": "digits-large", "memory_mb": 400, "gflops": 0.0002,
                  "accuracy": 0.972, "small_name": "digits-small", "small_memory_mb": 0.01,
                  "small_gflops": 0.000002, "small_accuracy": 0.956},
        "device": {"memory_mb": 100, "gflops_per_s": 1},
        "network": {"rtt_ms": 40, "uplink_mbps": 5, "availability": 0.98},
        "hybrid": {"escalation_rate": 0.11},
    }  # fmt: skip


@pytest.mark.network
def test_the_generated_deployment_loads_and_runs(
    zoo_repo: ModelRepository,
    zoo_server: Server,
    tmp_path: Path,
) -> None:
    decision = advise(load_workload(digits_workload(zoo_server.url)))
    assert decision.strategy == "cascade"
    spec = yaml.safe_load(deployment_yaml(decision))
    spec["repository"] = str(zoo_repo.root)
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump(spec))
    x = datasets.digits("test").x[:200]
    sent = metric(zoo_server, "edgecloud_requests_total", "digits-large")
    with edgecloud.load(tmp_path / "deployment.yaml") as tree:
        response = tree.infer(InferRequest("digits", {"pixels": x}))
    assert response.outputs["probabilities"].shape == (200, 10)
    # the confident rows stayed local, the hard ones reached the real server
    assert metric(zoo_server, "edgecloud_requests_total", "digits-large") > sent


def split_profile(model: str) -> SplitProfile:
    candidates = [
        CutProfile("all-local", 0.4, 0.0, 0, 0),
        CutProfile("all-remote", 0.0, 0.01, 602_112, 4000),
        CutProfile("cut2", 0.03, 0.01, 200_712, 4000, codec="int8"),
    ]
    return SplitProfile(model, 1, 1, "test", candidates, {"cut2": ["/3/MaxPool_output_0"]})


@pytest.mark.parametrize("name", scenario_names())
def test_every_scenario_deployment_is_valid(name: str, tmp_path: Path) -> None:
    decision = advise(scenario(name))
    path = tmp_path / "deployment.yaml"
    path.write_text(deployment_yaml(decision))
    if decision.strategy == "split":  # the node plans with the profile `edgecloud split` writes
        split_profile(decision.workload.model.name).save(
            tmp_path / "model-repo" / decision.workload.model.name / "split-profile.json"
        )
    with edgecloud.load(path) as tree:
        assert tree.root is not None
    spec = yaml.safe_load(path.read_text())
    queues = decision.strategy in ("cascade", "filter_then_forward") or name == "industrial-iot"
    assert ("outbox" in spec) == queues  # a split falls back to the device: nothing waits


@pytest.mark.network
def test_measured_mode_runs_the_model_and_probes_the_server(
    zoo_repo: ModelRepository,
    zoo_server: Server,
) -> None:
    w = load_workload(digits_workload(zoo_server.url))
    measured, rows = measure(w, repo=zoo_repo.root, remote_url=zoo_server.url, rounds=20)
    names = {r.quantity for r in rows}
    assert {"device compute: digits-large", "device compute: digits-small", "network RTT",
            "server compute: digits-large"} <= names  # fmt: skip
    assert measured.model.measured_local_ms is not None and measured.model.measured_local_ms < 50
    assert measured.network.rtt_ms < 20 < w.network.rtt_ms  # loopback, not the assumed 40 ms
    assert measured.prices.server_gflops_per_s != w.prices.server_gflops_per_s
    advise(measured)  # decides again on the measured numbers


def test_measure_needs_something_to_measure() -> None:
    with pytest.raises(ConfigError, match="--repo"):
        measure(scenario("camera-fleet"))


def test_cli_writes_report_plots_and_deployment(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["advise", "-s", "camera-fleet", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "filter" in result.output and "What would flip" in result.output
    for name in ("report.md", "cost.png", "latency.png", "sensitivity.png", "deployment.yaml"):
        assert (tmp_path / name).stat().st_size > 100, name
    first = (tmp_path / "deployment.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=deployment.schema.json"  # editors read it
    assert json.loads((tmp_path / "deployment.schema.json").read_text())["title"]
    report = (tmp_path / "report.md").read_text()
    assert "648,000" in report  # raw video GB a month
    assert "| `hybrid.trigger_memory_mb` | 20 | ≥ 256 → remote |" in report  # trigger must fit


def test_cli_lists_scenarios() -> None:
    result = CliRunner().invoke(app, ["advise", "--list"])
    assert result.exit_code == 0
    assert all(name in result.output for name in scenario_names())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s["network"].update(rtt_ms=-1), "network.rtt_ms: Input should be greater"),
        (lambda s: s["application"].update(latency_p99_ms=1), "latency_p99_ms is below"),
        (lambda s: s["model"].pop("gflops"), "give gflops"),
        (lambda s: s["privacy"].update(data_class="secret"), "privacy.data_class"),
        (lambda s: s.update(typo=1), "typo: Extra inputs are not permitted"),
    ],
)
def test_bad_specs_name_the_field(edit: Any, message: str, tmp_path: Path) -> None:
    spec = yaml.safe_load(
        (
            Path(edgecloud.advisor.__file__).parent / "scenarios" / "regulated-health.yaml"
        ).read_text()
    )
    edit(spec)
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=message):
        load_workload(path)


def test_the_cli_reports_a_bad_spec_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("application: {latency_p50_ms: 10}\n")
    result = run_cli("advise", path, "--out", tmp_path / "o")
    assert_one_line_error(result, "w.yaml", "application.latency_p99_ms: Field required")
    assert not (tmp_path / "o").exists()
    assert_one_line_error(run_cli("advise", "-s", "nope"), "unknown scenario 'nope'")


def _advise(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, with this checkout's code (PYTHONPATH passed on)."""
    return subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "advise", *map(str, args)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def test_advise_never_overwrites_an_edited_deployment_or_env(tmp_path: Path) -> None:
    out = tmp_path / "adv"
    args = ("-s", "industrial-iot", "--out", out, "--no-plot")
    assert _advise(*args).returncode == 0
    assert _advise(*args).returncode == 0  # unchanged files: advise again is fine
    for name in ("deployment.yaml", "server.env"):
        target = out / name
        original = target.read_bytes()
        target.write_bytes(original + b"# my precious edit\n")
        (out / "report.md").write_text("# edgecloud advise: stale")  # its own: replaced
        refused = _advise(*args)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        line = " ".join(refused.stderr.split())
        assert f"{target} exists and is not what advise would write" in line
        assert "--force" in line and "report.md" not in line
        assert target.read_bytes().endswith(b"# my precious edit\n")  # kept
        assert (out / "report.md").read_text() == "# edgecloud advise: stale"  # nothing written
        assert _advise(*args, "--force").returncode == 0
        assert target.read_bytes() == original
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no leftovers
    (out / "deployment.yaml").unlink()
    (out / "deployment.yaml").mkdir()  # a directory where a file goes: one line, not a crash
    blocked = _advise(*args)
    assert blocked.returncode == 1 and "is a directory" in blocked.stderr


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("report.md", b"# my notes\n"),
        ("deployment.schema.json", b'{"title": "my schema"}\n'),
        ("deployment.schema.json", b"not json"),
        ("cost.png", b"# my notes, not a PNG\n"),
    ],
)
def test_advise_replaces_only_its_own_outputs(name: str, content: bytes, tmp_path: Path) -> None:
    out = tmp_path / "proj"
    out.mkdir()
    (out / name).write_bytes(content)
    plots = () if name.endswith(".png") else ("--no-plot",)
    args = ("-s", "industrial-iot", "--out", out, *plots)
    refused = _advise(*args)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    line = " ".join(refused.stderr.split())
    assert f"{out / name} exists and is not what advise would write" in line and "--force" in line
    assert [p.name for p in out.iterdir()] == [name]  # nothing written
    assert (out / name).read_bytes() == content
    assert _advise(*args, "--force").returncode == 0
    assert (out / name).read_bytes() != content
    assert _advise(*args).returncode == 0  # its own outputs (report, PNGs, schema): replaced


def test_advise_writes_through_a_symlinked_report(tmp_path: Path) -> None:
    out = tmp_path / "proj"
    out.mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "report.md").write_text("# edgecloud advise: older\n")
    (out / "report.md").symlink_to(tmp_path / "notes" / "report.md")
    assert _advise("-s", "industrial-iot", "--out", out, "--no-plot").returncode == 0
    assert (out / "report.md").is_symlink()
    assert "## Why" in (tmp_path / "notes" / "report.md").read_text()


def test_measure_refuses_samples_that_are_not_finite(tmp_path: Path) -> None:
    """Timing a model on NaN rows measures nothing; one line names the file and the input."""
    import numpy as np

    from edgecloud.advisor.measure import measurement_inputs

    from ..models import affine_config, affine_onnx

    repository = ModelRepository(tmp_path / "repo")
    repository.add_version("m", affine_onnx(tmp_path / "m.onnx"), config=affine_config("m"))
    for bad in (np.nan, np.inf):
        rows = np.zeros((3, 4), np.float32)
        rows[2, 1] = bad
        np.savez(tmp_path / "bad.npz", x=rows)
        with pytest.raises(ConfigError, match=r"advise --measure: .*bad.npz: input 'x' holds 1"):
            measurement_inputs(repository, "m", tmp_path / "bad.npz")


def test_the_written_deployment_names_the_repository_from_where_it_is(tmp_path: Path) -> None:
    """Relative paths in a deployment are relative to the file: advise --out DIR writes the
    repository (--repo, else ./model-repo) as seen from DIR, so `edge -d DIR/...` finds it."""
    repo = tmp_path / "repos" / "mine"
    out = tmp_path / "deep" / "adv"
    result = _advise("-s", "industrial-iot", "--out", out, "--no-plot", "--repo", repo)
    assert result.returncode == 0, result.stderr
    spec = yaml.safe_load((out / "deployment.yaml").read_text())
    assert spec["repository"] == "../../repos/mine"
    with edgecloud.load(out / "deployment.yaml") as deployment:
        assert deployment.repository.root.resolve() == repo.resolve()
