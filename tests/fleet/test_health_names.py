"""The health check compares the class names as served, whatever changed in the labels.

Real onnxruntime sessions (``LocalBackend.open``) of versions in a real
``ModelRepository``: the same graph under other ``labels`` (rotated and one
renamed, one renamed, removed, added, another number of classes), and a
regression output, which keeps the cosine comparison.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecloud.backends.local import LoadedModel, LocalBackend
from edgecloud.fleet.health import HealthPolicy, check_health
from edgecloud.repository import ModelRepository
from edgecloud.tensors import TensorSpec

from .agent_fixtures import classifier_config, classifier_onnx, samples_npz

NAMES = ["ant", "bee", "cat"]


def _open(tmp_path: Path, *versions: tuple[bytes, list[str] | None, bytes]) -> list[LoadedModel]:
    """Each version opened as it is added (the model's config is the last added version's,
    as on a device, where the agent writes each version's own config before opening it)."""
    repo = ModelRepository(tmp_path)
    local = LocalBackend(repo, intra_op_threads=1)
    opened = []
    for number, (model, labels, samples) in enumerate(versions, start=1):
        config = classifier_config().model_copy(update={"labels": labels})
        repo.add_version("clf", model, config=config, version=number,
                         extra_files={"samples.npz": samples})  # fmt: skip
        opened.append(local.open("clf", number))
    return opened


def _unlabelled() -> bytes:
    out = io.BytesIO()
    np.savez(out, x=np.random.default_rng(1).standard_normal((32, 4)).astype(np.float32))
    return out.getvalue()


@pytest.mark.parametrize("samples", [samples_npz(), _unlabelled()], ids=["labelled", "unlabelled"])
@pytest.mark.parametrize(
    ("labels", "ok", "match"),
    [
        (NAMES, True, "agree with the previous version on 1.0000"),
        (["bee", "cat", "one"], False, r"agree .* on 0\.0000 of the samples \(< min_agreement"),
        (["ant", "bee", "cow"], False, r"agree .* on 0\.[0-9]+ of the samples \(< min_agreement"),
        (None, False, r"labels removed .* \(min_agreement 0 accepts it\)"),
        (["ant", "bee", "cat", "dog"], False, "labels name 4 classes, the first output scores 3"),
    ],
    ids=["same", "rotated-and-renamed", "one-renamed", "removed", "one-too-many"],
)  # fmt: skip
def test_class_names_are_compared_as_served(
    tmp_path: Path, samples: bytes, labels: list[str] | None, ok: bool, match: str
) -> None:
    one, two = _open(tmp_path, (classifier_onnx(1), NAMES, samples),
                     (classifier_onnx(2), labels, samples))  # fmt: skip
    result = check_health(two, previous=one)
    assert result.ok is ok, result
    assert "not compared" not in result.detail
    assert re.search(match, result.detail), result.detail


def test_one_renamed_class_costs_only_its_rows(tmp_path: Path) -> None:
    one, two = _open(tmp_path, (classifier_onnx(1), NAMES, samples_npz()),
                     (classifier_onnx(2), ["ant", "bee", "cow"], samples_npz()))  # fmt: skip
    served = one.run({"x": np.load(io.BytesIO(samples_npz()))["x"]}, None, 32)["scores"]
    cats = float((served.argmax(axis=1) == 2).mean())
    result = check_health(two, previous=one)
    assert result.agreement == pytest.approx(1.0 - cats)
    relaxed = check_health(two, previous=one, policy=HealthPolicy(min_agreement=1.0 - cats))
    assert relaxed.ok, relaxed


def test_labels_added_fail_unless_min_agreement_is_zero(tmp_path: Path) -> None:
    one, two = _open(tmp_path, (classifier_onnx(1), None, samples_npz()),
                     (classifier_onnx(2), NAMES, samples_npz()))  # fmt: skip
    added = check_health(two, previous=one)
    assert not added.ok and added.agreement == 0.0
    assert "labels added" in added.detail and "min_agreement 0" in added.detail
    accepted = check_health(two, previous=one, policy=HealthPolicy(min_agreement=0.0))
    assert accepted.ok and "labels added" in accepted.detail
    neither = _open(tmp_path / "n", (classifier_onnx(1), None, samples_npz()),
                    (classifier_onnx(2), None, samples_npz()))  # fmt: skip
    plain = check_health(neither[1], previous=neither[0])
    assert plain.ok and plain.agreement is None and plain.detail.startswith("accuracy 1.0000")


def _four_classes() -> bytes:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["scores"])], "four",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "W")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_another_number_of_classes_fails_naming_the_setting(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    three = classifier_config().model_copy(update={"labels": NAMES})
    repo.add_version("clf", classifier_onnx(1), config=three, version=1,
                     extra_files={"samples.npz": _unlabelled()})  # fmt: skip
    local = LocalBackend(repo, intra_op_threads=1)
    previous = local.open("clf", 1)
    scores = TensorSpec(name="scores", datatype="FP32", shape=[4])
    four = classifier_config().model_copy(update={"labels": [*NAMES, "dog"], "outputs": [scores]})
    repo.add_version("clf", _four_classes(), config=four, version=2,
                     extra_files={"samples.npz": _unlabelled()})  # fmt: skip
    result = check_health(local.open("clf", 2), previous=previous)
    assert not result.ok and "number of classes changed (3 -> 4)" in result.detail
    assert "min_agreement 0" in result.detail


def _regression(scale: float) -> bytes:
    w = np.random.default_rng(0).standard_normal((4, 1)).astype(np.float32) * scale
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "reg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(w, "W")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_regression_without_labels_still_compares_by_cosine(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    y = TensorSpec(name="y", datatype="FP32", shape=[1])
    config = classifier_config("reg").model_copy(update={"outputs": [y]})
    for version, scale in ((1, 1.0), (2, 1.001), (3, -1.0)):
        repo.add_version("reg", _regression(scale), config=config,
                         version=version, extra_files={"samples.npz": _unlabelled()})  # fmt: skip
    local = LocalBackend(repo, intra_op_threads=1)
    one, two, flipped = (local.open("reg", v) for v in (1, 2, 3))
    close = check_health(two, previous=one)
    assert close.ok and close.cosine == pytest.approx(1.0) and close.agreement is None
    assert "class names" not in close.detail
    far = check_health(flipped, previous=one)
    assert not far.ok and "cosine" in far.detail
