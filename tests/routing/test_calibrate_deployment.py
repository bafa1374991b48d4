"""``edgecloud calibrate`` on models and data made in the test: any cascade, any measure,
``--data`` or the version's labelled samples, the YAML kept as the user wrote it, and
one clear line for every mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

import edgecloud
from edgecloud.calibration import calibrate_deployment, find_cascades, open_deployment
from edgecloud.errors import ConfigError
from edgecloud.repository import ModelRepository
from edgecloud.routing.confidence import CONFIDENCE
from edgecloud.tensors import InferRequest

from ..conftest import ROOT
from .calibration_models import CLASSES, SMALL_FEATURES, build, linear_config, linear_onnx


def edgecloud_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", *map(str, args)],
        capture_output=True, text=True, timeout=120, env=env, cwd=cwd,
    )  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRepository, dict, Path]:
    root = tmp_path_factory.mktemp("calibrate")
    repo, splits = build(root)
    x, y = splits["val"]
    np.savez(root / "val.npz", features=x, labels=y)
    return repo, splits, root


def cascade(**overrides: object) -> dict:
    return {"small": "local", "large": "local", "small_model": "small", "large_model": "large",
            "threshold": 0.5, **overrides}  # fmt: skip


def write(tmp_path: Path, repo: ModelRepository, root: object) -> Path:
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump({"repository": str(repo.root), "root": root}, sort_keys=False))
    return path


USER_YAML = """\
# Our cascade; do not reorder.
repository: {repo}   # built by the test
remotes:
  cloud: {url: "http://127.0.0.1:9", timeout_s: 1.0}
root:
  fallback:
    primary:
      cascade:
        small: local        # on the device
        large: {prefer_remote: {remote: cloud, local: local, breaker: &brk {failure_threshold: 2}}}
        small_model: small
        large_model: large
        confidence: {measure}
        threshold: 0.5      # calibrated on val.npz
        audit_rate: 0.0
    secondary: {prefer_remote: {remote: cloud, local: local, breaker: *brk}}
    breaker: {reset_after_s: 3.0}
