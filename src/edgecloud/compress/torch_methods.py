"""Structured pruning and knowledge distillation (the ``train`` extra: torch, torch-pruning).

Both work on MLP classifiers — a chain of Gemm/Relu ending in Softmax, as the
zoo's digits models and any ``torch.nn.Sequential`` of Linear/ReLU/Softmax
export — rebuilt in torch from the ONNX weights, trained on the model's data
set, and exported back to ONNX:

- ``prune``: torch-pruning removes whole hidden neurons by magnitude (the
  exported model really has fewer weights), then a short fine-tune;
- ``distill``: a smaller student learns from the teacher's temperature-softened
  probabilities mixed with the hard labels.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._optional import require
from ..errors import CompressionError
from ..repository import ModelVersion
from .methods import CompressOptions

__all__ = ["TORCH_METHODS", "mlp_from_onnx"]

TorchMethod = Callable[[ModelVersion, Path, CompressOptions], dict[str, Any]]
TORCH_METHODS: dict[str, TorchMethod] = {}


def _register(name: str) -> Callable[[TorchMethod], TorchMethod]:
    def register(fn: TorchMethod) -> TorchMethod:
        TORCH_METHODS[name] = fn
        return fn

    return register


def mlp_from_onnx(path: Path) -> Any:
    """The torch MLP whose export is ``path`` (Gemm/Relu chain, Softmax last), weights loaded."""
    onnx = require("onnx", extra="compress", feature="pruning and distillation")
    torch = require("torch", extra="train", feature="pruning and distillation")
    numpy_helper = require(
        "onnx.numpy_helper", extra="compress", feature="pruning and distillation"
    )

    from ..zoo.digits import build_classifier

    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    body = ops[:-2]
    if ops[-2:] != ["Gemm", "Softmax"] or body != ["Gemm", "Relu"] * (len(body) // 2):
        raise CompressionError(
            "pruning and distillation support MLP classifiers (Gemm/Relu … Softmax, as "
            f"torch.nn.Sequential exports them); this graph is {' → '.join(ops[:8])}"
        )
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    shapes = [weights[g.input[1]].shape for g in gemms]
    hidden = tuple(int(s[0]) for s in shapes[:-1])
    mlp = build_classifier(hidden, n_in=int(shapes[0][1]), n_out=int(shapes[-1][0]))
    linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for gemm, linear in zip(gemms, linears, strict=True):
            linear.weight.copy_(torch.from_numpy(weights[gemm.input[1]].copy()))
            linear.bias.copy_(torch.from_numpy(weights[gemm.input[2]].copy()))
    return mlp.eval()


def _digits_only(parent: ModelVersion) -> None:
    if not parent.config.metadata.get("dataset", "").startswith("sklearn digits"):
        raise CompressionError(
            f"{parent.name!r} has no training data the zoo knows; pruning and distillation "
            "train on it (today: the digits models)"
        )


def _export(module: Any, n_in: int, parent: ModelVersion, target: Path) -> None:
    torch = require("torch", extra="train", feature="exporting")
    from ..zoo.export import export_onnx

    out = parent.config.outputs[0].name
    inp = parent.config.inputs[0].name
    export_onnx(module, (torch.zeros(1, n_in),), target, input_names=[inp], output_names=[out],
                dynamic_axes={inp: {0: "batch"}, out: {0: "batch"}})  # fmt: skip


def _quiet(progress: Callable[[float, str], None] | None) -> Callable[[float, str], None]:
    return progress or (lambda fraction, text: None)


@_register("prune")
def prune(parent: ModelVersion, target: Path, options: CompressOptions) -> dict[str, Any]:
    """Remove ``options.amount`` of every hidden layer's neurons, then fine-tune."""
    _digits_only(parent)
    torch = require("torch", extra="train", feature="structured pruning")
    tp = require("torch_pruning", extra="train", feature="structured pruning")
    from ..zoo import datasets
    from ..zoo.digits import train_classifier

    torch.manual_seed(0)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mlp = mlp_from_onnx(parent.model_path)
    n_in = mlp[0].in_features
    before = sum(p.numel() for p in mlp.parameters())
    last = [m for m in mlp if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(
        mlp, torch.zeros(1, n_in), importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=options.amount, ignored_layers=[last],
    )  # fmt: skip
    pruner.step()
    after = sum(p.numel() for p in mlp.parameters())
    train_classifier(mlp, datasets.digits("train"), epochs=options.epochs,
                     progress=_quiet(options.progress), lr=1e-3)  # fmt: skip
    _export(mlp, n_in, parent, target)
    hidden = [m.out_features for m in mlp if isinstance(m, torch.nn.Linear)][:-1]
    return {
        "library": f"torch-pruning {tp.__version__}",
        "importance": "L2 magnitude",
        "amount": options.amount,
        "fine_tune_epochs": options.epochs,
        "parameters_before": int(before),
        "parameters_after": int(after),
        "hidden_after": hidden,
    }


@_register("distill")
def distill(parent: ModelVersion, target: Path, options: CompressOptions) -> dict[str, Any]:
    """Train a student MLP (``options.student_hidden``) on the parent's soft targets."""
    _digits_only(parent)
    torch = require("torch", extra="train", feature="distillation")
    from ..zoo import datasets
    from ..zoo.digits import build_classifier

    torch.manual_seed(0)
    teacher = mlp_from_onnx(parent.model_path)
    train = datasets.digits("train")
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    with torch.no_grad():
        logits_t = torch.log(teacher(x) + 1e-9)  # the teacher exports probabilities
    student = build_classifier(options.student_hidden, n_in=x.shape[1], n_out=logits_t.shape[1])
    optimiser = torch.optim.Adam(student.parameters(), lr=3e-3, weight_decay=1e-4)
    temperature, alpha = options.temperature, options.alpha
    soft_t = torch.softmax(logits_t / temperature, dim=1)
    generator = torch.Generator().manual_seed(0)
    report = _quiet(options.progress)
    student.train()
    for epoch in range(options.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            probs = student(x[idx])
            log_p = torch.log(probs + 1e-9)
            soft = (
                torch.nn.functional.kl_div(
                    torch.log_softmax(log_p / temperature, dim=1),
                    soft_t[idx],
                    reduction="batchmean",
                )
                * temperature**2
            )
            hard = torch.nn.functional.nll_loss(log_p, y[idx])
            loss = alpha * soft + (1 - alpha) * hard
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        report((epoch + 1) / options.epochs, f"epoch {epoch + 1}/{options.epochs}")
    student.eval()
    _export(student, int(x.shape[1]), parent, target)
    return {
        "student_hidden": list(options.student_hidden),
        "temperature": temperature,
        "alpha_soft": alpha,
        "epochs": options.epochs,
        "teacher_parameters": int(sum(p.numel() for p in teacher.parameters())),
        "student_parameters": int(sum(p.numel() for p in student.parameters())),
    }
