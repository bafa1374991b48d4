"""Triton model repositories (config.pbtxt) read as they are, refused by name where
edgecloud cannot honour them, and converted by ``edgecloud import --from-triton``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecloud import InferRequest, LocalBackend, ModelRepository
from edgecloud.errors import ConfigError, MissingDependencyError, ModelLoadError
from edgecloud.repository import MANIFEST_FILE

from .test_import import edgecloud, refused
from .trees import tree_sha256
from .triton_layout import CLASSIFIER, LABELS, linear_onnx, run_onnx, write_triton_repo


@pytest.fixture
def triton_repo(tmp_path: Path) -> Path:
    return write_triton_repo(tmp_path / "triton")


def one_model(root: Path, pbtxt: str, *, rows: int | str = "batch", name: str = "m") -> Path:
    """A Triton model directory ``name`` with version 1 (y = x W + b) and ``pbtxt``."""
    linear_onnx(root / name / "1" / "model.onnx", 1.0, rows=rows)
    (root / name / "config.pbtxt").write_text(pbtxt)
    return root / name


def error_of(root: Path, name: str = "m") -> str:
    """Why ``name`` cannot serve: its status line (models list, serve), also raised by get."""
    repo = ModelRepository(root)
    (status,) = [s for s in repo.status() if s.name == name]
    assert status.error is not None
    with pytest.raises(ModelLoadError) as raised:
        repo.get(name)
    assert status.error == raised.value.message or status.error in raised.value.message
    return status.error


MODEL = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


# --- read as it is ------------------------------------------------------------------


def test_the_config_is_triton_s(triton_repo: Path) -> None:
    repo = ModelRepository(triton_repo)
    config = repo.config("classifier")
    assert config.max_batch_size == 8 and config.labels == LABELS
    assert [(s.name, s.datatype, s.shape) for s in config.inputs] == [("x", "FP32", (4,))]
    assert [(s.name, s.shape) for s in config.outputs] == [("y", (3,)), ("z", (-1,))]
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.max_queue_delay_us == 2000
    assert config.dynamic_batching.preferred_batch_sizes == [4]
    assert "instance_group ignored (2 x KIND_CPU" in config.metadata["triton_ignored"]
    assert repo.served_versions("classifier") == [2]
    assert repo.served_versions("pinned") == [1, 3]
    assert repo.config("fixed").max_batch_size == 0
    auto = repo.config("auto")
    assert auto.max_batch_size == 4 and auto.dynamic_batching is not None
    assert all(s.error is None for s in repo.status()), repo.status()
    assert repo.is_triton("classifier") and repo.get("pinned").model_path.name == "linear.onnx"


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("", [3]),  # Triton's default: latest 1
        ("version_policy: { latest: { num_versions: 2 } }", [2, 3]),
        ("version_policy: { all: {} }", [1, 2, 3]),
        ("version_policy: { specific: { versions: [ 2 ] } }", [2]),
    ],
)
def test_version_policy_selects_among_the_version_directories(
    tmp_path: Path, policy: str, served: list[int]
) -> None:
    one_model(tmp_path, MODEL + policy)
    for version in (2, 3):
        linear_onnx(tmp_path / "m" / str(version) / "model.onnx", float(version))
    (tmp_path / "m" / "notes").mkdir()  # not a number: not a version, as in Triton
    repo = ModelRepository(tmp_path)
    assert repo.versions("m") == [1, 2, 3] and repo.served_versions("m") == served
    assert repo.get("m").version == served[-1]


def test_a_config_without_tensors_is_completed_from_the_graph(tmp_path: Path) -> None:
    """As Triton's onnxruntime backend: tensors from the graph; a batchable graph with
    max_batch_size 0 gets 4, keeping the dynamic_batching the config declares."""
    one_model(
        tmp_path, 'backend: "onnxruntime"\ndynamic_batching { max_queue_delay_microseconds: 300 }'
    )
    one_model(tmp_path, 'platform: "onnxruntime_onnx"\nmax_batch_size: 2', name="two")
    one_model(tmp_path, 'platform: "onnxruntime_onnx"', rows=2, name="fixed")
    repo = ModelRepository(tmp_path)
    config = repo.config("m")
    assert config.max_batch_size == 4 and config.dynamic_batching is not None
    assert config.dynamic_batching.max_queue_delay_us == 300
    assert [s.shape for s in config.inputs] == [(4,)]
    assert "auto-completed to 4" in config.metadata["triton_ignored"]
    two = repo.config("two")
    assert two.max_batch_size == 2 and [s.shape for s in two.outputs] == [(3,), (3,)]
    fixed = repo.config("fixed")  # a graph fixed to 2 rows does not batch
    assert fixed.max_batch_size == 0 and [s.shape for s in fixed.inputs] == [(2, 4)]
    assert all(s.error is None for s in repo.status()), repo.status()


def test_local_backend_runs_it_unchanged(triton_repo: Path) -> None:
    before = tree_sha256(triton_repo)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with LocalBackend(triton_repo) as local:
        for model, version, file in (
            ("classifier", None, "classifier/2/model.onnx"),
            ("pinned", "1", "pinned/1/linear.onnx"),
            ("auto", None, "auto/1/model.onnx"),
        ):
            got = local.infer(InferRequest(model, {"x": x}, version=version)).outputs
            np.testing.assert_array_equal(got["y"], run_onnx(triton_repo / file, x)["y"])
    assert tree_sha256(triton_repo) == before
    assert not list(triton_repo.rglob(MANIFEST_FILE)) and not list(triton_repo.rglob("*.yaml"))


def test_nothing_is_ever_written_into_a_triton_directory(triton_repo: Path) -> None:
    repo = ModelRepository(triton_repo)
    with pytest.raises(ConfigError, match="Triton model directory.*--from-triton"):
        repo.add_version("classifier", triton_repo / "classifier" / "1" / "model.onnx")
    assert repo.versions("classifier") == [1, 2]


def test_the_parsed_config_is_read_again_only_when_a_file_changes(triton_repo: Path) -> None:
    repo = ModelRepository(triton_repo)
    first = repo.config("classifier")
    assert repo.config("classifier") is first  # cached: serving reads it per request
    (triton_repo / "classifier" / "config.pbtxt").write_text(
        CLASSIFIER.replace("max_queue_delay_microseconds: 2000", "max_queue_delay_microseconds: 7")
    )
    batching = repo.config("classifier").dynamic_batching
    assert batching is not None and batching.max_queue_delay_us == 7


def test_without_tritonclient_it_names_the_extra(
    triton_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient.grpc.model_config_pb2", None)
    repo = ModelRepository(triton_repo)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgecloud\[triton\]'"):
        repo.config("classifier")
    status = {s.name: s.error for s in repo.status()}  # one model's problem, not the server's
    assert "edgecloud[triton]" in (status["classifier"] or "")


# --- refused by name ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pbtxt", "named"),
    [
        ('platform: "tensorrt_plan"\nmax_batch_size: 8', "platform 'tensorrt_plan'"),
        ('platform: "pytorch_libtorch"', "platform 'pytorch_libtorch'"),
        ('backend: "python"', "backend 'python'"),
        ('default_model_filename: "model.plan"', "'model.plan' is not an .onnx file"),
        (MODEL + 'default_model_filename: "../m.onnx"', "'../m.onnx' is not a file name"),
        (
            MODEL.replace("dims: [ 3 ] }", 'dims: [ 3 ] label_filename: "/etc/passwd" }'),
            "label_filename '/etc/passwd' is not a file name",
        ),
        (MODEL.replace("onnxruntime_onnx", 'onnxruntime_onnx"\nbackend: "tensorrt'), "tensorrt"),
        ('platform: "ensemble"\nmax_batch_size: 8', "ensemble"),
        (
            'platform: "onnxruntime_onnx"\nensemble_scheduling { step [ { model_name: "a" } ] }',
            "ensemble_scheduling",
        ),
        (
            MODEL + "sequence_batching { max_sequence_idle_microseconds: 5000000 }",
            "sequence_batching",
        ),
        (MODEL + "model_transaction_policy { decoupled: true }", "decoupled"),
        (MODEL + 'model_operations { op_library_filename: "libcustom.so" }', "model_operations"),
        (
            MODEL.replace("dims: [ 4 ] }", "dims: [ 4 ] reshape: { shape: [ 2, 2 ] } }"),
            "input 'x': reshape",
        ),
        (MODEL.replace("TYPE_FP32 dims: [ 4 ]", "TYPE_BF16 dims: [ 4 ]"), "TYPE_BF16"),
        (MODEL.replace("dims: [ 4 ]", "dims: [ 0 ]"), "dims [0]"),
        ('name: "other"\n' + MODEL, "names the model 'other'"),
        (MODEL + "dynamic_batching { preferred_batch_size: [ 16 ] }", "preferred_batch_size [16]"),
        (MODEL + "version_policy: { specific: { versions: [ 1, 4 ] } }", "versions [4]"),
        (MODEL + "version_policy: { latest: { num_versions: 0 } }", "num_versions"),
    ],
)
def test_what_edgecloud_cannot_honour_is_refused_by_name(
    tmp_path: Path, pbtxt: str, named: str
) -> None:
    one_model(tmp_path, pbtxt)
    message = error_of(tmp_path)
    assert named in message and "config.pbtxt" in message, message
    assert "\n" not in message


def test_a_malformed_config_names_its_line(tmp_path: Path) -> None:
    one_model(tmp_path, MODEL.replace('{ name: "y"', '{ nmae: "y"'))
    message = error_of(tmp_path)
    assert "config.pbtxt: line 5, column" in message and "nmae" in message, message
    (tmp_path / "m" / "config.pbtxt").write_text(MODEL + "input [ { name: \n")
    assert "config.pbtxt: line 7, column 1: " in error_of(tmp_path)  # the text ended early


@pytest.mark.parametrize(
    ("pbtxt", "rows", "named"),
    [
        (MODEL.replace("dims: [ 4 ]", "dims: [ 5 ]"), "batch", "dims [5] do not match"),
        (MODEL.replace("dims: [ 3 ]", "dims: [ 3, 1 ]"), "batch", "dims [3, 1] do not match"),
        (MODEL.replace("TYPE_FP32 dims: [ 4 ]", "TYPE_INT64 dims: [ 4 ]"), "batch", "INT64"),
        (MODEL.replace('name: "x"', 'name: "input"'), "batch", "'input' is not in the graph"),
        (MODEL, 1, "needs a dynamic leading (batch) dimension"),  # graph fixed to 1 row
        (MODEL.replace("max_batch_size: 8", "max_batch_size: 0"), "batch", "do not match"),
    ],
)
def test_dims_that_do_not_match_the_graph_are_refused(
    tmp_path: Path, pbtxt: str, rows: int | str, named: str
) -> None:
    one_model(tmp_path, pbtxt, rows=rows)
    message = error_of(tmp_path)
    assert named in message and "Triton, not hashed" in message, message


def test_missing_versions_files_and_labels_are_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(MODEL)
    assert "no version directory" in error_of(tmp_path)

    one_model(tmp_path, MODEL + 'default_model_filename: "net.onnx"', name="named")
    assert "net.onnx is missing" in error_of(tmp_path, "named")

    labelled = MODEL.replace("dims: [ 3 ] }", 'dims: [ 3 ] label_filename: "labels.txt" }')
    one_model(tmp_path, labelled, name="labelled")
    message = error_of(tmp_path, "labelled")
    assert "label_filename" in message and "labels.txt" in message, message
    (tmp_path / "labelled" / "labels.txt").write_text("a\nb\n")
    assert "2 labels" in error_of(tmp_path, "labelled")


def test_labels_on_an_output_other_than_the_first_are_refused(tmp_path: Path) -> None:
    pbtxt = MODEL.replace(
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]',
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] },'
        ' { name: "z" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "l.txt" } ]',
    )
    one_model(tmp_path, pbtxt)
    (tmp_path / "m" / "l.txt").write_text("a\nb\nc\n")
    assert "put the labelled output first" in error_of(tmp_path)


def test_an_edgecloud_model_is_not_taken_for_a_triton_one(tmp_path: Path) -> None:
    """config.yaml wins; a version with version.json is edgecloud's even without config."""
    from .models import affine_config, affine_onnx

    repo = ModelRepository(tmp_path)
    repo.add_version("affine", affine_onnx(tmp_path / "a.onnx"), config=affine_config())
    (tmp_path / "affine" / "config.pbtxt").write_text('platform: "tensorrt_plan"')
    assert not repo.is_triton("affine") and repo.status()[0].error is None
    (tmp_path / "affine" / "config.yaml").unlink()
    (tmp_path / "affine" / "config.pbtxt").unlink()
    assert not repo.is_triton("affine")
    assert "has no config" in (repo.status()[0].error or "")


