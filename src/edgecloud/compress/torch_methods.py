"""Structured pruning and knowledge distillation of any torch model (the ``train`` extra).

The model comes as a *module factory*, ``--module package.module:factory`` or
``--module path/to/file.py:factory``: a function that returns a
``torch.nn.Module`` taking the model's inputs as positional tensors, in the
order of the model's config, and returning its outputs (a tensor, or a tuple
in the config's output order). It is called with no arguments, or, if it
takes one, with the parent version's ``model.onnx`` path (a factory may load
its weights from there, or from its own checkpoint).

- ``prune``: the factory returns the module the parent ONNX was exported
  from, weights loaded; it must reproduce the parent's outputs on the training
  rows (checked: refused with the largest difference otherwise).
  torch-pruning's dependency graph removes whole output channels of Conv and
  neurons of Linear layers by L2 magnitude (``amount`` of each layer, layers
  whose output is a model output kept whole, so the outputs keep their
  shapes), then the module is fine-tuned on ``--data``: on its labels if
  present, else on the parent's outputs.
- ``distill``: the factory returns the (smaller, untrained) student; it learns
  the parent ONNX model's outputs (run with onnxruntime) on the ``--data``
  inputs — temperature-softened class probabilities mixed with the hard
  labels when there are labels (Hinton et al., 2015, "Distilling the
  Knowledge in a Neural Network"), mean squared error for other outputs.

Both export the module with the parent's input and output names, dtypes and
shapes and a dynamic batch axis, checked against the parent's config,
numerically against torch, and for row independence (:mod:`edgecloud.rows`:
the parent is batched, so each row must get the answer it gets alone).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from .._optional import require
from ..errors import CompressionError, ConfigError, describe
from ..repository import ModelVersion, config_from_onnx
from ..samples import Samples, class_indices, data_for, finite, target_values
from .methods import MethodOptions, Progress, method

__all__ = ["DistillOptions", "PruneOptions", "TrainOptions", "load_factory"]

CHECK_ROWS = 32
"""Training rows on which the factory's module must reproduce the parent's outputs."""


class TrainOptions(MethodOptions):
    """What the training methods share."""

    module: str = Field(min_length=3)
    """Module factory: ``package.module:function`` or ``path/to/file.py:function``."""
    data: Path | None = None
    """Training ``.npz`` (inputs by name, optional ``labels``); default: the version's samples."""
    epochs: int = Field(default=10, ge=1, le=10_000)
    lr: float = Field(default=1e-3, gt=0, le=1, allow_inf_nan=False)
    """Adam learning rate."""
    batch_size: int = Field(default=64, ge=1, le=65_536)
    seed: int = Field(default=0, ge=0)
    """torch.manual_seed for initialisation and shuffling: reruns give the same model."""

    @field_validator("module")
    @classmethod
    def _factory_spelling(cls, value: str) -> str:
        where, _, name = value.rpartition(":")
        if not where or not name.isidentifier():
            raise ValueError("write it as package.module:function or path/to/file.py:function")
        return value


class PruneOptions(TrainOptions):
    amount: float = Field(default=0.5, gt=0, lt=1, allow_inf_nan=False)
    """Share of every prunable layer's output channels (Conv) or neurons (Linear) removed."""
    ignore: tuple[str, ...] = ()
    """Names of further submodules (``module.named_modules()``) never pruned."""


class DistillOptions(TrainOptions):
    temperature: float = Field(default=4.0, gt=0, allow_inf_nan=False)
    """Softens the teacher's class probabilities (Hinton et al. use 1-20)."""
    alpha: float = Field(default=0.7, ge=0, le=1, allow_inf_nan=False)
    """Weight of the soft-target loss against the hard-label loss (1 without labels)."""


# -- the module factory -------------------------------------------------------------------


def load_factory(spec: str) -> Callable[..., Any]:
    """The function named by ``package.module:function`` or ``path/to/file.py:function``.

    Raises ConfigError naming ``spec`` when the module cannot be imported
    (with the import's own error), lacks the function, or it is not callable.
    """
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py") or "/" in where or "\\" in where:
            module = _from_file(Path(where))
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as exc:  # ImportError, or anything the module raises on import
        raise ConfigError(f"--module {spec}: cannot import {where!r}: {describe(exc)}") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"--module {spec}: {where!r} has no function {name!r}")
    return factory  # type: ignore[no-any-return]


def _from_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"--module: {path} is not a file")
    name = f"_edgecloud_factory_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--module: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _build_module(spec: str, torch: Any, onnx_path: Path) -> Any:
    factory = load_factory(spec)
    try:
        takes_path = any(
            p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            for p in inspect.signature(factory).parameters.values()
        )
    except (TypeError, ValueError):  # a builtin without a signature: call it bare
        takes_path = False
    try:
        module = factory(onnx_path) if takes_path else factory()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"--module {spec}: the factory failed: {describe(exc)}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(
            f"--module {spec}: the factory returned {type(module).__name__}, not a torch.nn.Module"
        )
    return module.float()


