"""Labels are checked and mapped by one function (``samples.class_indices``) in every
consumer: ``import --samples``, ``compress`` evaluation, prune/distill training and
``calibrate`` refuse the same bad labels with the same message; a model's labels are
its own (a new version cannot relabel the ones already served); labels files may
start with a byte-order mark."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgecloud import ModelRepository
from edgecloud.calibration import calibrate_deployment
from edgecloud.compress import compress, evaluation_data
from edgecloud.compress.torch_methods import _labels as training_labels
from edgecloud.errors import ConfigError
from edgecloud.importing import import_onnx, read_labels
from edgecloud.routing.calibrate import calibrate_report
from edgecloud.samples import class_indices, data_for

from .conftest import ROOT
from .routing.calibration_models import CLASSES, build

NAMES = list(CLASSES)  # ant, bee, cat: the import model's and the cascade's classes
ROWS = 6
HUGE = np.uint64(2**63 + 5)

BAD: dict[str, tuple[Callable[[int], np.ndarray], str]] = {
    "unknown name": (
        lambda n: np.array(["ant", "zzz"] * (n // 2)),
        "labels 'zzz' are not classes of the model (ant, bee, cat)",
    ),
    "out of range": (
        lambda n: np.arange(50, 50 + n),
        "labels must be class indices in [0, 3) (3 classes), got 50, 51, 52, 53, 54 ...",
    ),
    "one out of range": (
        lambda n: np.array([0, 1, 2] * (n // 3 - 1) + [0, 1, 3]),
        "labels must be class indices in [0, 3) (3 classes), got 3 (labels range 0..3)",
    ),
    "negative": (
        lambda n: np.array([-1] + [0] * (n - 1)),
        "labels must be class indices in [0, 3) (3 classes), got -1",
    ),
    "NaN": (
        lambda n: np.array([np.nan] + [0.0] * (n - 1)),
        "labels are floats (float64, some NaN); give integer class indices or class names",
    ),
    "whole floats": (
        lambda n: np.zeros(n, np.float32),
        "labels are floats (float32); give integer class indices or class names",
    ),
    "bytes not UTF-8": (
        lambda n: np.array([b"ant", b"\xff"] * (n // 2)),
        "label 1 (b'\\xff') is a byte string that is not UTF-8",
    ),
    "bool": (lambda n: np.ones(n, bool), "labels are booleans (bool); give integer class"),
    "uint64 huge": (
        lambda n: np.full(n, HUGE, np.uint64),
        "got 9223372036854775813 (labels range 9223372036854775813..9223372036854775813)",
    ),
}
GOOD: dict[str, tuple[Callable[[int], np.ndarray], list[int]]] = {
    "names": (lambda n: np.array(["cat", "ant"] * (n // 2)), [2, 0] * (ROWS // 2)),
    "UTF-8 bytes": (lambda n: np.array([b"cat", b"ant"] * (n // 2)), [2, 0] * (ROWS // 2)),
    "int64": (lambda n: np.arange(n) % 3, [0, 1, 2] * (ROWS // 3)),
    "uint8": (lambda n: (np.arange(n) % 3).astype(np.uint8), [0, 1, 2] * (ROWS // 3)),
    "uint64": (lambda n: (np.arange(n) % 3).astype(np.uint64), [0, 1, 2] * (ROWS // 3)),
}


def scores_onnx(path: Path, weights: np.ndarray) -> Path:
    """y = x @ weights; x: FP32 [N, 4] -> y: FP32 [N, classes]."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "scores",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", weights.shape[1]])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def always_first(tmp_path: Path) -> Path:
    """Three class scores, class 0 always highest on inputs in [0.5, 1)."""
    weights = np.zeros((4, 3))
    weights[:, 0] = 1.0
    return scores_onnx(tmp_path / "first.onnx", weights)


