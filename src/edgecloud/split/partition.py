"""Partitioning an ONNX model into a head (device) and a tail (server).

A cut after node *k* of the topological order is the set of tensors that are
alive there: produced by a node up to *k* (or a graph input) and still needed
by a node after *k* or as a graph output. Cutting all of them separates the
graph, branches included; single-tensor cuts are the common case in chains.
Head and tail are extracted with ``onnx.utils.Extractor`` and checked
numerically: ``tail(head(x))`` must equal the full model's output.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import ConfigError, InferenceError

__all__ = ["CutPoint", "cut_points", "extract", "find_cut", "verify_split"]

Arrays = dict[str, np.ndarray[Any, Any]]

_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8}


@dataclass(frozen=True, slots=True)
class CutPoint:
    """Where the model can be split, and what crosses the link there."""

    index: int
    """Position in the topological order: the head holds nodes ``0..index``."""
    after_node: str
    tensors: tuple[str, ...]
    """Tensors sent from head to tail."""
    nbytes: int | None
    """Bytes per sample crossing the cut (batch dimension 1), when shapes are known."""

    @property
    def name(self) -> str:
        return f"cut{self.index}"


def _load(model: Any) -> Any:
    """The model with inferred shapes. Read it, never change it: for a file it is cached."""
    onnx = require("onnx", extra="compress", feature="model partitioning")
    if isinstance(model, (str, os.PathLike)):
        stat = os.stat(model)
        return _load_file(str(model), stat.st_mtime_ns, stat.st_size)
    return onnx.shape_inference.infer_shapes(model)


@functools.lru_cache(maxsize=2)
def _load_file(path: str, mtime_ns: int, size: int) -> Any:
    """Splitting a model enumerates its cuts and extracts several of them: load and infer
    shapes once (keyed by modification time and size, so a rewritten file is reloaded)."""
    onnx = require("onnx", extra="compress", feature="model partitioning")
    return onnx.shape_inference.infer_shapes(onnx.load(path))


def _sizes(model: Any) -> dict[str, int | None]:
    sizes: dict[str, int | None] = {}
    infos = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    for info in infos:
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        dims = [1 if i == 0 and d is None else d for i, d in enumerate(dims)]  # batch of 1
        itemsize = _ITEMSIZE.get(tensor.elem_type)
        known = [d for d in dims if d is not None]
        if itemsize is None or len(known) != len(dims):
            sizes[info.name] = None
        else:
            sizes[info.name] = int(np.prod(known, dtype=np.int64)) * itemsize
    return sizes


def cut_points(model: Any) -> list[CutPoint]:
    """Every proper cut (both sides non-empty), in topological order."""
    loaded = _load(model)
    graph = loaded.graph
    sizes = _sizes(loaded)
    constants = _constants(graph)
    nodes = [n for n in graph.node if not all(o in constants for o in n.output)]
    outputs = {o.name for o in graph.output}
    last_use: dict[str, int] = {}
    for position, node in enumerate(nodes):
        for name in node.input:
            if name and name not in constants:
                last_use[name] = position
    produced_at = {i.name: -1 for i in graph.input if i.name not in constants}
    for position, node in enumerate(nodes):
        for name in node.output:
            produced_at[name] = position
    cuts = []
    for k in range(len(nodes) - 1):
        alive = tuple(
            name
            for name, born in produced_at.items()
            if born <= k and (last_use.get(name, -2) > k or (name in outputs and born > -1))
        )
        if not alive or all(produced_at[n] == -1 for n in alive):
            continue  # nothing computed on the device yet
        known = [sizes.get(n) for n in alive]
        nbytes = None if any(s is None for s in known) else sum(s for s in known if s)
        cuts.append(CutPoint(k, nodes[k].name or nodes[k].op_type, alive, nbytes))
    return cuts


def _constants(graph: Any) -> set[str]:
    """Initializers and everything computed from them alone (Constant, Identity of weights…).

    Such tensors never cross a cut: the extractor copies what each side needs.
    """
    constants = {i.name for i in graph.initializer}
    for node in graph.node:
        if all(not name or name in constants for name in node.input):
            constants.update(node.output)
    return constants


def find_cut(model: Any, name: str) -> CutPoint:
    """The cut called ``name`` (``cutN``), or a clear error listing the valid ones."""
    cuts = cut_points(model)
    for cut in cuts:
        if cut.name == name:
            return cut
    preview = ", ".join(c.name for c in cuts[:6]) + (" …" if len(cuts) > 6 else "")
    raise ConfigError(f"no cut point {name!r} in this model; valid cuts: {preview or 'none'}")


def extract(
    model_path: str | os.PathLike[str], cut: CutPoint, directory: Path
) -> tuple[Path, Path]:
    """Write ``head.onnx`` (inputs → cut tensors) and ``tail.onnx`` (cut tensors → outputs)."""
    onnx = require("onnx", extra="compress", feature="model partitioning")
    model = _load(model_path)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    outputs = [o.name for o in model.graph.output]
    extractor = onnx.utils.Extractor(model)
    try:
        head = extractor.extract_model(inputs, [t for t in cut.tensors if t not in inputs])
        tail = extractor.extract_model(list(cut.tensors), outputs)
    except (KeyError, ValueError) as exc:
        raise ConfigError(
            f"cannot cut {model_path} at {cut.name}: shape inference knows no type for {exc}"
        ) from exc
    directory.mkdir(parents=True, exist_ok=True)
    head_path, tail_path = directory / "head.onnx", directory / "tail.onnx"
    onnx.save(head, str(head_path))
    onnx.save(tail, str(tail_path))
    return head_path, tail_path


def verify_split(
    model_path: str | os.PathLike[str],
    head_path: Path,
    tail_path: Path,
    inputs: Arrays,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> float:
    """Largest absolute difference between ``tail(head(x))`` and the full model."""
    import onnxruntime as ort

    def session(path: str | os.PathLike[str]) -> Any:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    full, head, tail = session(model_path), session(head_path), session(tail_path)
    expected = full.run(None, inputs)
    middle = dict(zip([o.name for o in head.get_outputs()], head.run(None, inputs), strict=True))
    feed = {i.name: middle.get(i.name, inputs.get(i.name)) for i in tail.get_inputs()}
    got = tail.run(None, feed)
    worst = 0.0
    for want, have in zip(expected, got, strict=True):
        if not np.allclose(have, want, rtol=rtol, atol=atol):
            raise InferenceError(
                f"split of {model_path} diverges: max difference {np.abs(have - want).max():.3g}"
            )
        worst = max(worst, float(np.abs(have - want).max()))
    return worst