# -- data, the parent's outputs and the checks ----------------------------------------------


def _inputs(parent: ModelVersion, samples: Samples, rows: slice | None = None) -> list[Any]:
    """The samples' inputs in the config's order (optionally some rows)."""
    arrays = [samples.inputs[spec.name] for spec in parent.config.inputs]
    return [np.ascontiguousarray(a[rows]) if rows is not None else a for a in arrays]


def _parent_outputs(parent: ModelVersion, inputs: Sequence[Any]) -> list[np.ndarray[Any, Any]]:
    """The parent ONNX model's outputs (config order) on ``inputs``, run in batches."""
    from ..export import quiet_session

    session = quiet_session(parent.model_path)
    names = [spec.name for spec in parent.config.inputs]
    outputs = [spec.name for spec in parent.config.outputs]
    step = parent.config.max_batch_size or len(inputs[0])
    parts = [
        session.run(outputs, {n: a[i : i + step] for n, a in zip(names, inputs, strict=True)})
        for i in range(0, len(inputs[0]), step)
    ]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(outputs))]


def _check_reproduces(module: Any, parent: ModelVersion, samples: Samples, spec: str) -> None:
    """Refuse a module that does not compute the parent's outputs (up to float rounding)."""
    from ..export import disagreement

    rows = slice(0, min(CHECK_ROWS, samples.rows))
    try:
        problem = disagreement(
            module,
            parent.model_path,
            _inputs(parent, samples, rows),
            [s.name for s in parent.config.inputs],
            [s.name for s in parent.config.outputs],
        )
    except Exception as exc:  # the module's own error on inputs it does not take
        problem = f"it does not run on the model's inputs ({describe(exc)[:200]})"
    if problem is not None:
        raise ConfigError(
            f"--module {spec} does not reproduce {parent.name!r} version {parent.version} on "
            f"the first {rows.stop} rows of {samples.source}: {problem}; the factory must return "
            "the module the ONNX model was exported from, with its weights loaded"
        )


def _labels(
    parent: ModelVersion, samples: Samples, classes: int | None
) -> np.ndarray[Any, Any] | None:
    """Labels as class indices (int64) for a classifier of ``classes`` classes, float32
    targets otherwise: :func:`~edgecloud.samples.class_indices` /
    :func:`~edgecloud.samples.target_values`, the checks every consumer shares."""
    if samples.labels is None:
        return None
    source = f"samples file {samples.source}"
    if classes is None:
        return target_values(samples.labels, source)
    return class_indices(samples.labels, parent.config.labels, source, classes)


def _probabilities(output: np.ndarray[Any, Any]) -> bool:
    """Rows that are already probability distributions (a Softmax at the end)."""
    return bool(np.all(output >= 0) and np.allclose(output.sum(axis=1), 1, atol=1e-3))


def _classes(first: np.ndarray[Any, Any]) -> int | None:
    """Number of classes when the first output holds class scores [rows, classes]."""
    return int(first.shape[1]) if first.ndim == 2 and first.shape[1] > 1 else None


# -- training ----------------------------------------------------------------------------


def _fit(
    module: Any,
    inputs: list[Any],
    teacher: list[np.ndarray[Any, Any]],
    labels: np.ndarray[Any, Any] | None,
    options: TrainOptions,
    *,
    alpha: float,
    temperature: float,
    progress: Progress,
) -> float:
    """Train ``module`` (Adam) on ``alpha`` × soft loss against ``teacher`` + (1 - alpha) ×
    hard loss against ``labels``; the last epoch's mean loss."""
    torch = require("torch", extra="train", feature="training")
    functional = torch.nn.functional
    probs = _classes(teacher[0]) is not None and _probabilities(teacher[0])
    classifier = _classes(teacher[0]) is not None
    xs = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
    ts = [torch.from_numpy(t.astype(np.float32)) for t in teacher]
    ys = torch.from_numpy(labels) if labels is not None else None
    if ys is None:
        alpha = 1.0

    def log_scores(out: Any) -> Any:  # class log-probabilities up to a constant
        return torch.log(out.clamp_min(1e-9)) if probs else out

    def loss_of(outs: list[Any], idx: Any) -> Any:
        first, target = outs[0], ts[0][idx]
        if classifier:
            log_p = log_scores(first)
            soft_t = torch.softmax(log_scores(target) / temperature, dim=1)
            soft = (
                functional.kl_div(
                    torch.log_softmax(log_p / temperature, dim=1), soft_t, reduction="batchmean"
                )
                * temperature**2
            )
            hard = functional.cross_entropy(log_p, ys[idx]) if ys is not None else 0.0
        else:
            soft = sum(functional.mse_loss(o, t[idx]) for o, t in zip(outs, ts, strict=True))
            hard = functional.mse_loss(first, ys[idx].view_as(first)) if ys is not None else 0.0
        return alpha * soft + (1 - alpha) * hard

    optimiser = torch.optim.Adam(module.parameters(), lr=options.lr)
    generator = torch.Generator().manual_seed(options.seed)
    rows, last = len(xs[0]), math.nan
    module.train()
    for epoch in range(options.epochs):
        order, total = torch.randperm(rows, generator=generator), 0.0
        for start in range(0, rows, options.batch_size):
            idx = order[start : start + options.batch_size]
            out = module(*[x[idx] for x in xs])
            loss = loss_of(list(out) if isinstance(out, (tuple, list)) else [out], idx)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        last = total / rows
        progress(
            (epoch + 1) / options.epochs, f"epoch {epoch + 1}/{options.epochs}, loss {last:.4g}"
        )
    module.eval()
    if not math.isfinite(last):
        raise CompressionError(f"training diverged (loss {last}); lower --lr")
    return last