# trailing comment
"""


def test_the_cli_calibrates_any_cascade_and_changes_only_the_threshold_line(made, tmp_path):  # type: ignore[no-untyped-def]
    repo, splits, root = made
    path = tmp_path / "deployment.yaml"
    before = USER_YAML.replace("{repo}", str(repo.root)).replace("{measure}", "margin")
    path.write_text(before)
    path.chmod(0o640)
    result = edgecloud_cli("calibrate", "-d", path, "--data", root / "val.npz",
                           "--target-accuracy", "0.97")  # fmt: skip
    assert result.returncode == 0, result.stderr
    after = path.read_text()
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1, changed
    old, new = changed[0]
    threshold = yaml.safe_load(after)["root"]["fallback"]["primary"]["cascade"]["threshold"]
    assert old == "        threshold: 0.5      # calibrated on val.npz"
    assert new == f"        threshold: {threshold!r}      # calibrated on val.npz"
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deployment.yaml"]  # no temp left
    for needle in ("root.fallback.primary.cascade", "small → large, margin", "relative accuracy",
                   "1000", "no (on average)", f"wrote threshold {threshold!r}"):  # fmt: skip
        assert needle in result.stdout, result.stdout
    assert "warning:" in result.stderr and "--guarantee" in result.stderr
    # the threshold means on the deployment what calibrate reported: run val through it
    x, _ = splits["val"]
    with edgecloud.load(path) as tree:
        response = tree.infer(InferRequest("small", {"features": x}))
    escalated = response.parameters.get("escalated_rows", 0)
    reported = next(line for line in result.stdout.splitlines() if "%" in line and "[" in line)
    assert f"{escalated / len(x):.1%} [" in reported, (escalated, reported)


@pytest.mark.parametrize("measure", sorted(CONFIDENCE))
def test_each_confidence_measure_and_both_targets(made, tmp_path, measure: str) -> None:  # type: ignore[no-untyped-def]
    repo, _, root = made
    path = write(tmp_path, repo, {"cascade": cascade(confidence=measure)})
    target = calibrate_deployment(path, data=root / "val.npz", target=0.97)
    assert target.measure == measure and target.calibration.point.relative_accuracy >= 0.97
    sure = calibrate_deployment(path, data=root / "val.npz", target=0.97, guarantee=0.1)
    assert sure.calibration.guarantee == 0.1
    assert sure.calibration.escalated >= target.calibration.escalated
    capped = calibrate_deployment(path, data=root / "val.npz", max_escalation=0.3)
    assert capped.calibration.point.escalation_rate <= 0.3
    written = yaml.safe_load(path.read_text())["root"]["cascade"]["threshold"]
    assert written == capped.calibration.point.threshold


def test_several_cascades_need_at(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, _, root = made
    guarded = {"guard": {"inner": {"cascade": cascade(threshold=0.25)}}}
    tree = {"fastest": {"paths": [{"cascade": cascade()}, guarded]}}
    path = write(tmp_path, repo, tree)
    paths = ["root.fastest.paths.0.cascade", "root.fastest.paths.1.guard.inner.cascade"]
    assert list(find_cascades(open_deployment(path).spec)) == paths
    with pytest.raises(ConfigError, match="2 cascades; pick one with --at: " + ", ".join(paths)):
        calibrate_deployment(path, data=root / "val.npz", target=0.97)
    with pytest.raises(ConfigError, match="--at root.nope.cascade: no cascade there; cascades: "):
        calibrate_deployment(path, data=root / "val.npz", target=0.97, at="root.nope.cascade")
    done = calibrate_deployment(path, data=root / "val.npz", target=0.97, at=paths[1])
    raw = yaml.safe_load(path.read_text())["root"]["fastest"]["paths"]
    assert raw[0]["cascade"]["threshold"] == 0.5
    assert raw[1]["guard"]["inner"]["cascade"]["threshold"] == done.calibration.point.threshold


def test_the_large_models_labelled_samples_serve_without_data(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, splits, root = made
    local = ModelRepository(tmp_path / "repo")
    for name in ("small", "large"):
        version = repo.get(name)
        samples = root / "val.npz" if name == "large" else None
        local.add_version(name, version.model_path, config=version.config, samples=samples)
    path = write(tmp_path, local, {"cascade": cascade()})
    done = calibrate_deployment(path, target=0.97)
    assert done.data.name == "samples.npz" and done.calibration.rows == 1000
    # string labels are class names, mapped through the model's labels
    x, y = splits["val"]
    np.savez(tmp_path / "named.npz", features=x, labels=np.array(CLASSES)[y])
    named = calibrate_deployment(path, data=tmp_path / "named.npz", target=0.97)
    assert named.calibration.point == done.calibration.point


def test_no_data_and_no_labelled_samples_is_one_line_naming_data(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, splits, _ = made
    path = write(tmp_path, repo, {"cascade": cascade()})
    result = edgecloud_cli("calibrate", "-d", path, "--target", "0.97")
    line = one_line(result, "--data FILE.npz", "features (FP32 [rows, 20])", "'labels' (required)")
    assert "optionally" not in line
    unlabelled = ModelRepository(tmp_path / "unlabelled")
    np.savez(tmp_path / "inputs.npz", features=splits["val"][0])
    for name in ("small", "large"):
        unlabelled.add_version(name, repo.get(name).model_path, config=repo.get(name).config,
                               samples=tmp_path / "inputs.npz")  # fmt: skip
    path = write(tmp_path, unlabelled, {"cascade": cascade()})
    one_line(edgecloud_cli("calibrate", "-d", path, "--target", "0.97"),
             "carry no labels", "--data FILE.npz", "'labels'")  # fmt: skip


def nan_repo(root: Path, repo: ModelRepository) -> ModelRepository:
    broken = ModelRepository(root / "nan-repo")
    broken.add_version("small", repo.get("small").model_path, config=repo.get("small").config)
    weights = np.zeros((20, 3))
    weights[0, 0] = np.nan
    broken.add_version("large", linear_onnx(root / "nan.onnx", weights, np.zeros(3)),
                       config=linear_config("large"))  # fmt: skip
    return broken


def bad_files(root: Path, x: np.ndarray, y: np.ndarray) -> dict[str, Path]:
    files = {
        "unlabelled": dict(features=x),
        "misnamed": dict(pixels=x, labels=y),
        "extra": dict(features=x, other=x, labels=y),
        "empty": dict(features=x[:0], labels=y[:0]),
        "float-labels": dict(features=x, labels=y.astype(float)),
        "unknown-names": dict(features=x, labels=np.array(["ant", "eel"] * (len(y) // 2))),
        "fp64": dict(features=x.astype(np.float64), labels=y),
        "short-labels": dict(features=x, labels=y[:-1]),
        "nan-rows": dict(
            features=np.where(np.arange(len(x))[:, None] == 7, np.nan, x).astype(x.dtype), labels=y
        ),
        "inf-rows": dict(
            features=np.where(np.arange(len(x))[:, None] == 0, -np.inf, x).astype(x.dtype), labels=y
        ),
    }
    for name, arrays in files.items():
        np.savez(root / f"{name}.npz", **arrays)
    return {name: root / f"{name}.npz" for name in files}


MISTAKES = [
    ("unlabelled", {}, "has no 'labels' array"),
    ("misnamed", {}, "lacks features; holds pixels, which the request does not carry"),
    ("extra", {}, "holds other, which the request does not carry"),
    ("empty", {}, "holds no rows"),
    ("float-labels", {}, "labels are floats (float64); give integer class indices or class names"),
    ("unknown-names", {}, "labels 'eel' are not classes of the model (ant, bee, cat)"),
    ("fp64", {}, "model 'small' cannot run these inputs"),
    ("short-labels", {}, "labels must be 1-D with one entry per row (1000)"),
    # both models may map NaN to finite answers: calibrating on them means nothing
    ("nan-rows", {}, "input 'features' holds 20 NaN or infinite values (first at row 7)"),
    ("inf-rows", {}, "input 'features' holds 20 NaN or infinite values (first at row 0)"),
    ("val", {"output": "logits"}, "not probabilities"),
    ("val", {"output": "scores"}, "has no output 'scores' (outputs: logits, probabilities)"),
    ("val", {"small_model": "absent"}, "small_model: model 'absent' is not in"),
    ("val", {"large_model": None}, "set small_model and large_model to calibrate"),
]


@pytest.mark.parametrize(("data", "change", "message"), MISTAKES,
                         ids=[f"{d}-{'-'.join(c) or 'file'}" for d, c, _ in MISTAKES])  # fmt: skip
def test_mistakes_are_one_clear_error_and_the_file_is_untouched(  # type: ignore[no-untyped-def]
    made, tmp_path, data: str, change: dict, message: str
) -> None:
    repo, splits, root = made
    files = {"val": root / "val.npz", **bad_files(tmp_path, *splits["val"])}
    path = write(tmp_path, repo, {"cascade": cascade(**change)})
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        calibrate_deployment(path, data=files[data], target=0.97)
    assert message in info.value.message, info.value.message
    assert path.read_bytes() == before


def test_nan_probabilities_and_uncertifiable_guarantees_are_refused(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, splits, root = made
    path = write(tmp_path, nan_repo(tmp_path, repo), {"cascade": cascade()})
    with pytest.raises(ConfigError, match="large model's probabilities are not finite"):
        calibrate_deployment(path, data=root / "val.npz", target=0.97)
    x, y = splits["val"]
    np.savez(tmp_path / "few.npz", features=x[:50], labels=y[:50])
    path = write(tmp_path, repo, {"cascade": cascade()})
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="no threshold can be certified .*from 50 rows"):
        calibrate_deployment(path, data=tmp_path / "few.npz", target=0.995, guarantee=0.1)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-accuracy", "0"], "--target-accuracy must be in (0, 1], got 0.0"),
        (["--target-accuracy", "1.5"], "--target-accuracy must be in (0, 1]"),
        (["--target-accuracy", "nan"], "--target-accuracy must be in (0, 1], got nan"),
        (["--max-escalation", "-0.1"], "--max-escalation must be in [0, 1]"),
        (["--target", "0.9", "--guarantee", "1"], "--guarantee must be in (0, 1), got 1.0"),
        (["--target", "0.9", "--guarantee", "0"], "--guarantee must be in (0, 1)"),
        ([], "pass exactly one of --target-accuracy R or --max-escalation E"),
        (["--target", "0.9", "--max-escalation", "0.2"], "pass exactly one"),
    ],
)
def test_option_ranges_are_checked(made, tmp_path, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    repo, _, root = made
    path = write(tmp_path, repo, {"cascade": cascade()})
    kwargs = {"--target-accuracy": "target", "--target": "target",
              "--max-escalation": "max_escalation", "--guarantee": "guarantee"}  # fmt: skip
    options = {kwargs[k]: float(v) for k, v in zip(args[::2], args[1::2], strict=True)}
    with pytest.raises(ConfigError) as info:
        calibrate_deployment(path, data=root / "val.npz", **options)
    assert message in info.value.message


def test_cli_errors_are_one_line(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, _, root = made
    path = write(tmp_path, repo, {"prefer_remote": {"remote": "cloud", "local": "local"}})
    path.write_text(path.read_text() + "remotes: {cloud: {url: 'http://127.0.0.1:9'}}\n")
    one_line(edgecloud_cli("calibrate", "-d", path, "--data", root / "val.npz", "--target", "0.9"),
             "no cascade node to calibrate")  # fmt: skip
    path = write(tmp_path, repo, {"cascade": cascade()})
    one_line(edgecloud_cli("calibrate", "-d", path, "--data", root / "val.npz", "--target", "2"),
             "--target-accuracy must be in (0, 1]")  # fmt: skip
    one_line(edgecloud_cli("calibrate", "-d", path, "--data", tmp_path / "absent.npz",
                           "--target", "0.9"), "absent.npz does not exist")  # fmt: skip


def test_guaranteed_run_says_so_and_dry_run_writes_nothing(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, _, root = made
    path = write(tmp_path, repo, {"cascade": cascade()})
    before = path.read_bytes()
    result = edgecloud_cli("calibrate", "-d", path, "--data", root / "val.npz", "--target",
                           "0.97", "--guarantee", "0.1", "--dry-run")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "yes, 1 - δ = 0.9" in result.stdout and "wrote" not in result.stdout
    assert result.stderr == "" and path.read_bytes() == before


YAML_FORMS = [
    ("anchored value", "threshold: &t 0.5", "threshold: &t {}"),
    ("tagged value", "threshold: !!float 0.5", "threshold: !!float {}"),
]


@pytest.mark.parametrize(("form", "old", "new"), YAML_FORMS, ids=[f for f, _, _ in YAML_FORMS])
def test_unusual_yaml_forms_keep_their_decoration(made, tmp_path, form, old, new) -> None:  # type: ignore[no-untyped-def]
    repo, _, root = made
    path = tmp_path / "d.yaml"
    text = (f"repository: {repo.root}\r\nroot:\r\n  cascade: {{small: local, large: local, "
            f"small_model: small, large_model: large,\r\n    {old}}}\r\n")  # fmt: skip
    path.write_bytes(text.encode())
    done = calibrate_deployment(path, data=root / "val.npz", target=0.97)
    expected = text.replace(old, new.format(repr(done.calibration.point.threshold)))
    assert path.read_bytes() == expected.encode()  # CRLF kept too


def test_a_quoted_threshold_is_refused_not_coerced(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, _, root = made
    path = tmp_path / "d.yaml"
    text = (f"repository: {repo.root}\nroot:\n  cascade: {{small: local, large: local, "
            'small_model: small, large_model: large, threshold: "0.5"}\n')  # fmt: skip
    path.write_text(text)
    with pytest.raises(ConfigError, match="root.cascade.threshold: Input should be a valid number"):
        calibrate_deployment(path, data=root / "val.npz", target=0.97)
    assert path.read_text() == text


def test_aliased_or_merged_thresholds_are_refused(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, _, root = made
    path = tmp_path / "d.yaml"
    path.write_text(
        f"repository: {repo.root}\nroot:\n  fallback:\n    primary: {{cascade: &c {{small: local, "
        "large: local, small_model: small, large_model: large, threshold: &t 0.5}}\n"
        "    secondary: {cascade: {<<: *c, audit_rate: 0.1}}\n"
    )
    with pytest.raises(ConfigError, match="comes from a YAML merge key"):
        calibrate_deployment(path, data=root / "val.npz", target=0.97,
                             at="root.fallback.secondary.cascade")  # fmt: skip
    path.write_text(path.read_text().replace("audit_rate: 0.1", "threshold: *t"))
    with pytest.raises(ConfigError, match=r"is a YAML alias \(\*t\)"):
        calibrate_deployment(path, data=root / "val.npz", target=0.97,
                             at="root.fallback.secondary.cascade")  # fmt: skip


def test_a_symlinked_deployment_stays_a_link_and_a_read_only_place_says_what_to_write(
    made, tmp_path
):  # type: ignore[no-untyped-def]
    repo, _, root = made
    real = write(tmp_path, repo, {"cascade": cascade()})
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    done = calibrate_deployment(link, data=root / "val.npz", target=0.97)
    assert link.is_symlink()
    assert yaml.safe_load(real.read_text())["root"]["cascade"]["threshold"] == (
        done.calibration.point.threshold
    )
    if os.geteuid() == 0:
        return  # root writes anywhere
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="cannot write it .* by hand"):
            calibrate_deployment(real, data=root / "val.npz", target=0.9)
    finally:
        tmp_path.chmod(0o755)


def test_a_small_model_on_fewer_features_calibrates_through_the_models_section(  # type: ignore[no-untyped-def]
    made, tmp_path
) -> None:
    """``small4`` takes x = features[:, 0:4] (declared under ``models:``) with the weights
    ``small`` holds padded with zeros: the same probabilities, so the same threshold."""
    repo, _, root = made
    graph = onnx.load(repo.get("small").model_path).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    onnx_path = linear_onnx(
        tmp_path / "small4.onnx", weights["W"][:SMALL_FEATURES], weights["b"], "x"
    )
    if "small4" not in repo.model_names():
        repo.add_version("small4", onnx_path, config=linear_config("small4", SMALL_FEATURES, "x"))
    plain = write(tmp_path, repo, {"cascade": cascade()})
    padded = calibrate_deployment(plain, data=root / "val.npz", target=0.97, write=False)
    path = tmp_path / "fewer.yaml"
    path.write_text(yaml.safe_dump({
        "repository": str(repo.root),
        "models": {"small4": {"inputs": {"x": {"from": "features", "columns": "0:4"}}}},
        "root": {"cascade": cascade(small_model="small4")},
    }, sort_keys=False))  # fmt: skip
    fewer = calibrate_deployment(path, data=root / "val.npz", target=0.97)
    assert fewer.calibration.point.threshold == padded.calibration.point.threshold
    assert fewer.calibration.point.escalation_rate == padded.calibration.point.escalation_rate
    with edgecloud.load(path, ready=True) as deployment:  # the written file runs as calibrated
        x = np.load(root / "val.npz")["features"][:5]
        assert deployment.infer(InferRequest("small4", {"features": x})).outputs


ANCHORED = """\
repository: {repo}
root:
  fallback:
    primary:
      cascade: &c
        small: local
        large: local
        small_model: small
        large_model: large
        threshold: 0.5
    secondary:
      cascade: *c
