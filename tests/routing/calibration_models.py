"""Two classifiers and a data set made in the test (scikit-learn, exported as ONNX by hand).

``make_classification`` with 20 features (the first 8 informative) and 3
classes; ``small`` is a logistic regression that looks at 4 of the features
(zero weights on the rest, so both models take the same ``features`` input;
about 69 % right on val), ``large`` one on all 20 (about 91 %). Each ONNX
graph: ``probabilities = softmax(features @ W + b)`` and ``logits = features @ W + b``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecloud import ModelConfig, ModelRepository, TensorSpec

FEATURES = 20
CLASSES = ("ant", "bee", "cat")
SMALL_FEATURES = 4


def linear_onnx(path: Path, weights: np.ndarray, bias: np.ndarray, name: str = "features") -> Path:
    """``name`` FP32 [batch, rows of weights] -> ``logits``, ``probabilities`` FP32 [batch, 3]."""
    classes = weights.shape[1]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [name, "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "linear",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", weights.shape[0]])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
        ],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def linear_config(name: str, width: int = FEATURES, input_name: str = "features") -> ModelConfig:
    return ModelConfig(
        name=name,
        max_batch_size=64,
        inputs=[TensorSpec(name=input_name, datatype="FP32", shape=(width,))],
        outputs=[
            TensorSpec(name="logits", datatype="FP32", shape=(len(CLASSES),)),
            TensorSpec(name="probabilities", datatype="FP32", shape=(len(CLASSES),)),
        ],
        labels=list(CLASSES),
    )


def dataset(rows: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=rows, n_features=FEATURES, n_informative=8, n_redundant=4,
        n_classes=len(CLASSES), class_sep=2.0, flip_y=0.02, random_state=seed, shuffle=False,
    )  # fmt: skip
    rows_in_order = np.random.default_rng(seed).permutation(rows)  # informative columns first
    return x[rows_in_order].astype(np.float32), y[rows_in_order].astype(np.int64)


def build(root: Path) -> tuple[ModelRepository, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A repository with ``small`` and ``large``, and train/val/test splits (x, y)."""
    from sklearn.linear_model import LogisticRegression

    x, y = dataset()
    splits = {"train": (x[:1000], y[:1000]), "val": (x[1000:2000], y[1000:2000]),
              "test": (x[2000:], y[2000:])}  # fmt: skip
    repo = ModelRepository(root / "repo")
    xt, yt = splits["train"]
    few = LogisticRegression(max_iter=500).fit(xt[:, :SMALL_FEATURES], yt)
    weights = np.zeros((FEATURES, len(CLASSES)))
    weights[:SMALL_FEATURES] = few.coef_.T
    repo.add_version("small", linear_onnx(root / "small.onnx", weights, few.intercept_),
                     config=linear_config("small"))  # fmt: skip
    full = LogisticRegression(max_iter=1000).fit(xt, yt)
    repo.add_version("large", linear_onnx(root / "large.onnx", full.coef_.T, full.intercept_),
                     config=linear_config("large"))  # fmt: skip
    return repo, splits
