"""What a deployment file declares that cannot work is refused before the first request:
a cascade scoring an output that is not probabilities (logits), a ``models:`` entry for
a model the tree never runs (a typo), and a ``load`` that only reads the file leaves no
outbox behind. Models are the tiny ``affine`` ONNX of tests/models.py: ``y`` logits,
``z`` their softmax."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import edgecloud
from edgecloud import ConfigError, InferRequest, ModelRepository

from .models import affine_config, affine_onnx

X = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32) * 3


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    root = tmp_path_factory.mktemp("checks")
    onnx_file = affine_onnx(root / "affine.onnx")
    np.savez(root / "samples.npz", x=X)
    repo = ModelRepository(root / "repo")
    for name in ("small", "large"):  # with samples: check_ready runs them
        repo.add_version(name, onnx_file, config=affine_config(name), samples=root / "samples.npz")
    for name in ("bare-small", "bare-large"):  # without: only the request can tell
        repo.add_version(name, onnx_file, config=affine_config(name))
    return repo


def write(tmp_path: Path, repo: ModelRepository, root: Any, **top: Any) -> Path:
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump({"repository": str(repo.root), **top, "root": root}))
    return path


def cascade(output: str, confidence: str = "max_prob", prefix: str = "") -> dict[str, Any]:
    return {"cascade": {"small": "local", "large": "local", "small_model": f"{prefix}small",
                        "large_model": f"{prefix}large", "threshold": 0.5, "output": output,
                        "confidence": confidence}}  # fmt: skip


# ---------------------------------------------------------------- cascade output


@pytest.mark.parametrize("confidence", ["max_prob", "margin", "entropy"])
def test_a_cascade_on_probabilities_is_ready_and_routes(
    repo: ModelRepository, tmp_path: Path, confidence: str
) -> None:
    with edgecloud.load(write(tmp_path, repo, cascade("z", confidence)), ready=True) as tree:
        answer = tree.infer(InferRequest("small", {"x": X}))
    assert answer.outputs["z"].shape == (6, 3)


@pytest.mark.parametrize("confidence", ["max_prob", "margin", "entropy"])
def test_a_cascade_on_logits_is_refused_at_check_ready_from_the_samples(
    repo: ModelRepository, tmp_path: Path, confidence: str
) -> None:
    path = write(tmp_path, repo, cascade("y", confidence))
    refused = r"root\.cascade\.output: model 'small'.*'y' is not class probabilities on its "
    with pytest.raises(ConfigError, match=refused + r"samples.*outside \[0, 1\].*set output:"):
        edgecloud.load(path, ready=True)


def test_a_cascade_on_logits_without_samples_fails_the_request_not_silently(
    repo: ModelRepository, tmp_path: Path
) -> None:
    path = write(tmp_path, repo, cascade("y", "entropy", prefix="bare-"))
    refused = r"output 'y' of 'bare-small' is not class probabilities.*entropy confidence "
    # nothing to run at check_ready (the config is fine): the first request is refused
    with edgecloud.load(path, ready=True) as tree, pytest.raises(ConfigError, match=refused):
        tree.infer(InferRequest("bare-small", {"x": X}))


@pytest.mark.parametrize(
    ("output", "message"),
    [("probs", r"has no output 'probs' \(outputs: y, z\)")],
)
def test_a_cascade_output_the_model_lacks_is_refused_at_check_ready(
    repo: ModelRepository, tmp_path: Path, output: str, message: str
) -> None:
    path = write(tmp_path, repo, cascade(output, prefix="bare-"))
    with pytest.raises(ConfigError, match=r"root\.cascade\.output: model 'bare-small' " + message):
        edgecloud.load(path, ready=True)


@pytest.mark.parametrize("field", ["output", "small_model", "large_model"])
def test_an_empty_name_is_refused_at_load_not_read_as_the_default(
    repo: ModelRepository, tmp_path: Path, field: str
) -> None:
    spec = cascade("z", prefix="bare-")
    spec["cascade"][field] = ""
    path = write(tmp_path, repo, spec)
    with pytest.raises(ConfigError, match=rf"root\.cascade\.{field}"):
        edgecloud.load(path)


# ---------------------------------------------------------------- models: entries

ENTRY = {"inputs": {"x": {"columns": "0:4"}}}


@pytest.mark.parametrize(
    "root",
    [
        cascade("z"),
        {"fallback": {"primary": cascade("z"), "secondary": cascade("z", prefix="bare-")}},
        {"guard": {"inner": {"cascade": {**cascade("z")["cascade"], "large": "cloud"}}}},
    ],
)
def test_an_entry_for_a_model_a_named_tree_never_runs_is_refused_at_load(
    repo: ModelRepository, tmp_path: Path, root: Any
) -> None:
    remotes = {"cloud": {"url": "http://127.0.0.1:9"}}
    path = write(tmp_path, repo, root, remotes=remotes, models={"small": ENTRY, "nosuch": ENTRY})
    with pytest.raises(ConfigError, match=r"models\.nosuch: no node of the tree runs model "
                       r"'nosuch' \(it runs: .*small.*\); fix the name"):  # fmt: skip
        edgecloud.load(path)
    assert not (tmp_path / "outbox.db").exists()


def test_an_entry_a_pass_through_tree_cannot_run_is_refused_at_check_ready(
    repo: ModelRepository, tmp_path: Path
) -> None:
    path = write(tmp_path, repo, "local", models={"small": ENTRY, "nosuch": ENTRY})
    edgecloud.load(path).close()  # any model may be requested: the repository decides
    with pytest.raises(ConfigError, match=r"models\.nosuch: model 'nosuch' is not in .*repo "
                       r"\(models: bare-large, bare-small, large, small\)"):  # fmt: skip
        edgecloud.load(path, ready=True)


def test_entries_the_tree_or_the_repository_runs_pass(
    repo: ModelRepository, tmp_path: Path
) -> None:
    mixed = {"fallback": {"primary": cascade("z"), "secondary": "local"}}
    path = write(tmp_path, repo, mixed, models={"small": ENTRY, "bare-small": ENTRY})
    edgecloud.load(path, ready=True).close()


def test_entries_of_a_pass_through_remote_are_the_servers_to_check(
    repo: ModelRepository, tmp_path: Path
) -> None:
    """A remote serves models this device does not hold: an entry for one is not a typo."""
    remotes = {"cloud": {"url": "http://127.0.0.1:9"}}
    path = write(tmp_path, repo, "cloud", remotes=remotes, models={"on-server": ENTRY})
    edgecloud.load(path, ready=True).close()


# ---------------------------------------------------------------- the outbox


def test_loading_a_file_creates_no_queue_and_serving_opens_it(
    repo: ModelRepository, tmp_path: Path
) -> None:
    """Before: ``edgecloud.load`` (to inspect a file) created outbox.db and its lock and
    reserve files. Now the first use opens it (with every check an Outbox makes at
    open); ``ready=True`` (``edgecloud edge``) opens it before the first request."""
    path = write(tmp_path, repo, "local", outbox={"path": "queue/outbox.db"})
    with edgecloud.load(path) as tree:
        assert tree.outbox is not None and tree.outbox.items() == []  # opened by use
    assert (tmp_path / "queue" / "outbox.db").exists()
    deferring = {"cascade": {**cascade("z")["cascade"], "defer_failed_escalations": True}}
    other = write(tmp_path / "queue", repo, deferring, outbox={"path": "other.db"})
    edgecloud.load(other).close()
    assert not list((tmp_path / "queue").glob("other.db*"))
    edgecloud.load(other, ready=True).close()
    assert (tmp_path / "queue" / "other.db").exists()


@pytest.mark.parametrize(
    "root",
    [
        "local",
        cascade("z"),  # a cascade that does not defer its failed escalations
        {"fallback": {"primary": "local", "secondary": cascade("z")}},
    ],
)
def test_serving_a_tree_that_never_queues_creates_no_outbox_files(
    repo: ModelRepository, tmp_path: Path, root: Any
) -> None:
    """Before: ``load(ready=True)`` created obx.db, -lock, a 640 KB -reserve, -wal and
    -shm though no node could ever put an item there."""
    path = write(tmp_path, repo, root, outbox={"path": "obx.db"})
    with edgecloud.load(path, ready=True) as tree:
        assert not list(tmp_path.glob("obx.db*"))
        tree.infer(InferRequest("small", {"x": X[:2]}))
        assert tree.outbox is not None and len(tree.outbox) == 0  # the gateway's drain loop
    assert not list(tmp_path.glob("obx.db*"))


def test_serving_opens_an_outbox_left_with_items_to_drain(
    repo: ModelRepository, tmp_path: Path
) -> None:
    """A file an earlier deployment left is opened (and checked) at ready, to drain."""
    path = write(tmp_path, repo, "local", outbox={"path": "obx.db"})
    with edgecloud.load(path) as tree:
        assert tree.outbox is not None and tree.outbox.stats()  # opened by use: created
    (tmp_path / "obx.db").write_bytes(b"not a database" * 100)
    edgecloud.load(path, ready=True).close()  # opened at ready: the damage is quarantined
    assert len(list(tmp_path.glob("obx.db.corrupt-*"))) == 1


def test_an_outbox_that_cannot_open_fails_ready_not_the_first_request(
    repo: ModelRepository, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("not a directory")
    deferring = {"cascade": {**cascade("z")["cascade"], "defer_failed_escalations": True}}
    path = write(tmp_path, repo, deferring, outbox={"path": "file/outbox.db"})
    edgecloud.load(path).close()  # reading the file is fine
    with pytest.raises(edgecloud.EdgecloudError, match="outbox .*file/outbox.db"):
        edgecloud.load(path, ready=True)


def test_the_cascade_probe_runs_an_unbatched_models_samples_as_one_request(
    tmp_path: Path,
) -> None:
    # an unbatched model with a scalar input (a temperature, a sample rate) or a state with
    # its own leading axis has no rows to slice: its sample request is run whole
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecloud.importing import import_onnx

    weight = numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Mul", ["z", "t"], ["s"]),
         helper.make_node("Softmax", ["s"], ["p"], axis=-1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 3])],
        initializer=[weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "scal.onnx")
    np.savez(tmp_path / "scal.npz", x=X, t=np.array(1.0, np.float32))
    repo = ModelRepository(tmp_path / "repo")
    import_onnx(repo, tmp_path / "scal.onnx", "scal", samples=tmp_path / "scal.npz",
                max_batch_size=0)  # fmt: skip
    tree = {"cascade": {"small": "local", "large": "local", "small_model": "scal",
                        "large_model": "scal", "threshold": 0.5, "output": "p"}}  # fmt: skip
    request = {"x": X, "t": np.array(1.0, np.float32)}
    with edgecloud.load(write(tmp_path, repo, tree), ready=True) as loaded:
        assert loaded.infer(InferRequest("scal", request)).outputs["p"].shape == (6, 3)
