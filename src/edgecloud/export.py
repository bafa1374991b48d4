"""Export torch modules to ONNX: one exporter for the zoo, pruning, distillation and users.

:func:`export_onnx` writes an ONNX file the same way everywhere (opset
:data:`OPSET`, TorchScript-based exporter). :func:`from_torch` is the user's
entry point: it exports a module with a dynamic batch axis on every input and
output, checks the ONNX model against torch on the example inputs and on a
batch of another size, and adds it to a repository through
:func:`edgecloud.importing.import_onnx` (config inferred from the graph,
samples run, nothing added on any failure).

torch is imported lazily (the ``train`` extra).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._optional import require
from .errors import ConfigError, describe
from .importing import Imported, import_onnx
from .repository import ModelRepository

__all__ = [
    "OPSET",
    "batch_axes",
    "check_parity",
    "disagreement",
    "export_onnx",
    "from_torch",
    "quiet_session",
    "torch_outputs",
]

OPSET = 17
"""ONNX opset of every exported model: supported by onnxruntime's quantizer and
by the float16 converter."""

RTOL = 1e-3
ATOL = 1e-4
"""ONNX must match torch within ``ATOL + RTOL * |torch|`` per value: float32
kernels of the two runtimes differ by rounding (~1e-6 relative on the zoo's
models); a wrong export differs by orders of magnitude more."""


def export_onnx(
    module: Any,
    example_inputs: tuple[Any, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> Path:
    """Export ``module`` in eval mode with the TorchScript-based exporter.

    The TorchScript exporter is deterministic, fast (well under a second for the
    zoo's small models) and handles the BERT graph of MiniLM; torch 2.9+ warns
    that it is deprecated, so the warning is silenced here and the choice is
    recorded in the README's design notes.
    """
    torch = require("torch", extra="train", feature="exporting a torch model to ONNX")
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example_inputs,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def batch_axes(
    input_names: Sequence[str], output_names: Sequence[str]
) -> dict[str, dict[int, str]]:
    """Axis 0 of every input and output named ``batch``."""
    return {name: {0: "batch"} for name in [*input_names, *output_names]}


def torch_outputs(
    module: Any, inputs: Sequence[np.ndarray[Any, Any]]
) -> list[np.ndarray[Any, Any]]:
    """``module(*inputs)`` under ``no_grad``, as numpy arrays (a tensor or a tuple/list of them)."""
    torch = require("torch", extra="train", feature="running a torch module")
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not all(isinstance(o, torch.Tensor) for o in outs):
        got = sorted({type(o).__name__ for o in outs})
        raise ConfigError(
            f"the module returns {type(out).__name__} ({', '.join(got)}); export needs a tensor "
            "or a tuple of tensors (return out['y'], or a tuple in output-name order)"
        )
    return [o.detach().cpu().numpy() for o in outs]


def from_torch(
    module: Any,
    example_inputs: Sequence[np.ndarray[Any, Any]] | np.ndarray[Any, Any],
    repo: ModelRepository,
    name: str,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    labels: Path | None = None,
    samples: Path | None = None,
    max_batch_size: int = 32,
) -> Imported:
    """Export ``module`` to ONNX, check it against torch, add it as ``name``'s next version.

    ``example_inputs``: one numpy array per input (a single array for one
    input), rows along axis 0, of the dtypes the model takes (e.g. float32
    ``[rows, features]``). Axis 0 of every input and output is dynamic (the
    batch). The ONNX model is run with onnxruntime on the examples and on a
    batch of a different size (the examples' rows doubled, or one row when
    there are several) and must agree with torch within ``ATOL + RTOL * |torch|``.
    ``labels``/``samples``/``max_batch_size`` are :func:`import_onnx`'s.

    Raises ConfigError (names that do not match the inputs/outputs, no rows,
    ONNX disagreeing with torch: the message gives the largest difference),
    MissingDependencyError (torch), and :func:`import_onnx`'s errors. Nothing
    is added on any failure.
    """
    arrays = [example_inputs] if isinstance(example_inputs, np.ndarray) else list(example_inputs)
    _check_names(arrays, input_names, output_names)
    if (
        isinstance(max_batch_size, bool)
        or not isinstance(max_batch_size, int)
        or max_batch_size < 0
    ):
        raise ConfigError(
            f"max_batch_size must be a whole number >= 0 (0: unbatched), got {max_batch_size!r}"
        )
    torch = require("torch", extra="train", feature="exporting a torch model to ONNX")
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(
            f"from_torch exports a torch.nn.Module, got {type(module).__name__}; wrap a function "
            "in a Module whose forward calls it"
        )
    module.eval()
    expected = _run_examples(module, arrays, input_names)
    if len(expected) != len(output_names):
        raise ConfigError(
            f"the module returns {len(expected)} output(s), but {len(output_names)} output "
            f"name(s) were given: {list(output_names)}"
        )
    for output, array in zip(output_names, expected, strict=True):
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise ConfigError(
                f"the module's output {output!r} holds NaN or Inf on the example inputs: it "
                "cannot be checked against its export; fix the module or the examples"
            )
    with tempfile.TemporaryDirectory(prefix="edgecloud-export-") as tmp:
        path = Path(tmp) / f"{name}.onnx"
        examples = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
        axes = batch_axes(input_names, output_names)
        try:
            export_onnx(module, examples, path, input_names=input_names,
                        output_names=output_names, dynamic_axes=axes)  # fmt: skip
        except Exception as exc:  # torch.onnx's own errors: unsupported operators, outputs
            raise ConfigError(
                f"torch cannot export the module to ONNX (opset {OPSET}): {_first_line(exc)}"
            ) from exc
        check_parity(module, path, arrays, input_names, output_names)
        other = [a[:1] if len(a) > 1 else np.concatenate([a, a]) for a in arrays]
        check_parity(module, path, other, input_names, output_names)
        return import_onnx(repo, path, name, labels=labels, samples=samples,
                           max_batch_size=max_batch_size)  # fmt: skip


def _run_examples(
    module: Any, arrays: list[np.ndarray[Any, Any]], input_names: Sequence[str]
) -> list[np.ndarray[Any, Any]]:
    """The module's outputs on the examples; ConfigError saying what to fix when it fails."""
    try:
        return torch_outputs(module, arrays)
    except ConfigError:
        raise
    except Exception as exc:  # the module's own error on these inputs
        wide = [n for n, a in zip(input_names, arrays, strict=True) if a.dtype == np.float64]
        hint = (
            f"; example input(s) {wide} are float64, the module's weights most likely float32: "
            "pass array.astype(np.float32)"
            if wide
            else "; give example inputs of the shapes, dtypes and value ranges the module takes "
            "(e.g. integer ids within an Embedding's size)"
        )
        raise ConfigError(
            f"the module fails on the example inputs: {_first_line(exc)}{hint}"
        ) from exc


def _check_names(
    arrays: list[np.ndarray[Any, Any]], input_names: Sequence[str], output_names: Sequence[str]
) -> None:
    if len(arrays) != len(input_names):
        raise ConfigError(
            f"{len(arrays)} example input(s) for {len(input_names)} input name(s) "
            f"{list(input_names)}: give one array per input"
        )
    for names, what in ((input_names, "input"), (output_names, "output")):
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"{what} names must be given, each once; got {list(names)}")
    both = sorted(set(input_names) & set(output_names))
    if both:
        raise ConfigError(
            f"{both} named both an input and an output: every tensor of the graph needs its "
            "own name"
        )
    for array, name in zip(arrays, input_names, strict=True):
        if not isinstance(array, np.ndarray) or array.ndim == 0 or len(array) == 0:
            raise ConfigError(
                f"example input {name!r} must be a numpy array with at least one row "
                "(rows along axis 0)"
            )