# -- export ------------------------------------------------------------------------------


def _export(module: Any, parent: ModelVersion, samples: Samples, target: Path) -> None:
    """Export with the parent's input/output names and a dynamic batch axis; refuse an
    export whose inputs or outputs differ from the parent's config, or from torch."""
    torch = require("torch", extra="train", feature="exporting")
    from ..export import batch_axes, check_parity, export_onnx, quiet_session
    from ..rows import ROWS, check_row_independence, check_rows

    inputs = [s.name for s in parent.config.inputs]
    outputs = [s.name for s in parent.config.outputs]
    example = _inputs(parent, samples, slice(0, 2))
    axes = batch_axes(inputs, outputs) if parent.config.batched else {}
    export_onnx(module, tuple(torch.from_numpy(a) for a in example), target,
                input_names=inputs, output_names=outputs, dynamic_axes=axes)  # fmt: skip
    exported = config_from_onnx(target, parent.name, max_batch_size=parent.config.max_batch_size)
    for kind, have, want in (("inputs", exported.inputs, parent.config.inputs),
                             ("outputs", exported.outputs, parent.config.outputs)):  # fmt: skip
        if [_sig(s) for s in have] != [_sig(s) for s in want]:
            raise CompressionError(
                f"the exported module's {kind} {[_sig(s) for s in have]} are not the parent's "
                f"{[_sig(s) for s in want]}: the module must keep the model's {kind}"
            )
    check_parity(module, target, _inputs(parent, samples, slice(0, 3)), inputs, outputs)
    session = quiet_session(target)
    size = min(ROWS, parent.config.max_batch_size)
    rows = check_rows(parent.config, samples.inputs, size)  # distinct rows, as import checks
    check_row_independence(
        lambda feed: dict(zip(outputs, session.run(outputs, feed), strict=True)),
        rows,
        f"the exported {parent.name!r} module",
        size,
        other_fix=f"(the parent is batched, max_batch_size {parent.config.max_batch_size})",
    )


def _sig(spec: Any) -> str:
    return f"{spec.name} {spec.datatype} {list(spec.shape)}"


def _start(parent: ModelVersion, options: TrainOptions) -> tuple[Any, Samples]:
    torch = require("torch", extra="train", feature="pruning and distillation")
    if not parent.config.batched:
        raise ConfigError(
            f"model {parent.name!r} has no batch dimension (max_batch_size 0): training needs "
            "rows; re-import it with --max-batch-size N"
        )
    torch.manual_seed(options.seed)
    return torch, finite(data_for(parent, options.data, flag="--data"), "training")


def _size(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


# -- pruning -----------------------------------------------------------------------------


def _output_layers(module: Any, example: Sequence[Any], torch: Any) -> list[Any]:
    """Prunable layers (Conv, Linear) whose output reaches a model output through no other
    prunable layer: pruning them would change the output's shape."""
    kinds = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
    produced: dict[Any, Any] = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o: produced.__setitem__(o.grad_fn, m))
        for m in module.modules()
        if isinstance(m, kinds)
    ]
    try:
        with torch.enable_grad():
            out = module(*example)
    finally:
        for hook in hooks:
            hook.remove()
    heads, seen = [], set()
    stack = [o.grad_fn for o in (out if isinstance(out, (tuple, list)) else [out])]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in produced:
            heads.append(produced[fn])
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return heads


def _channels(module: Any, torch: Any) -> dict[str, int]:
    kinds = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
    return {
        name: int(m.weight.shape[0]) for name, m in module.named_modules() if isinstance(m, kinds)
    }


