"""digits-small and digits-large: MLP classifiers on scikit-learn's digits.

Both output softmax probabilities (the cascade's confidence needs them) and
record held-out accuracy in their config; their samples are the validation
split with labels (what ``calibrate`` and compression evaluation use).
Training is seeded and runs on one thread, so the exported weights are
reproducible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..repository import ModelConfig
from ..tensors import TensorSpec
from . import datasets
from .export import export_onnx, export_torchscript
from .recipe import Built, Progress, Recipe, write_samples

__all__ = ["DIGITS_LARGE", "DIGITS_SMALL", "build_classifier", "train_classifier"]

SEED = 0


def build_classifier(hidden: tuple[int, ...], *, n_in: int = 64, n_out: int = 10) -> Any:
    """An MLP ``n_in -> hidden... -> n_out`` ending in softmax."""
    torch = require("torch", extra="train", feature="training the digits models")
    layers: list[Any] = []
    width = n_in
    for size in hidden:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
        width = size
    layers += [torch.nn.Linear(width, n_out), torch.nn.Softmax(dim=-1)]
    return torch.nn.Sequential(*layers)


def train_classifier(
    model: Any,
    train: datasets.Split,
    *,
    epochs: int,
    progress: Progress,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = SEED,
) -> Any:
    """Minibatch Adam on negative log-likelihood of the softmax output."""
    torch = require("torch", extra="train", feature="training the digits models")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(train.x)
    y = torch.from_numpy(train.y)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), batch_size):
            idx = order[start : start + batch_size]
            probs = model(x[idx])
            loss = torch.nn.functional.nll_loss(torch.log(probs + 1e-9), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        progress((epoch + 1) / epochs, f"epoch {epoch + 1}/{epochs}")
    return model.eval()


def accuracy(model: Any, split: datasets.Split) -> float:
    torch = require("torch", extra="train", feature="evaluating the digits models")
    with torch.no_grad():
        predicted = model(torch.from_numpy(split.x)).argmax(dim=1).numpy()
    return float(np.mean(predicted == split.y))


def _recipe(name: str, hidden: tuple[int, ...], epochs: int, summary: str) -> Recipe:
    def build(workdir: Path, progress: Progress) -> Built:
        torch = require("torch", extra="train", feature="training the digits models")
        torch.manual_seed(SEED)
        torch.set_num_threads(1)
        model = build_classifier(hidden)
        train_classifier(model, datasets.digits("train"), epochs=epochs, progress=progress)
        path = export_onnx(
            model,
            (torch.zeros(1, 64),),
            workdir / "model.onnx",
            input_names=["pixels"],
            output_names=["probabilities"],
            dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}},
        )
        config = ModelConfig(
            name=name,
            max_batch_size=256,
            inputs=[TensorSpec(name="pixels", datatype="FP32", shape=(64,))],
            outputs=[TensorSpec(name="probabilities", datatype="FP32", shape=(10,))],
            labels=[str(d) for d in range(10)],
            description=summary,
            metrics={
                "val_accuracy": round(accuracy(model, datasets.digits("val")), 4),
                "test_accuracy": round(accuracy(model, datasets.digits("test")), 4),
                "parameters": float(sum(p.numel() for p in model.parameters())),
            },
            metadata={
                "dataset": "sklearn digits, 8x8 pixels / 16, stratified 60/20/20 split",
                "split_seed": str(datasets.DIGITS_SEED),
                "train_seed": str(SEED),
                "architecture": "MLP 64-" + "-".join(map(str, hidden)) + "-10, softmax",
            },
        )
        script = export_torchscript(model, (torch.zeros(1, 64),), workdir / "model.pt")
        val = datasets.digits("val")  # calibration and evaluation data, never the test split
        samples = write_samples(workdir / "samples.npz", {"pixels": val.x, "labels": val.y})
        return Built(path, config, extra_files={"model.pt": script}, samples=samples)

    # 3: samples.npz, the validation split (359 rows) with its labels
    return Recipe(name=name, revision=3, summary=summary, build=build)


DIGITS_SMALL = _recipe(
    "digits-small", (12,), 30, "Small MLP digit classifier (edge model of the cascade)"
)
DIGITS_LARGE = _recipe(
    "digits-large", (256, 256), 60, "Larger MLP digit classifier (remote model of the cascade)"
)
