"""Pruning and distillation of torch modules given as factories (tests/compress/factories.py).

Models: a small CNN and an MLP built here (exported with edgecloud.export.from_torch),
and the zoo's resnet18-like. Few epochs, tiny data: these check the mechanics
(channels really removed, names and shapes kept, refusals), not accuracy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgecloud import ConfigError, ModelRepository
from edgecloud.compress import compress
from edgecloud.export import from_torch

from ..trees import tree_sha256
from . import factories

pytest.importorskip("torch_pruning")
FACTORIES = Path(factories.__file__)
RNG = np.random.default_rng(0)


def _images(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Images FP32 [rows, 1, 8, 8]; label: which third of the image is brightest."""
    x = RNG.standard_normal((rows, 1, 8, 8)).astype(np.float32)
    thirds = np.stack([x[:, 0, :, :3].mean((1, 2)), x[:, 0, :, 3:5].mean((1, 2)),
                       x[:, 0, :, 5:].mean((1, 2))], axis=1)  # fmt: skip
    return x, thirds.argmax(axis=1).astype(np.int64)


@pytest.fixture
def cnn(tmp_path: Path) -> tuple[ModelRepository, Path, Path]:
    """A repository with the small CNN as 'cnn', and train / validation files."""
    repo = ModelRepository(tmp_path / "repo")
    x, y = _images(160)
    np.savez(tmp_path / "train.npz", image=x[:128], labels=y[:128])
    np.savez(tmp_path / "val.npz", image=x[128:], labels=y[128:])
    from_torch(factories.small_cnn(), x[:4], repo, "cnn", input_names=["image"],
               output_names=["logits"], max_batch_size=64)  # fmt: skip
    return repo, tmp_path / "train.npz", tmp_path / "val.npz"