"""


@pytest.mark.parametrize(
    ("at", "message"),
    [
        ("root.fallback.secondary.cascade", r"secondary.cascade: is a YAML alias \(\*c\)"),
        (
            "root.fallback.primary.cascade",
            r"primary.cascade: is anchored \(&c\) and used elsewhere",
        ),
    ],
)
def test_a_path_through_a_shared_mapping_is_refused_naming_it(made, tmp_path, at, message) -> None:  # type: ignore[no-untyped-def]
    """Changing a threshold inside an anchored mapping would change every alias of it."""
    repo, _, root = made
    path = tmp_path / "d.yaml"
    path.write_text(ANCHORED.format(repo=repo.root))
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=message):
        calibrate_deployment(path, data=root / "val.npz", target=0.97, at=at)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("form", "text", "needle"),
    [
        ("threshold twice", "    threshold: 0.5\n    threshold: 0.6\n",
         "line 9: the key 'threshold' is written a second time (first at line 8)"),
        ("root twice", "    threshold: 0.5\nroot:\n  local: large\n",
         "line 9: the key 'root' is written a second time (first at line 2)"),
    ],
)  # fmt: skip
def test_duplicate_keys_are_refused_naming_key_and_lines(
    made, tmp_path, form, text, needle
) -> None:  # type: ignore[no-untyped-def]
    repo, _, root = made
    path = tmp_path / "d.yaml"
    path.write_text(f"repository: {repo.root}\nroot:\n  cascade:\n    small: local\n    large: "
                    f"local\n    small_model: small\n    large_model: large\n{text}")  # fmt: skip
    before = path.read_bytes()
    one_line(edgecloud_cli("calibrate", "-d", path, "--data", root / "val.npz", "--target", "0.97"),
             needle, str(path))  # fmt: skip
    assert path.read_bytes() == before
    from edgecloud import _yaml_edit

    with pytest.raises(ConfigError, match="written 2 times"):  # the editor's own reading too
        _yaml_edit.locate(path.read_text(), ["root", "cascade", "threshold"], str(path))


def test_a_yaml_12_float_threshold_loads_and_is_rewritten(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, _, root = made
    path = write(tmp_path, repo, {"cascade": cascade()})
    path.write_text(path.read_text().replace("threshold: 0.5", "threshold: 5e-1"))
    assert open_deployment(path).raw["root"]["cascade"]["threshold"] == 0.5
    done = calibrate_deployment(path, data=root / "val.npz", target=0.97)
    assert f"threshold: {done.calibration.point.threshold!r}" in path.read_text()


def test_a_read_only_file_is_refused_before_any_work_and_kept(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, _, root = made
    path = write(tmp_path, repo, {"cascade": cascade()})
    before = path.read_bytes()
    path.chmod(0o444)  # no write bit for anyone: refused even for root
    try:
        result = edgecloud_cli("calibrate", "-d", path, "--data", root / "val.npz", "--target",
                               "0.97")  # fmt: skip
        one_line(result, str(path), "read-only (mode -r--r--r--)", "--dry-run")
        assert path.read_bytes() == before and path.stat().st_mode & 0o777 == 0o444
        dry = edgecloud_cli("calibrate", "-d", path, "--data", root / "val.npz", "--target",
                            "0.97", "--dry-run")  # fmt: skip
        assert dry.returncode == 0, dry.stderr
    finally:
        path.chmod(0o644)
    path.chmod(0o640)  # mode and owner are kept when it is written
    owner = (4321, 4321) if os.geteuid() == 0 else (os.getuid(), path.stat().st_gid)
    if os.geteuid() == 0:  # root rewriting another user's file keeps it theirs
        os.chown(path, *owner)
    calibrate_deployment(path, data=root / "val.npz", target=0.97)
    assert path.stat().st_mode & 0o777 == 0o640
    assert (path.stat().st_uid, path.stat().st_gid) == owner


RACER = """\
import sys
from pathlib import Path
from edgecloud import _yaml_edit
path, key, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(1, n + 1):
    _yaml_edit.replace_scalar(path, [key, "t"], i, str(i))