# --- the command line -------------------------------------------------------------


def test_models_list_says_which_models_are_triton_s(triton_repo: Path) -> None:
    result = edgecloud("models", "list", "--repo", triton_repo)
    assert result.returncode == 0, result.stderr
    rows = {
        cells[1].strip(): (cells[-3].strip(), cells[-2].strip())
        for cells in (line.split("│") for line in result.stdout.splitlines())
        if len(cells) > 2 and cells[1].strip()
    }
    models = ("auto", "classifier", "fixed", "pinned")
    assert {m: rows[m] for m in models} == dict.fromkeys(models, ("triton", "ready")), rows
    assert "have no sha256" in result.stdout


def test_import_from_triton_converts_every_served_version(
    triton_repo: Path, tmp_path: Path
) -> None:
    before = tree_sha256(triton_repo)
    target = tmp_path / "repo"
    result = edgecloud("import", "--from-triton", triton_repo / "pinned", "--repo", target)
    assert result.returncode == 0, result.stderr
    assert "imported pinned version 1" in result.stdout and "version 3" in result.stdout
    result = edgecloud(
        "import", "--from-triton", triton_repo / "classifier", "--name", "clf", "--repo", target
    )
    assert result.returncode == 0, result.stderr
    assert "instance_group ignored" in result.stdout
    assert tree_sha256(triton_repo) == before

    repo = ModelRepository(target)
    assert repo.versions("pinned") == [1, 3] and repo.served_versions("pinned") == [1, 3]
    assert repo.versions("clf") == [2]  # latest 1 serves 2: the one converted
    clf = repo.get("clf")
    assert not repo.is_triton("clf") and (clf.path / MANIFEST_FILE).is_file()
    clf.verify()  # sha256 recorded now
    assert clf.config.labels == LABELS and clf.config.max_batch_size == 8
    assert clf.config.dynamic_batching is not None
    assert clf.config.dynamic_batching.preferred_batch_sizes == [4]
    assert clf.config.metadata["imported_from"].startswith("triton:")
    x = np.ones((2, 4), np.float32)
    with LocalBackend(target) as local:
        got = local.infer(InferRequest("pinned", {"x": x}, version="3")).outputs["y"]
    np.testing.assert_array_equal(got, run_onnx(triton_repo / "pinned/3/linear.onnx", x)["y"])

    latest = edgecloud(
        "import",
        "--from-triton",
        triton_repo / "pinned",
        "--name",
        "p2",
        "--latest",
        "--repo",
        target,
    )
    assert latest.returncode == 0 and ModelRepository(target).versions("p2") == [3]