def labels_file(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def inputs(rows: int = ROWS) -> np.ndarray:
    return np.random.default_rng(0).uniform(0.5, 1.0, (rows, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRepository, Path]:
    """Model ``m`` (ant, bee, cat; always class 0) with samples, and its directory."""
    root = tmp_path_factory.mktemp("labels")
    repo = ModelRepository(root / "repo")
    samples = root / "ok.npz"
    np.savez(samples, x=inputs(), labels=np.arange(ROWS) % 3)
    names = labels_file(root / "names.txt", "\n".join(NAMES) + "\n")
    import_onnx(repo, always_first(root), "m", labels=names, samples=samples, max_batch_size=8)
    return repo, root


# -- the function itself -------------------------------------------------------------------


@pytest.mark.parametrize("case", BAD)
def test_class_indices_refuses_every_bad_label(case: str) -> None:
    make, message = BAD[case]
    with pytest.raises(ConfigError) as info:
        class_indices(make(ROWS), NAMES, "file.npz")
    assert info.value.message.startswith("file.npz: ")
    assert message in info.value.message


@pytest.mark.parametrize("case", GOOD)
def test_class_indices_maps_good_labels(case: str) -> None:
    make, expected = GOOD[case]
    got = class_indices(make(ROWS), NAMES, "file.npz")
    assert got.dtype == np.int64 and got.tolist() == expected


def test_byte_string_labels_are_utf8_names() -> None:
    """np.savez of b'...' labels gives an 'S' array: decoded as UTF-8, never crashing."""
    classes = ["ant", "bee", "café"]
    labels = np.array([b"ant", "café".encode(), b"bee"])
    assert class_indices(labels, classes, "f").tolist() == [0, 2, 1]
    for bad in (np.array([b"a", b"b", b"\xff"]), np.array([b"caf\xe9"])):  # not UTF-8
        with pytest.raises(ConfigError, match=r"f: label \d+ \(b'.*'\) is a byte string that"):
            class_indices(bad, classes, "f")
    with pytest.raises(ConfigError, match="labels 'zzz' are not classes"):
        class_indices(np.array([b"zzz"]), classes, "f")


def test_regression_targets_beyond_float32_are_refused() -> None:
    from edgecloud.samples import target_values

    for value in (1e39, -1e39, 3.5e38, np.finfo(np.float64).max):
        with pytest.raises(ConfigError, match=r"1 of 2 labels .* beyond float32's range"):
            target_values(np.array([0.0, value]), "f")
    largest = float(np.finfo(np.float32).max)
    assert target_values(np.array([largest, -largest]), "f").tolist() == [largest, -largest]
    assert target_values(np.array([2**64 - 1], np.uint64), "f").dtype == np.float32


def test_class_indices_other_shapes_and_names() -> None:
    with pytest.raises(ConfigError, match=r"labels must be 1-D, one per row, got shape \[3, 2\]"):
        class_indices(np.zeros((3, 2), np.int64), NAMES, "f")
    with pytest.raises(ConfigError, match="the model declares no class names"):
        class_indices(np.array(["ant"]), None, "f")
    with pytest.raises(ConfigError, match="'crane' name a class the model declares more than"):
        class_indices(np.array(["crane"]), ["crane", "ant", "crane"], "f")
    assert class_indices(np.array(["ant"]), ["crane", "ant", "crane"], "f").tolist() == [1]
    # without class names or a known count, only negatives are out of range
    assert class_indices(np.array([7]), None, "f").tolist() == [7]
    with pytest.raises(ConfigError, match=r"in \[0, n\), got -2"):
        class_indices(np.array([-2]), None, "f")
    assert class_indices(np.array([], np.int64), NAMES, "f").tolist() == []


# -- every consumer, the same matrix --------------------------------------------------------


def _bad_file(root: Path, case: str, rows: int = ROWS, **arrays: np.ndarray) -> Path:
    path = root / f"bad-{case.replace(' ', '-')}.npz"
    np.savez(path, **(arrays or {"x": inputs(rows)}), labels=BAD[case][0](rows))
    return path


@pytest.mark.parametrize("case", BAD)
def test_import_refuses_bad_sample_labels(
    case: str, imported: tuple[ModelRepository, Path], tmp_path: Path
) -> None:
    repo, root = imported
    bad = _bad_file(tmp_path, case)
    with pytest.raises(ConfigError) as info:
        import_onnx(repo, always_first(tmp_path), "m2", labels=root / "names.txt", samples=bad)
    assert f"samples file {bad}: " in info.value.message
    assert BAD[case][1] in info.value.message
    assert not (repo.root / "m2").exists()


def test_import_checks_labels_against_the_classes_it_runs(tmp_path: Path) -> None:
    """A graph whose class count is symbolic ([N, C]) is checked on its outputs as run."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C"])],
        initializer=[numpy_helper.from_array(np.ones((4, 3), np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "dyn.onnx")
    repo = ModelRepository(tmp_path / "repo")
    for case in ("out of range", "NaN"):
        with pytest.raises(ConfigError) as info:
            import_onnx(repo, tmp_path / "dyn.onnx", "d", samples=_bad_file(tmp_path, case),
                        max_batch_size=8)  # fmt: skip
        assert BAD[case][1] in info.value.message
        assert not (repo.root / "d").exists()


@pytest.mark.parametrize("case", BAD)
def test_compress_evaluation_refuses_bad_labels(
    case: str, imported: tuple[ModelRepository, Path], tmp_path: Path
) -> None:
    repo, _ = imported
    bad = _bad_file(tmp_path, case)
    with pytest.raises(ConfigError) as info:
        evaluation_data(repo.get("m"), bad)
    assert info.value.message.startswith(f"samples file {bad}: ")
    assert BAD[case][1] in info.value.message
    before = repo.versions("m")
    with pytest.raises(ConfigError, match=re.escape(BAD[case][1])):
        compress(repo, "m", "fp16", data=bad, tolerance=0.5)
    assert repo.versions("m") == before


@pytest.mark.parametrize("case", BAD)
def test_training_refuses_bad_labels(
    case: str, imported: tuple[ModelRepository, Path], tmp_path: Path
) -> None:
    """prune and distill take their hard labels through the same check."""
    repo, _ = imported
    bad = _bad_file(tmp_path, case)
    parent = repo.get("m")
    with pytest.raises(ConfigError) as info:
        training_labels(parent, data_for(parent, bad), 3)
    assert info.value.message.startswith(f"samples file {bad}: ")
    assert BAD[case][1] in info.value.message


@pytest.fixture(scope="module")
def cascade(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("cascade")
    repo, splits = build(root)
    path = root / "deployment.yaml"
    node = {"small": "local", "large": "local", "small_model": "small",
            "large_model": "large", "threshold": 0.5}  # fmt: skip
    path.write_text(yaml.safe_dump({"repository": str(repo.root), "root": {"cascade": node}}))
    return path, splits["val"][0][:ROWS]


@pytest.mark.parametrize("case", BAD)
def test_calibrate_refuses_bad_labels(
    case: str, cascade: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, features = cascade
    before = path.read_bytes()
    bad = _bad_file(tmp_path, case, features=features)
    with pytest.raises(ConfigError) as info:
        calibrate_deployment(path, data=bad, target=0.9)
    assert f"samples file {bad}: " in info.value.message
    assert BAD[case][1] in info.value.message
    assert path.read_bytes() == before


@pytest.mark.parametrize("case", [c for c in BAD if c not in ("unknown name", "bytes not UTF-8")])
def test_calibration_arrays_refuse_bad_labels(case: str) -> None:
    """The array API under ``calibrate`` (``calibrate_report``) uses the same check."""
    probs = np.full((ROWS, 3), 1 / 3, np.float32)
    with pytest.raises(ConfigError) as info:
        calibrate_report(probs, probs, BAD[case][0](ROWS), target_relative_accuracy=0.9)
    assert info.value.message.startswith("calibration data: labels ")
    assert BAD[case][1] in info.value.message


# -- finding: accuracy scored on the labels as given ----------------------------------------


def test_compress_scores_names_and_holds_the_tolerance(
    imported: tuple[ModelRepository, Path], tmp_path: Path
) -> None:
    """Labels all 'ant' (class 0) on a model that always answers class 0: accuracy 1.0,
    not 0.0; and a compressed model that answers wrong is refused by --tolerance."""
    repo, _ = imported
    ants = tmp_path / "ants.npz"
    np.savez(ants, x=inputs(), labels=np.array(["ant"] * ROWS))
    result = compress(repo, "m", "fp16", data=ants, tolerance=0.5)
    assert result.evaluation.accuracy == 1.0
    assert result.evaluation.parent_accuracy == 1.0
    assert result.evaluation.accuracy_drop_points == 0.0
    cats = tmp_path / "cats.npz"
    np.savez(cats, x=inputs(), labels=np.full(ROWS, 2, np.uint8))
    result = compress(repo, "m", "fp16", data=cats, version=1)
    assert result.evaluation.accuracy == 0.0  # right: the model never says 'cat'


# -- a model's labels are the model's -------------------------------------------------------


def test_a_new_version_cannot_relabel_the_model(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    model = always_first(tmp_path)
    abc = labels_file(tmp_path / "abc.txt", "a\nb\nc\n")
    xyz = labels_file(tmp_path / "xyz.txt", "x\ny\nz\n")
    import_onnx(repo, model, "M", labels=abc)
    config = (repo.root / "M" / "config.yaml").read_bytes()
    with pytest.raises(ConfigError) as info:
        import_onnx(repo, model, "M", labels=xyz)
    assert "model 'M'" in info.value.message
    assert "has labels a, b, c, shared by all its versions" in info.value.message
    assert "this import gives labels x, y, z" in info.value.message
    assert (repo.root / "M" / "config.yaml").read_bytes() == config
    assert repo.versions("M") == [1]
    # the same labels again, or none: the model's are kept
    import_onnx(repo, model, "M", labels=abc)
    import_onnx(repo, model, "M")
    assert repo.versions("M") == [1, 2, 3]
    assert repo.config("M").labels == ["a", "b", "c"]
    # a model without labels cannot gain them by a later version either
    import_onnx(repo, model, "N")
    with pytest.raises(ConfigError, match="model 'N' .* has no labels, shared by all its vers"):
        import_onnx(repo, model, "N", labels=abc)
    assert repo.config("N").labels is None


def test_relabel_is_one_line_in_the_cli(tmp_path: Path) -> None:
    model = always_first(tmp_path)
    abc = labels_file(tmp_path / "abc.txt", "a\nb\nc\n")
    xyz = labels_file(tmp_path / "xyz.txt", "x\ny\nz\n")
    repo = tmp_path / "repo"

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgecloud.cli", "import", *map(str, args),
             "--repo", str(repo)],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip

    assert run(model, "--name", "M", "--labels", abc).returncode == 0
    result = run(model, "--name", "M", "--labels", xyz)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "has labels a, b, c" in lines[0] and "x, y, z" in lines[0]


# -- labels files ---------------------------------------------------------------------------


def test_labels_file_with_a_byte_order_mark(tmp_path: Path) -> None:
    bom = labels_file(tmp_path / "bom.txt", b"\xef\xbb\xbfant\r\nbee\r\ncat\r\n")
    assert read_labels(bom) == NAMES
    repo = ModelRepository(tmp_path / "repo")
    samples = tmp_path / "s.npz"
    np.savez(samples, x=inputs(), labels=np.array(["ant"] * ROWS))
    import_onnx(repo, always_first(tmp_path), "b", labels=bom, samples=samples)
    assert repo.config("b").labels == NAMES


# -- regression: labels are targets ---------------------------------------------------------


def test_regression_labels_are_targets(tmp_path: Path) -> None:
    """A first output that is not class scores ([N, 1]) takes finite numeric targets in
    every consumer; names, booleans and NaN are refused; evaluation does not score them."""
    repo = ModelRepository(tmp_path / "repo")
    model = scores_onnx(tmp_path / "reg.onnx", np.ones((4, 1)))
    good = tmp_path / "targets.npz"
    np.savez(good, x=inputs(), labels=np.linspace(0, 1, ROWS))
    import_onnx(repo, model, "r", samples=good, max_batch_size=8)
    parent = repo.get("r")
    assert training_labels(parent, data_for(parent), None).dtype == np.float32
    for labels, message in [
        (np.array([np.nan] + [0.0] * (ROWS - 1)), "1 of 6 labels (regression targets) are NaN"),
        (np.array(["ant"] * ROWS), "labels are regression targets and must be numbers, got <U3"),
        (np.ones(ROWS, bool), "labels are regression targets and must be numbers, got bool"),
    ]:
        bad = tmp_path / "bad.npz"
        np.savez(bad, x=inputs(), labels=labels)
        with pytest.raises(ConfigError, match=re.escape(message)):
            import_onnx(repo, model, "r", samples=bad)
        with pytest.raises(ConfigError, match=re.escape(message)):
            evaluation_data(parent, bad)
        with pytest.raises(ConfigError, match=re.escape(message)):
            training_labels(parent, data_for(parent, bad), None)
    assert repo.versions("r") == [1]
    result = compress(repo, "r", "fp16", tolerance=0.01)
    assert result.evaluation.accuracy is None and result.evaluation.cosine_min > 0.999