def _conv_channels(path: Path) -> list[int]:
    model = onnx.load(str(path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [int(weights[n.input[1]].shape[0]) for n in model.graph.node if n.op_type == "Conv"]


def _signature(path: Path) -> list[tuple[str, int, list[object]]]:
    graph = onnx.load(str(path)).graph
    return [
        (v.name, v.type.tensor_type.elem_type,
         [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
        for v in [*graph.input, *graph.output]
    ]  # fmt: skip


def test_pruning_a_cnn_removes_conv_channels_and_keeps_inputs_and_outputs(
    cnn: tuple[ModelRepository, Path, Path],
) -> None:
    repo, train, val = cnn
    options = {"module": "tests.compress.factories:small_cnn", "data": train, "amount": 0.5,
               "epochs": 3, "batch_size": 32}  # fmt: skip
    result = compress(repo, "cnn", "prune", options=options, data=val)
    parent = repo.get("cnn", 1, served_only=False).model_path
    assert _conv_channels(parent) == [16, 32]
    assert _conv_channels(result.version.model_path) == [8, 16]  # conv channels, not only Linear
    assert _signature(result.version.model_path) == _signature(parent)  # names, dtypes, batch axis
    params = result.parameters
    assert params["channels"] == {"features.0": [16, 8], "features.3": [32, 16]}
    assert (
        params["kept_whole"] == ["head"]
        and params["parameters_after"] < 0.4 * params["parameters_before"]
    )
    assert params["fine_tune"]["targets"] == "labels" and params["fine_tune"]["rows"] == 128
    e = result.evaluation
    assert e.data == str(val) and e.accuracy is not None and e.parent_accuracy is not None
    assert e.size_ratio < 0.5


def test_pruning_resnet18_like_prunes_its_residual_stages(
    zoo_repo: ModelRepository, tmp_path: Path
) -> None:
    repo = ModelRepository(tmp_path / "repo")
    shutil.copytree(zoo_repo.root / "resnet18-like", repo.root / "resnet18-like")
    images = RNG.standard_normal((2, 3, 224, 224)).astype(np.float32)
    np.savez(tmp_path / "images.npz", image=images)  # no labels: fine-tune on the parent
    options = {"module": f"{FACTORIES}:resnet18_like", "data": tmp_path / "images.npz",
               "amount": 0.25, "epochs": 1, "batch_size": 2}  # fmt: skip
    result = compress(repo, "resnet18-like", "prune", options=options, data=tmp_path / "images.npz")
    parent = repo.get("resnet18-like", 1, served_only=False).model_path
    before, after = _conv_channels(parent), _conv_channels(result.version.model_path)
    assert len(after) == len(before) == 20
    assert all(a == b - b // 4 for a, b in zip(after, before, strict=True)), after
    assert _signature(result.version.model_path) == _signature(parent)
    assert result.parameters["kept_whole"] == ["10"]  # the 1000-way Linear head
    assert result.parameters["fine_tune"]["targets"] == "the parent's outputs"


@pytest.fixture
def mlp(tmp_path: Path) -> tuple[ModelRepository, Path]:
    """The factories' MLP as 'mlp'; data.npz: 400 rows of 20 features, no labels."""
    repo = ModelRepository(tmp_path / "repo")
    x = RNG.standard_normal((400, 20)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x)
    from_torch(factories.mlp(), x[:8], repo, "mlp", input_names=["x"],
               output_names=["probabilities"], max_batch_size=512)  # fmt: skip
    return repo, tmp_path / "data.npz"


def test_distilling_an_mlp_without_labels_learns_the_teachers_outputs(
    mlp: tuple[ModelRepository, Path],
) -> None:
    repo, data = mlp
    options = {"module": "tests.compress.factories:mlp_student", "data": data, "epochs": 40,
               "lr": 1e-2, "temperature": 1.0}  # fmt: skip
    result = compress(repo, "mlp", "distill", options=options, data=data)
    params = result.parameters
    assert params["student_parameters"] == 20 * 8 + 8 + 8 * 4 + 4
    assert params["teacher_parameters"] > 10 * params["student_parameters"]
    assert params["alpha_soft"] == 1.0 and params["training"]["targets"] == "the parent's outputs"
    e = result.evaluation
    assert e.accuracy is None and e.top1_agreement is not None and e.top1_agreement > 0.7
    parent = repo.get("mlp", 1, served_only=False).model_path
    assert _signature(result.version.model_path) == _signature(parent)


def test_pruning_an_mlp_keeps_its_softmax_output(mlp: tuple[ModelRepository, Path]) -> None:
    repo, data = mlp
    options = {"module": "tests.compress.factories:mlp", "data": data, "epochs": 2}
    result = compress(repo, "mlp", "prune", options=options, data=data)
    assert result.parameters["channels"] == {"0": [64, 32], "2": [64, 32]}
    assert result.evaluation.top1_agreement is not None


@pytest.mark.parametrize(
    ("method", "module", "expected"),
    [
        ("prune", "tests.compress.factories:mlp_student", "does not reproduce 'mlp' version 1"),
        ("prune", "tests.compress.factories:absent", "has no function 'absent'"),
        ("prune", "tests.compress.no_such_module:f", "cannot import 'tests.compress.no_such"),
        ("prune", "tests.compress.factories:not_a_module", "returned str, not a torch.nn.Module"),
        ("prune", "no-colon", "option 'module': Value error, write it as package.module:fun"),
        ("prune", "/absent/file.py:f", "/absent/file.py is not a file"),
        ("distill", "tests.compress.factories:wrong_student", "outputs have shapes [[5]] per row"),
        ("distill", "tests.compress.factories:small_cnn", "the student does not run"),
        ("distill", "tests.compress.factories:batch_mixing_student", "is not row-independent"),
    ],
)
def test_a_module_that_does_not_fit_is_refused_and_nothing_changes(
    mlp: tuple[ModelRepository, Path], method: str, module: str, expected: str
) -> None:
    repo, data = mlp
    before = tree_sha256(repo.root)
    with pytest.raises(ConfigError) as info:
        compress(repo, "mlp", method, options={"module": module, "data": data, "epochs": 1},
                 data=data)  # fmt: skip
    assert expected in info.value.message
    assert "\n" not in info.value.message
    assert tree_sha256(repo.root) == before


def test_training_methods_say_which_option_is_wrong(mlp: tuple[ModelRepository, Path]) -> None:
    repo, data = mlp
    cases = [
        ({"data": data}, "prune: option 'module': Field required"),
        ({"module": "a.b:c", "amount": 1.5}, "option 'amount': Input should be less than 1"),
        ({"module": "a.b:c", "epochs": 0}, "option 'epochs': Input should be greater than or"),
        ({"module": "a.b:c", "lr": float("nan")}, "option 'lr': Input should be a finite number"),
        ({"module": "a.b:c", "temperature": 2.0}, "prune does not take 'temperature' (it takes"),
    ]
    for options, expected in cases:
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
            compress(repo, "mlp", "prune", options=options, data=data)
    with pytest.raises(ConfigError, match=r"pass --data FILE.npz with inputs named x \(FP32"):
        compress(repo, "mlp", "prune", options={"module": "tests.compress.factories:mlp"},
                 data=data)  # fmt: skip
    with pytest.raises(ConfigError, match="pass --data FILE.npz"):  # training data first
        compress(repo, "mlp", "prune", options={"module": "tests.compress.factories:mlp"})
    with pytest.raises(ConfigError, match="pass --val FILE.npz"):  # then evaluation data
        compress(repo, "mlp", "prune", options={"module": "tests.compress.factories:mlp",
                                                 "data": data})  # fmt: skip
    wrong = data.parent / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 20), np.float32), labels=np.array([0, 1, 2, 9]))
    with pytest.raises(ConfigError, match=r"class indices in \[0, 4\) \(4 classes\), got 9"):
        compress(repo, "mlp", "prune", options={"module": "tests.compress.factories:mlp",
                                                 "data": wrong}, data=data)  # fmt: skip
    np.savez(wrong, x=np.zeros((4, 20), np.float32), labels=np.array([0, 1, 0.5, 1]))
    with pytest.raises(ConfigError, match=r"labels are floats \(float64\); give integer"):
        compress(repo, "mlp", "prune", options={"module": "tests.compress.factories:mlp",
                                                 "data": wrong}, data=data)  # fmt: skip
    nan = np.zeros((4, 20), np.float32)
    nan[2, 3] = np.nan
    np.savez(wrong, x=nan)
    with pytest.raises(
        ConfigError,
        match=r"input 'x' holds 1 NaN or infinite values \(first at row 2\); "
        r"training needs finite inputs",
    ):
        compress(repo, "mlp", "prune", options={"module": "tests.compress.factories:mlp",
                                                 "data": wrong}, data=data)  # fmt: skip
    x = np.zeros((4, 20), np.float32)
    from_torch(factories.mlp(), x, repo, "whole", input_names=["x"],
               output_names=["probabilities"], max_batch_size=0)  # fmt: skip
    np.savez(wrong, x=x)
    with pytest.raises(ConfigError, match="'whole' has no batch dimension"):
        compress(repo, "whole", "distill", options={"module": "tests.compress.factories:mlp",
                                                    "data": wrong}, data=wrong)  # fmt: skip


def test_cli_prunes_with_a_factory_file_and_refuses_flags_the_method_does_not_take(
    cnn: tuple[ModelRepository, Path, Path],
) -> None:
    repo, train, val = cnn

    def cli(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgecloud.cli", "compress", "cnn", "--repo", str(repo.root),
             *map(str, args)], capture_output=True, text=True, timeout=300,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip

    ok = cli("-m", "prune", "--module", f"{FACTORIES}:small_cnn", "--data", train, "--val", val,
             "--amount", "0.25", "--epochs", "1", "--ignore", "features.0")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert _conv_channels(repo.root / "cnn" / "2" / "model.onnx") == [16, 24]  # first kept
    before = tree_sha256(repo.root)
    for args, expected in [
        (("-m", "int8-dynamic", "--amount", "0.5", "--data", val),
         "int8-dynamic does not take --amount (it takes --per-channel)"),
        (("-m", "fp16", "--val", val), "fp16 does not take --val (prune and distill do)"),
        (("-m", "prune", "--data", train), "prune: option --module: Field required"),
        (("-m", "prune", "--module", "a.b:c", "--alpha", "0.5"), "prune does not take --alpha"),
        (("-m", "int4-weight", "--block-size", "24", "--data", val),
         "int4-weight: option --block-size: Value error, must be a power of two"),
        (("-m", "int8-dynamic",), "carries no samples: pass --data FILE.npz"),
    ]:  # fmt: skip
        bad = cli(*args)
        assert bad.returncode == 1 and expected in bad.stderr, (args, bad.stderr)
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert tree_sha256(repo.root) == before


def test_pruning_the_zoos_digits_model_with_a_factory_that_reads_its_onnx(
    zoo_repo: ModelRepository, tmp_path: Path
) -> None:
    """bench/_digits_modules.py:mlp_from_onnx takes the parent's ONNX path; labelled data
    written here from the zoo's digits splits (the version carries no samples here)."""
    from edgecloud.zoo import datasets

    repo = ModelRepository(tmp_path / "repo")
    shutil.copytree(zoo_repo.root / "digits-large", repo.root / "digits-large")
    name = repo.config("digits-large").inputs[0].name
    for split in ("train", "test"):
        data = datasets.digits(split)
        np.savez(tmp_path / f"{split}.npz", **{name: data.x, "labels": data.y})
    factory = Path(__file__).parents[2] / "bench" / "_digits_modules.py"
    options = {"module": f"{factory}:mlp_from_onnx", "data": tmp_path / "train.npz",
               "amount": 0.5, "epochs": 8}  # fmt: skip
    result = compress(repo, "digits-large", "prune", options=options,
                      data=tmp_path / "test.npz", tolerance=2.0)  # fmt: skip
    assert result.parameters["channels"] == {"0": [256, 128], "2": [256, 128]}
    e = result.evaluation
    assert e.accuracy_drop_points is not None and e.accuracy_drop_points <= 2.0
    assert e.size_ratio < 0.5