"""


def test_concurrent_edits_of_one_file_each_keep_their_value(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two processes editing different keys of one file: both edits survive (flock)."""
    path = tmp_path / "race.yaml"
    path.write_text("# ours\na:\n  t: 0\nb:\n  t: 0\nc:\n  t: 0\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(path), key, "25"], env=env)
        for key in ("a", "b", "c")
    ]
    assert [r.wait(timeout=120) for r in racers] == [0, 0, 0]
    assert path.read_text() == "# ours\na:\n  t: 25\nb:\n  t: 25\nc:\n  t: 25\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race.yaml"]  # no temporary left


def test_a_link_elsewhere_resolves_the_repository_from_its_own_directory(made, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``repository:`` relative to the file as named (the link), as ``edgecloud.load``
    does; the file written is the link's target, and the link stays a link."""
    repo, _, root = made
    (tmp_path / "real").mkdir()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "models").symlink_to(repo.root)
    real = tmp_path / "real" / "d.yaml"
    real.write_text(yaml.safe_dump({"repository": "models", "root": {"cascade": cascade()}}))
    link = tmp_path / "site" / "d.yaml"
    link.symlink_to(real)
    assert edgecloud.load(link).repository.root == link.parent / "models"
    done = calibrate_deployment(link, data=root / "val.npz", target=0.97)
    assert link.is_symlink() and link.resolve() == real
    assert yaml.safe_load(real.read_text())["root"]["cascade"]["threshold"] == (
        done.calibration.point.threshold
    )
    # through the target itself, the relative repository is not there: said so
    result = edgecloud_cli("calibrate", "-d", real, "--data", root / "val.npz", "--target", "0.97")
    one_line(result, f"repository: {real.parent / 'models'} does not exist")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["a", 0, "t"], r"a\.0: is anchored \(&c\) and used elsewhere as \*c"),
        (["a", 1, "t"], r"a\.1: is a YAML alias \(\*c\) of the node at line 2"),
        (["b", 0, "t"], r"b\.0: is a YAML alias \(\*c\)"),
        (["e", "f", "t"], r"e\.f: is a YAML alias \(\*g\) of the node at line 6"),
    ],
)
def test_shared_nodes_are_found_in_lists_and_mappings(keys: list, message: str) -> None:  # type: ignore[type-arg]
    from edgecloud import _yaml_edit

    text = "a:\n  - &c {t: 1}\n  - *c\nb: [*c]\nd: {t: 2}\ng: &g {t: 3}\ne: {f: *g}\n"
    with pytest.raises(ConfigError, match=message):
        _yaml_edit.locate(text, keys, "f")
    assert _yaml_edit.locate(text, ["d", "t"], "f").replaced("5") == text.replace("t: 2", "t: 5")
