"""``edgecloud import`` and sample files: real CLI processes, real onnxruntime, real files."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgecloud import ModelRepository
from edgecloud.errors import ConfigError, ModelLoadError
from edgecloud.repository import config_from_onnx, sha256_file
from edgecloud.samples import data_for, load_samples

from .conftest import ROOT
from .models import affine_config, affine_onnx, nonfinite_onnx, two_input_config, two_input_onnx
from .trees import tree_sha256


def edgecloud(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, with this checkout's code (PYTHONPATH passed on)."""
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 1, one line on stderr starting ``error:``, no traceback, nothing on stdout."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr and not result.stdout.strip()
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def failing_onnx(path: Path) -> Path:
    """y = reshape(x, [2, 2]); x: FP32 [n]: runs only when n == 4 (zeros of [1] fail)."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        initializer=[numpy_helper.from_array(np.array([2, 2], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def fixed_row_onnx(path: Path) -> Path:
    """y = x; x, y: FP32 [1, 4]: exactly one row, no batch dimension to speak of."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def typed_onnx(path: Path, elem_type: int, shape: list[str | int] | None = None) -> Path:
    """y = x; x, y: ``elem_type`` of ``shape`` (default ``[N, 4]``)."""
    dims = shape or ["N", 4]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "typed",
        [helper.make_tensor_value_info("x", elem_type, dims)],
        [helper.make_tensor_value_info("y", elem_type, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


SERVED_ONNX_TYPES = {
    "BOOL": "BOOL", "UINT8": "UINT8", "UINT16": "UINT16", "UINT32": "UINT32",
    "UINT64": "UINT64", "INT8": "INT8", "INT16": "INT16", "INT32": "INT32", "INT64": "INT64",
    "FLOAT16": "FP16", "FLOAT": "FP32", "DOUBLE": "FP64", "STRING": "BYTES",
}  # fmt: skip


@pytest.mark.parametrize(
    "onnx_type", [n for n, _ in TensorProto.DataType.items() if n != "UNDEFINED"]
)
def test_every_onnx_element_type_is_served_or_refused_by_name(
    onnx_type: str, tmp_path: Path
) -> None:
    """Each ONNX element type maps to its datatype, or is refused with a typed error:
    ConfigError naming the tensor and type when onnxruntime reads the graph (bfloat16,
    float8), ModelLoadError when it cannot (complex, int4, float4...)."""
    path = typed_onnx(tmp_path / "m.onnx", getattr(TensorProto, onnx_type))
    if onnx_type in SERVED_ONNX_TYPES:
        config = config_from_onnx(path, "m", max_batch_size=4)
        assert config.inputs[0].datatype == SERVED_ONNX_TYPES[onnx_type]
        assert config.inputs[0].shape == (4,)
        return
    with pytest.raises((ConfigError, ModelLoadError)) as caught:
        config_from_onnx(path, "m", max_batch_size=4)
    if isinstance(caught.value, ConfigError):
        assert f"input 'x' has type tensor({onnx_type.lower()})" in caught.value.message


def test_sequence_input_is_refused(tmp_path: Path) -> None:
    seq = helper.make_tensor_sequence_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "seq",
        [seq("x", TensorProto.FLOAT, None)],
        [seq("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "seq.onnx")
    with pytest.raises(ConfigError, match=r"input 'x' has type seq\(tensor\(float\)\)"):
        config_from_onnx(tmp_path / "seq.onnx", "m")


@pytest.mark.parametrize("value", ["2147483648", "99999999999999999999", "-1"])
def test_max_batch_size_option_is_int32(value: str, files: Path, tmp_path: Path) -> None:
    """Triton's max_batch_size is int32: larger (or negative) is a usage error, nothing
    written (before, 10**20 was stored and the server's /config answered 500)."""
    result = edgecloud(
        "import", files / "affine.onnx", "--name", "huge", "--max-batch-size", value,
        "--repo", tmp_path / "r",
    )  # fmt: skip
    assert result.returncode == 2 and "--max-batch-size" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "r").exists()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Models, samples and labels files in one directory."""
    affine_onnx(tmp_path / "affine.onnx")
    two_input_onnx(tmp_path / "two.onnx")
    rng = np.random.default_rng(0)
    x = rng.random((5, 4), dtype=np.float32)
    np.savez(tmp_path / "samples.npz", x=x, labels=np.array([0, 1, 2, 0, 1]))
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    return tmp_path


def test_import_without_samples_says_so(files: Path) -> None:
    repo = files / "repo"
    result = edgecloud("import", files / "affine.onnx", "--name", "mine", "--repo", repo)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith("imported mine version 1: inputs x FP32[-1, 4] -> outputs")
    assert "no samples given" in line and "--samples" in line
    version = ModelRepository(repo).get("mine")
    assert version.config.max_batch_size == 0 and version.config.labels is None
    assert "samples.npz" not in version.files and not (version.path / "samples.npz").exists()
    with pytest.raises(ConfigError, match=r"pass --data FILE\.npz with inputs named x \(FP32"):
        data_for(version)


def test_import_with_samples_and_labels_then_a_second_version(files: Path) -> None:
    repo = files / "repo"
    args = ["--labels", files / "labels.txt", "--samples", files / "samples.npz"]
    first = edgecloud(
        "import", files / "affine.onnx", "--name", "mine", "--max-batch-size", "8", *args,
        "--repo", repo,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (
        "imported mine version 1: inputs x FP32[4] -> outputs y FP32[3], z FP32[3]; "
        "ran 5 sample rows"
    )
    repository = ModelRepository(repo)
    version = repository.get("mine")
    assert version.config.max_batch_size == 8 and version.config.labels == ["cat", "dog", "bird"]
    assert version.files["samples.npz"] == sha256_file(files / "samples.npz")
    data = data_for(version)
    np.testing.assert_array_equal(data.inputs["x"], np.load(files / "samples.npz")["x"])
    assert data.labels is not None and data.labels.tolist() == [0, 1, 2, 0, 1] and data.rows == 5
    # --data wins over the version's samples
    np.savez(files / "other.npz", x=np.zeros((2, 4), np.float32))
    assert data_for(version, files / "other.npz").rows == 2

    # again, without options: version 2 of the same model, config (batching, labels) kept
    second = edgecloud("import", files / "affine.onnx", "--name", "mine", "--repo", repo)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("imported mine version 2: inputs x FP32[4]")
    assert repository.versions("mine") == [1, 2]
    assert repository.config("mine").labels == ["cat", "dog", "bird"]
    assert [s.error for s in repository.status()] == [None]


def test_tampered_samples_make_the_version_not_ready(files: Path) -> None:
    repo = files / "repo"
    result = edgecloud(
        "import", files / "affine.onnx", "--name", "mine", "--samples", files / "samples.npz",
        "--repo", repo,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    repository = ModelRepository(repo)
    stored = repository.get("mine").path / "samples.npz"
    np.savez(stored, x=np.full((5, 4), 9, np.float32))  # valid, but not what was recorded
    (status,) = repository.status()
    assert status.error is not None and "samples.npz is corrupt" in status.error
    listed = edgecloud("models", "list", "--repo", repo)
    assert "corrupt" in listed.stdout and "ready" not in listed.stdout


def _write(name: str, **arrays: np.ndarray) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        np.savez(directory / name, **arrays)  # type: ignore[arg-type]
        return directory / name

    return make


def _text(name: str, text: str) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        (directory / name).write_text(text)
        return directory / name

    return make


def _npy(directory: Path) -> Path:
    np.save(directory / "one.npy", np.ones((2, 4), np.float32))
    return directory / "one.npy"


def _pickled(directory: Path) -> Path:
    np.savez(directory / "pickled.npz", x=np.array([{"a": 1}, None], dtype=object))
    return directory / "pickled.npz"


def _pickled_labels(directory: Path) -> Path:
    labels = np.array(["a", 1], dtype=object)
    np.savez(directory / "pl.npz", x=np.ones((2, 4), np.float32), labels=labels)
    return directory / "pl.npz"


X = np.ones((3, 4), np.float32)


def _truncated(directory: Path) -> Path:
    np.savez(directory / "full.npz", x=X)
    data = (directory / "full.npz").read_bytes()
    (directory / "t.npz").write_bytes(data[: len(data) // 2])
    return directory / "t.npz"


def _write_zip(directory: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(directory / "z.npz", "w") as archive:
        archive.writestr(member, data)
    return directory / "z.npz"


def _object_header() -> bytes:
    text = "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }".ljust(117) + "\n"
    return len(text).to_bytes(2, "little") + text.encode()


def _npy_member(shape: tuple[int, ...], payload: bytes) -> bytes:
    """An .npy member whose header declares FP32 ``shape``, followed by ``payload``."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


def _forged(directory: Path) -> Path:
    """100 bytes whose header claims (10**13, 4) FP32 (before: MemoryError)."""
    with zipfile.ZipFile(directory / "bomb.npz", "w") as archive:
        archive.writestr("x.npy", _npy_member((10**13, 4), b"\0" * 16))
    return directory / "bomb.npz"


def _ambiguous(directory: Path) -> Path:
    """Members ``x.npy`` and ``x``: numpy would silently read one of them."""
    with zipfile.ZipFile(directory / "dupe.npz", "w") as archive:
        archive.writestr("x.npy", _npy_member((3, 4), X.tobytes()))
        archive.writestr("x", _npy_member((3, 4), (X + 1).tobytes()))
    return directory / "dupe.npz"


def _over_cap(directory: Path) -> Path:
    """An array declaring 2 GiB + 16 bytes, its zip entry claiming 4 GB uncompressed
    (consistent, as a real deflated bomb's would be; built without writing 2 GiB)."""
    with zipfile.ZipFile(directory / "big.npz", "w") as archive:
        archive.writestr("x.npy", _npy_member((2**27 + 1, 4), b"\0" * 16))
    data = bytearray((directory / "big.npz").read_bytes())
    central = data.rindex(b"PK\x01\x02")
    data[central + 24 : central + 28] = (0xF0000000).to_bytes(4, "little")
    (directory / "big.npz").write_bytes(bytes(data))
    return directory / "big.npz"


# (model file, samples maker, fragments of the one-line error); the model is imported
# with --max-batch-size 8 into a repository that already holds "mine" version 1
BAD_SAMPLES = {
    "wrong dtype": (_write("s.npz", x=X.astype(np.float64)), ["expects datatype FP32, got FP64"]),
    "wrong shape": (_write("s.npz", x=np.ones((3, 5), np.float32)), ["expects shape"]),
    "unknown name": (_write("s.npz", x=X, extra=X), ["has no input 'extra'"]),
    "missing input": (_write("s.npz", labels=np.arange(3)), ["needs input(s) ['x']"]),
    "no rows": (_write("s.npz", x=np.ones((0, 4), np.float32)), ["holds no rows"]),
    "labels per row": (_write("s.npz", x=X, labels=np.arange(4)), ["one entry per row (3)"]),
    "labels 2-D": (_write("s.npz", x=X, labels=np.zeros((3, 1))), ["labels must be 1-D"]),
    "pickled": (_pickled, ["pickled Python objects"]),
    # a check or a measurement on NaN means nothing: refused as compress/split/calibrate do
    "NaN input": (
        _write("s.npz", x=np.where(np.arange(12).reshape(3, 4) == 5, np.nan, X).astype(np.float32)),
        ["input 'x' holds 1 NaN or infinite values (first at row 1)", "drop or fill"],
    ),
    "Inf input": (
        _write("s.npz", x=np.full((3, 4), np.inf, np.float32)),
        ["input 'x' holds 12 NaN or infinite values (first at row 0)"],
    ),
    "pickled labels": (_pickled_labels, ["pickled Python objects"]),
    "not npz": (_text("s.npz", "x,1,2,3\n"), ["is not a .npz archive", "x (FP32 [rows, 4])"]),
    "npy": (_npy, ["single .npy array"]),
    "truncated": (_truncated, ["is not a valid .npz archive"]),
    "forged header": (_forged, ["array 'x' declares 160000000000000 bytes", "forged"]),
    "ambiguous names": (_ambiguous, ["two arrays named 'x'", "'x.npy' and 'x'"]),
    "over 2 GiB": (_over_cap, ["over 2147483648 bytes (2 GiB)"]),
    "object dtype header": (
        lambda d: _write_zip(d, "x.npy", b"\x93NUMPY\x01\x00" + _object_header()),
        ["pickled Python objects"],
    ),
    "not an npy member": (
        lambda d: _write_zip(d, "x.npy", b"just text"),
        ["member 'x.npy' is not a .npy array"],
    ),
}


@pytest.fixture
def repo_with_one(files: Path) -> Path:
    """A repository holding "mine" version 1 (batched), imported in process."""
    from edgecloud.importing import import_onnx

    repo = files / "repo"
    import_onnx(ModelRepository(repo), files / "affine.onnx", "mine", max_batch_size=8)
    return repo


@pytest.mark.parametrize("kind", sorted(BAD_SAMPLES))
def test_bad_samples_are_refused_and_change_nothing(
    kind: str, files: Path, repo_with_one: Path
) -> None:
    make, fragments = BAD_SAMPLES[kind]
    samples = make(files)
    for name in ("mine", "fresh"):  # a new version of a model, and a new model
        before = tree_sha256(repo_with_one)
        result = edgecloud(
            "import", files / "affine.onnx", "--name", name, "--max-batch-size", "8",
            "--samples", samples, "--repo", repo_with_one,
        )  # fmt: skip
        refused(result, "samples file", str(samples.name), *fragments)
        assert tree_sha256(repo_with_one) == before


def _model_and_samples_refusals(files: Path) -> dict[str, tuple[list[str | Path], list[str]]]:
    failing_onnx(files / "failing.onnx")
    nonfinite_onnx(files / "nonfinite.onnx")
    np.savez(files / "three.npz", x=np.ones(3, np.float32))
    np.savez(files / "nan.npz", x=np.array([1.0, 0.0, 2.0], np.float32))
    (files / "notonnx.onnx").write_bytes(b"not a protobuf at all")
    (files / "dir.onnx").mkdir()
    (files / "blank.txt").write_text("cat\n\nbird\n")
    (files / "two.txt").write_text("cat\ndog\n")
    fixed_row_onnx(files / "fixed.onnx")
    typed_onnx(files / "bf16.onnx", TensorProto.BFLOAT16)
    typed_onnx(files / "zero.onnx", TensorProto.FLOAT, ["N", 0])
    typed_onnx(files / "huge.onnx", TensorProto.FLOAT, [2**62, 4])
    typed_onnx(files / "billion.onnx", TensorProto.FLOAT, [10**9, 4])
    typed_onnx(files / "wide.onnx", TensorProto.FLOAT, ["N", 10**9])
    return {
        "bfloat16": (
            [files / "bf16.onnx", "--name", "fresh", "--max-batch-size", "4"],
            ["input 'x' has type tensor(bfloat16), which edgecloud does not serve"],
        ),
        "zero dimension": (
            [files / "zero.onnx", "--name", "fresh"],
            ["input 'x' has a dimension of fixed size 0"],
        ),
        # a huge fixed dimension: refused by name before the check allocates anything
        "huge dimension": (
            [files / "huge.onnx", "--name", "fresh", "--max-batch-size", "0"],
            [f"input 'x' of shape [{2**62}, 4] takes", "over the 1073741824 (1 GiB)"],
        ),
        "billion rows": (
            [files / "billion.onnx", "--name", "fresh", "--max-batch-size", "0"],
            ["input 'x' of shape [1000000000, 4] takes 16000000000 bytes", "dynamic"],
        ),
        "wide row": (
            [files / "wide.onnx", "--name", "fresh", "--max-batch-size", "4"],
            ["input 'x' of shape [1, 1000000000] takes 4000000000 bytes"],
        ),
        "fixed batch": (
            [files / "fixed.onnx", "--name", "fresh", "--max-batch-size", "4"],
            ["input 'x' has fixed leading dimension 1", "--max-batch-size 0"],
        ),
        "fails on samples": (
            [files / "failing.onnx", "--name", "fresh", "--samples", files / "three.npz"],
            ["'fresh' version 1 fails on its samples", "three.npz"],
        ),
        "NaN outputs": (
            [files / "nonfinite.onnx", "--name", "fresh", "--samples", files / "nan.npz"],
            ["nan.npz gives non-finite values (NaN or Inf) in output 'y'"],
        ),
        "not ONNX": ([files / "notonnx.onnx", "--name", "fresh"], ["notonnx.onnx"]),
        "missing file": ([files / "absent.onnx", "--name", "fresh"], ["does not exist"]),
        "directory": ([files / "dir.onnx", "--name", "fresh"], ["is a directory"]),
        "missing samples": (
            [files / "affine.onnx", "--name", "mine", "--samples", files / "absent.npz"],
            ["samples file", "absent.npz does not exist"],
        ),
        "samples dir": (
            [files / "affine.onnx", "--name", "mine", "--samples", files / "dir.onnx"],
            ["samples file", "is a directory"],
        ),
        "labels count": (
            [files / "affine.onnx", "--name", "mine", "--labels", files / "two.txt"],
            ["2 labels given, but output 'y' has 3 entries"],
        ),
        "blank label": (
            [files / "affine.onnx", "--name", "mine", "--labels", files / "blank.txt"],
            ["blank.txt: line 2 is blank"],
        ),
        "missing labels": (
            [files / "affine.onnx", "--name", "mine", "--labels", files / "absent.txt"],
            ["labels file", "does not exist"],
        ),
        "other graph": (
            [files / "two.onnx", "--name", "mine"],
            ["does not match model 'mine'", "another --name"],
        ),
        "bad name": ([files / "affine.onnx", "--name", "../up"], ["model name '../up'"]),
    }


REFUSALS = [
    "fixed batch", "bfloat16", "zero dimension", "huge dimension", "billion rows", "wide row",
    "fails on samples", "NaN outputs", "not ONNX", "missing file", "directory",
    "missing samples", "samples dir", "labels count", "blank label", "missing labels",
    "other graph", "bad name",
]  # fmt: skip


@pytest.mark.parametrize("kind", REFUSALS)
def test_refusals_are_one_line_and_change_nothing(
    kind: str, files: Path, repo_with_one: Path
) -> None:
    args, fragments = _model_and_samples_refusals(files)[kind]
    before = tree_sha256(repo_with_one)
    refused(edgecloud("import", *args, "--repo", repo_with_one), *fragments)
    assert tree_sha256(repo_with_one) == before
    assert not (repo_with_one / "fresh").exists()


def test_add_version_checks_samples_from_any_source(files: Path) -> None:
    """samples=, extra_files path or bytes: checked before anything is written."""
    repo = ModelRepository(files / "repo")
    repo.add_version("two-input", files / "two.onnx", config=two_input_config())
    before = tree_sha256(repo.root)
    np.savez(files / "rows.npz", a=np.ones((3, 2), np.float32), b=np.ones((2, 2), np.int64))
    np.savez(files / "cast.npz", a=np.ones((3, 2), np.float32), b=np.ones((3, 2), np.int32))
    for source in ("rows.npz", "cast.npz"):
        with pytest.raises(ConfigError, match=re.escape(source)):
            repo.add_version("two-input", files / "two.onnx", samples=files / source)
        with pytest.raises(ConfigError, match="samples file"):
            repo.add_version(
                "two-input", files / "two.onnx", extra_files={"samples.npz": files / source}
            )
        with pytest.raises(ConfigError, match="samples file"):
            repo.add_version(
                "two-input",
                files / "two.onnx",
                extra_files={"samples.npz": (files / source).read_bytes()},
            )
    assert tree_sha256(repo.root) == before
    np.savez(files / "good.npz", a=np.ones((3, 2), np.float32), b=np.ones((3, 2), np.int64))
    added = repo.add_version("two-input", files / "two.onnx", samples=files / "good.npz")
    assert added.files["samples.npz"] == sha256_file(files / "good.npz")
    assert data_for(added).rows == 3


def test_unbatched_samples_rows_and_byte_order(files: Path) -> None:
    """An unbatched model's rows are its inputs' leading dimension; '>f4' is FP32, made native."""
    config = affine_config("u", max_batch_size=0).model_copy(update={"labels": None})
    config = config.model_copy(
        update={"inputs": [config.inputs[0].model_copy(update={"shape": (-1, 4)})]}
    )
    np.savez(files / "be.npz", x=np.ones((2, 4), ">f4"), labels=np.array(["a", "b"]))
    samples = load_samples(files / "be.npz", config)
    assert samples.rows == 2 and samples.inputs["x"].dtype == np.dtype("float32")
    assert samples.inputs["x"].dtype.isnative


def test_readme_import_block_runs(files: Path) -> None:
    text = (ROOT / "README.md").read_text()
    (block,) = [
        b
        for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
        if "edgecloud import my.onnx" in b
    ]
    affine_onnx(files / "my.onnx")
    script = "set -euo pipefail\n" + block.replace("python -c", f"{sys.executable} -c")
    script = script.replace("edgecloud import", f"{sys.executable} -m edgecloud.cli import")
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=files,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    expected = re.search(r"# (imported .*)", block)
    assert expected is not None and result.stdout.strip() == expected.group(1)
    config = yaml.safe_load((files / "model-repo" / "my-model" / "config.yaml").read_text())
    assert config["labels"] == ["cat", "dog", "bird"]


def test_samples_run_max_batch_size_rows_at_a_time_and_domains_survive(files: Path) -> None:
    """20 rows through a model of max_batch_size 8; a re-import keeps the config's
    declared value domains (the graph cannot say them, so they are not compared)."""
    from edgecloud.importing import import_onnx

    repo = ModelRepository(files / "repo")
    config = affine_config("mine", max_batch_size=8)
    spec = config.inputs[0].model_copy(update={"min_value": -10.0, "max_value": 10.0})
    repo.add_version(
        "mine", files / "affine.onnx", config=config.model_copy(update={"inputs": [spec]})
    )
    np.savez(files / "many.npz", x=np.ones((20, 4), np.float32))
    imported = import_onnx(repo, files / "affine.onnx", "mine", samples=files / "many.npz")
    assert imported.rows == 20 and imported.version.version == 2
    assert repo.config("mine").inputs[0].max_value == 10.0
    assert data_for(imported.version).rows == 20


def test_killed_during_the_check_leaves_nothing_visible(files: Path, repo_with_one: Path) -> None:
    """SIGKILL after the version is written, before its samples ran: other processes
    never see it, and the next reader rolls it back to the tree as before."""
    before = tree_sha256(repo_with_one)
    env = {
        "EDGECLOUD_TEST_KILL_AFTER_VERSIONS": "1",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    for name in ("mine", "fresh"):
        result = subprocess.run(
            [sys.executable, "-m", "edgecloud.cli", "import", files / "affine.onnx", "--name",
             name, "--samples", files / "samples.npz", "--repo", repo_with_one],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert result.returncode == -9, result.stderr
        repository = ModelRepository(repo_with_one)
        assert repository.model_names() == ["mine"] and repository.versions("mine") == [1]
        assert [s.name for s in repository.status()] == ["mine"]  # rolls the record back
        assert tree_sha256(repo_with_one) == before


def test_inputs_built_from_a_config_are_bounded(tmp_path: Path) -> None:
    """Warm-up zeros and random check/timing rows are built from the config: a huge fixed
    dimension is refused by name (random rows) or skipped (best-effort warm-up), never
    allocated."""
    from edgecloud.backends.local import LocalBackend
    from edgecloud.compress.evaluate import random_inputs

    path = typed_onnx(tmp_path / "huge.onnx", TensorProto.FLOAT, [10**9, 4])
    config = config_from_onnx(path, "huge", max_batch_size=0)
    with pytest.raises(ConfigError, match=r"input 'x' of shape \[1000000000, 4\] takes 16"):
        random_inputs(config)
    repo = ModelRepository(tmp_path / "repo")
    repo.add_version("huge", path, config=config)
    with LocalBackend(repo) as local:
        local.load("huge")  # loads cold: the 16 GB warm-up request is not built
    wide = config_from_onnx(typed_onnx(tmp_path / "wide.onnx", TensorProto.FLOAT, ["N", 10**6]),
                            "wide", max_batch_size=1024)  # fmt: skip
    assert random_inputs(wide, batch=8)["x"].shape == (8, 10**6)  # 32 MB: fine
    with pytest.raises(ConfigError, match=r"shape \[512, 1000000\] takes 2048000000 bytes"):
        random_inputs(wide, batch=512)