def test_import_from_triton_refuses_in_one_line(triton_repo: Path, tmp_path: Path) -> None:
    target = tmp_path / "repo"
    refused(edgecloud("import", "--from-triton", tmp_path / "nowhere", "--repo", target), "nowhere")
    refused(
        edgecloud("import", "--from-triton", tmp_path, "--repo", target),
        "not a Triton model directory",
    )
    refused(
        edgecloud(
            "import",
            "--from-triton",
            triton_repo / "fixed",
            "--labels",
            "l.txt",
            "--repo",
            target,
        ),
        "--from-triton takes",
    )
    one_model(tmp_path / "t", 'platform: "ensemble"', name="ens")
    refused(
        edgecloud("import", "--from-triton", tmp_path / "t" / "ens", "--repo", target), "ensemble"
    )
    refused(edgecloud("import", "--repo", target), "ONNX model file", "--from-triton DIR")
    assert (
        edgecloud("import", "--from-triton", triton_repo / "fixed", "--repo", target).returncode
        == 0
    )
    refused(
        edgecloud("import", "--from-triton", triton_repo / "fixed", "--repo", target),
        "already exists",
    )


def test_import_from_triton_without_the_extra_is_one_line(
    triton_repo: Path, tmp_path: Path
) -> None:
    script = (
        "import sys; sys.modules['tritonclient'] = None; from edgecloud.cli import main; "
        f"sys.argv = ['edgecloud', 'import', '--from-triton', {str(triton_repo / 'fixed')!r}, "
        f"'--repo', {str(tmp_path / 'repo')!r}]; main()"
    )
    env = {
        "COLUMNS": "200",
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    refused(result, "Triton config.pbtxt", "pip install 'edgecloud[triton]'")
    assert not (tmp_path / "repo" / "fixed").exists()