@method("prune", options=PruneOptions, trains=True,
        needs=(("onnx", "compress"), ("torch", "train"), ("torch_pruning", "train")))  # fmt: skip
def prune(
    parent: ModelVersion, target: Path, options: PruneOptions, progress: Progress
) -> dict[str, Any]:
    """Remove ``options.amount`` of every prunable layer's channels, then fine-tune."""
    torch, samples = _start(parent, options)
    tp = require("torch_pruning", extra="train", feature="structured pruning")
    module = _build_module(options.module, torch, parent.model_path).eval()
    _check_reproduces(module, parent, samples, options.module)
    example = [torch.from_numpy(a) for a in _inputs(parent, samples, slice(0, 2))]
    named = dict(module.named_modules())
    missing = [n for n in options.ignore if n not in named]
    if missing:
        raise ConfigError(f"prune: --ignore names no submodule: {missing}; see named_modules()")
    heads = _output_layers(module, example, torch)
    before, channels = _size(module), _channels(module, torch)
    progress(0.02, "pruning")
    pruner = tp.pruner.MetaPruner(
        module, tuple(example), importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=options.amount, ignored_layers=[*heads, *(named[n] for n in options.ignore)],
    )  # fmt: skip
    pruner.step()
    after = _channels(module, torch)
    inputs = _inputs(parent, samples)
    teacher = _parent_outputs(parent, inputs)
    labels = _labels(parent, samples, _classes(teacher[0]))
    loss = _fit(module, inputs, teacher, labels, options, alpha=0.0, temperature=1.0,
                progress=lambda f, text: progress(0.05 + 0.9 * f, text))  # fmt: skip
    _export(module, parent, samples, target)
    return {
        "library": f"torch-pruning {tp.__version__}",
        "module": options.module,
        "importance": "L2 magnitude",
        "amount": options.amount,
        "kept_whole": sorted(n for n, m in module.named_modules() if m in heads)
        + list(options.ignore),
        "parameters_before": before,
        "parameters_after": _size(module),
        "channels": {n: [channels[n], after[n]] for n in channels if after[n] != channels[n]},
        "fine_tune": _training(options, samples, labels, loss),
    }


def _training(
    options: TrainOptions, samples: Samples, labels: np.ndarray[Any, Any] | None, loss: float
) -> dict[str, Any]:
    return {
        "data": str(samples.source),
        "rows": samples.rows,
        "targets": "labels" if labels is not None else "the parent's outputs",
        "epochs": options.epochs,
        "lr": options.lr,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "final_loss": round(loss, 6),
    }


# -- distillation --------------------------------------------------------------------------


@method("distill", options=DistillOptions, trains=True,
        needs=(("onnx", "compress"), ("torch", "train")))  # fmt: skip
def distill(
    parent: ModelVersion, target: Path, options: DistillOptions, progress: Progress
) -> dict[str, Any]:
    """Train the ``--module`` student on the parent's outputs (soft targets) and labels."""
    torch, samples = _start(parent, options)
    student = _build_module(options.module, torch, parent.model_path)
    inputs = _inputs(parent, samples)
    progress(0.02, "running the teacher")
    teacher = _parent_outputs(parent, inputs)
    _check_student(student, parent, inputs, teacher, options.module)
    labels = _labels(parent, samples, _classes(teacher[0]))
    loss = _fit(student, inputs, teacher, labels, options, alpha=options.alpha,
                temperature=options.temperature,
                progress=lambda f, text: progress(0.05 + 0.9 * f, text))  # fmt: skip
    _export(student, parent, samples, target)
    return {
        "module": options.module,
        "temperature": options.temperature,
        "alpha_soft": options.alpha if labels is not None else 1.0,
        "teacher_parameters": _onnx_parameters(parent.model_path),
        "student_parameters": _size(student),
        "training": _training(options, samples, labels, loss),
    }


def _check_student(
    student: Any, parent: ModelVersion, inputs: list[Any], teacher: list[Any], spec: str
) -> None:
    from ..export import torch_outputs

    try:
        outs = torch_outputs(student.eval(), [a[:2] for a in inputs])
    except Exception as exc:
        raise ConfigError(
            f"--module {spec}: the student does not run on the model's inputs "
            f"({[_sig(s) for s in parent.config.inputs]}): {describe(exc)}"
        ) from exc
    shapes = [list(o.shape[1:]) for o in outs]
    want = [list(t.shape[1:]) for t in teacher]
    if shapes != want:
        raise ConfigError(
            f"--module {spec}: the student's outputs have shapes {shapes} per row, the "
            f"parent's {want} ({[s.name for s in parent.config.outputs]})"
        )


def _onnx_parameters(path: Path) -> int:
    onnx = require("onnx", extra="compress", feature="distillation")
    model = onnx.load(str(path))
    return int(sum(np.prod(i.dims) for i in model.graph.initializer))