def disagreement(
    module: Any,
    path: Path,
    inputs: Sequence[np.ndarray[Any, Any]],
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> str | None:
    """Run ``path`` with onnxruntime and ``module`` with torch on ``inputs``: None when
    every output agrees within ``ATOL + RTOL * |torch|``, else what differs (the
    output, its shapes or the largest difference) as a message fragment."""
    feed = {n: np.ascontiguousarray(a) for n, a in zip(input_names, inputs, strict=True)}
    try:
        got = quiet_session(path).run(list(output_names), feed)
    except Exception as exc:  # onnxruntime's Fail / InvalidArgument: no typed tree of its own
        return f"the ONNX model fails on them ({_first_line(exc)})"
    want = torch_outputs(module, inputs)
    if len(want) != len(got):
        return f"torch returns {len(want)} output(s), ONNX {len(got)} ({list(output_names)})"
    for name, g, w in zip(output_names, got, want, strict=True):
        if g.shape != w.shape:
            return f"output {name!r} has shape {list(g.shape)} in ONNX, {list(w.shape)} in torch"
        diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
        if not np.all(diff <= ATOL + RTOL * np.abs(w.astype(np.float64))):
            worst = float(np.max(diff)) if diff.size else float("nan")
            return (
                f"output {name!r} differs by up to {worst:.3g} (allowed {ATOL:g} + {RTOL:g} × "
                f"|torch|)"
            )
    return None


def _first_line(exc: BaseException) -> str:
    """``describe(exc)``'s first non-blank line, at most 300 characters: torch and
    onnxruntime put graphs and source paths on the lines after it."""
    lines = [line for line in describe(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def quiet_session(path: Path) -> Any:
    """An onnxruntime CPU session that logs nothing to stderr (its errors still raise):
    its own multi-line log of a failing kernel would spill around our one-line error."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # FATAL only: a failing kernel logs at ERROR (3)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(
    module: Any,
    path: Path,
    inputs: Sequence[np.ndarray[Any, Any]],
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> None:
    """ConfigError when the ONNX export at ``path`` and ``module`` disagree on ``inputs``."""
    problem = disagreement(module, path, inputs, input_names, output_names)
    if problem is not None:
        raise ConfigError(
            f"the ONNX export disagrees with torch on {len(inputs[0])} row(s): {problem}; "
            "tracing freezes a module that branches on its input's values or shape or fixes "
            "the batch size (reshape(4, -1): write reshape(x.shape[0], -1) or flatten(1)), and "
            "a random one (rand ops, dropout in training mode) cannot match"
        )
