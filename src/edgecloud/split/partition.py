"""Partitioning an ONNX model into a head (device) and a tail (server).

A cut after node *k* of the topological order is the set of tensors that are
alive there: produced by a node up to *k* (or a graph input) and still needed
by a node after *k* or as a graph output. Cutting all of them separates the
graph, branches included; single-tensor cuts are the common case in chains.
Head and tail are extracted by backward reachability from their outputs and
checked numerically (:func:`verify_split`): ``tail(head(x))`` must equal the
full model's output.

What a node needs includes its *implicit* inputs: the outer-scope tensors
that the subgraphs of If/Loop/Scan nodes read by name. A cut never separates
a subgraph from a tensor it captures — the tensor crosses the cut instead —
and extraction copies the initializers subgraphs capture. A graph input that
a node after the cut needs crosses the cut as raw data
(:attr:`CutPoint.raw_inputs`: the tail receives it unprocessed, which the
privacy check must know). So does a tensor the head only *copies* from a raw
input — a Reshape, Cast, Transpose, scaling by a constant…: it is the raw
data in another layout, so it counts as raw too (see :data:`FEATURE_OPS`).
A graph output that later nodes also consume is both sent across and passed
through by the tail.
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import ConfigError, InferenceError, describe

__all__ = [
    "FEATURE_OPS",
    "CutPoint",
    "cut_points",
    "extract",
    "find_cut",
    "uses",
    "verify_split",
]

Arrays = dict[str, np.ndarray[Any, Any]]

FEATURE_OPS = frozenset({
    # learned linear maps that mix many elements (with a constant weight)
    "Conv", "ConvInteger", "ConvTranspose", "QLinearConv",
    "MatMul", "MatMulInteger", "QLinearMatMul", "Gemm",
    # pooling and reductions: many elements to one
    "AveragePool", "MaxPool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "ArgMax", "ArgMin",
    # recurrent layers (a learned, mixing state update)
    "LSTM", "GRU", "RNN",
    # only the dimensions of the data, which the crossing tensor's own shape tells anyway
    "Shape", "Size",
})  # fmt: skip
"""Ops whose output counts as a *feature* of their inputs, not a copy of them.

A crossing tensor is raw data if a graph input reaches it through ops not in
this set (:func:`cut_points`). This errs on the side of privacy (it fails
closed): every other op — Identity, Reshape, Flatten, Squeeze, Transpose, Cast,
Expand, Tile, Concat, Split, Slice, Gather, Pad, Neg, Add/Sub/Mul/Div (by a
constant or not), Relu, Sigmoid, Softmax, normalisations, control flow, and any
op edgecloud does not know — is assumed to pass the raw data through, because
most of them are invertible or leak their input element for element. A cut
wrongly ruled raw only costs a split under a ``features`` rule; one wrongly
ruled a feature would send personal data. Only ops that mix many elements
through learned weights or reduce them are listed here.

Being listed is not enough: a node of these ops counts as a feature only when
every output element provably combines more than one input element
(:func:`_mixes`), from the static shapes shape inference gives and the values
of constant weights. Otherwise it is a copy (fail closed), as

- a reduction whose reduced axes have a product of sizes of 1 (``ReduceMean``
  over the channel of mono audio ``[N, 1, T]`` returns the audio; an unknown
  size counts as 1), with axes computed at run time, or with empty axes and
  ``noop_with_empty_axes=1``; a global pool over one position;
- a pool whose window, after padding and ``ceil_mode``, may cover only one
  position (a 1x1 kernel);
- Conv/ConvInteger/QLinearConv, MatMul/Gemm/MatMulInteger/QLinearMatMul and
  LSTM/GRU/RNN whose constant weight (less its zero point) has an output
  element with fewer than two non-zero weights over the contracted extent (an
  identity, a permutation or a scaled selection; a 1x1 kernel on one channel;
  for a padded Conv, among the taps a border window keeps inside the data),
  and any of them whose weight is computed at run time (not provably mixing; a
  weight computed from initializers alone, as the ``DequantizeLinear`` of a QDQ
  model, is folded and checked);
  a ConvTranspose counts only its mixing across input channels (a border output
  receives one tap per axis);
- DeformConv, RoiAlign and MaxRoiPool (learned offsets or regions may sample a
  single element) are not listed at all.

Only ArgMax/ArgMin (indices) and Shape/Size (dimensions) always count.

This rule keeps raw data, and exact or scaled copies of it, from leaving the
device; it does not make every feature non-invertible: the output of a learned
linear layer may still be inverted by someone who holds its weights (a square,
full-rank MatMul is invertible), and a server that runs the tail holds them."""

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
    raw_inputs: tuple[str, ...] = ()
    """The raw data among ``tensors``: model inputs the tail needs, and tensors the
    head computed from model inputs by copying ops only (see :data:`FEATURE_OPS`)."""

    @property
    def name(self) -> str:
        return f"cut{self.index}"

    @property
    def raw_inputs_of_tail(self) -> tuple[str, ...]:
        """Raw data the tail receives: model inputs and copies of them (:attr:`raw_inputs`)."""
        return self.raw_inputs


def _load(model: Any) -> Any:
    """The model with inferred shapes. Read it, never change it: for a file it is cached."""
    require("onnx", extra="compress", feature="model partitioning")
    if isinstance(model, (str, os.PathLike)):
        stat = os.stat(model)
        return _load_file(str(model), stat.st_mtime_ns, stat.st_size)
    return _infer_shapes(model)


@functools.lru_cache(maxsize=2)
def _load_file(path: str, mtime_ns: int, size: int) -> Any:
    """Splitting a model enumerates its cuts and extracts several of them: load and infer
    shapes once (keyed by modification time and size, so a rewritten file is reloaded)."""
    onnx = require("onnx", extra="compress", feature="model partitioning")
    return _infer_shapes(onnx.load(path))


def _infer_shapes(model: Any) -> Any:
    """``model`` with the types and shapes of its tensors inferred.

    ONNX's inference knows only the standard operators; for the tensors it
    leaves untyped (outputs of onnxruntime's contrib operators, as the
    ``MatMulNBits`` of an ``int4-weight`` version) onnxruntime's symbolic shape
    inference is asked as well. A tensor neither knows stays untyped, and a cut
    that needs it is refused by :func:`extract`.
    """
    onnx = require("onnx", extra="compress", feature="model partitioning")
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    known = {v.name for v in [*graph.value_info, *graph.input, *graph.output]}
    untyped = {name for node in graph.node for name in node.output if name} - known
    if not untyped:
        return inferred
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        symbolic = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # its failures are plain Exceptions; ONNX's answer stands then
        return inferred
    graph.value_info.extend(
        info
        for info in symbolic.graph.value_info
        if info.name in untyped and info.type.tensor_type.elem_type
    )
    return inferred


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


def _subgraphs(node: Any) -> list[Any]:
    """The graphs held in ``node``'s attributes (If branches, Loop/Scan bodies)."""
    onnx = require("onnx", extra="compress", feature="model partitioning")
    found = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def _outer_names(graph: Any) -> set[str]:
    """Names a (sub)graph reads but does not define: what it captures from outside."""
    defined = {i.name for i in [*graph.input, *graph.initializer, *graph.sparse_initializer]}
    used = {o.name for o in graph.output}
    for node in graph.node:
        defined.update(node.output)
        used.update(uses(node))
    return used - defined


def uses(node: Any) -> list[str]:
    """Every tensor ``node`` reads: its inputs, then what its subgraphs capture (sorted)."""
    implicit: set[str] = set()
    for graph in _subgraphs(node):
        implicit |= _outer_names(graph)
    explicit = [name for name in node.input if name]
    return explicit + sorted(implicit - set(explicit))


def cut_points(model: Any) -> list[CutPoint]:
    """Every proper cut (both sides non-empty), in topological order."""
    loaded = _load(model)
    graph = loaded.graph
    sizes = _sizes(loaded)
    constants = _constants(graph)
    facts = _Facts(loaded, constants)
    nodes = [n for n in graph.node if not all(o in constants for o in n.output)]
    outputs = {o.name for o in graph.output}
    raw = {i.name for i in graph.input if i.name not in constants}
    last_use: dict[str, int] = {}
    for position, node in enumerate(nodes):
        for name in uses(node):
            if name not in constants:
                last_use[name] = position
    # Raw data is what a graph input reaches through copying ops only: those not in
    # FEATURE_OPS, and those in it that do not provably mix (see _mixes).
    copies = set(raw)
    for node in nodes:
        mixes = node.op_type in FEATURE_OPS and _mixes(node, facts)
        if not mixes and any(name in copies for name in uses(node)):
            copies.update(node.output)
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
        after = nodes[k].name or nodes[k].op_type
        cuts.append(CutPoint(k, after, alive, nbytes, tuple(n for n in alive if n in copies)))
    return cuts


def _constants(graph: Any) -> set[str]:
    """Initializers and everything computed from them alone (Constant, Identity of weights…).

    Such tensors never cross a cut: the extractor copies what each side needs.
    """
    constants = {i.name for i in [*graph.initializer, *graph.sparse_initializer]}
    for node in graph.node:
        if all(name in constants for name in uses(node)):
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
    """Write ``head.onnx`` (inputs → cut tensors) and ``tail.onnx`` (cut tensors → outputs).

    Raises ConfigError when a side cannot be built (a tensor of unknown type
    crosses the cut, or the tail would need a tensor the cut does not carry).
    """
    onnx = require("onnx", extra="compress", feature="model partitioning")
    model = _load(model_path)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    outputs = [o.name for o in model.graph.output]
    try:
        head = _part(model, inputs, [t for t in cut.tensors if t not in inputs], "head")
        tail = _part(model, list(cut.tensors), outputs, "tail")
    except KeyError as exc:
        raise ConfigError(
            f"cannot cut {model_path} at {cut.name}: shape inference knows no type for {exc}"
        ) from exc
    except ConfigError as exc:
        raise ConfigError(f"cannot cut {model_path} at {cut.name}: {exc.message}") from exc
    directory.mkdir(parents=True, exist_ok=True)
    head_path, tail_path = directory / "head.onnx", directory / "tail.onnx"
    onnx.save(head, str(head_path))
    onnx.save(tail, str(tail_path))
    return head_path, tail_path


def _part(model: Any, inputs: list[str], outputs: list[str], role: str) -> Any:
    """The model computing ``outputs`` from ``inputs``: the nodes they need (subgraph
    captures included), in the original order, with the initializers those nodes read."""
    onnx = require("onnx", extra="compress", feature="model partitioning")
    graph = model.graph
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output}
    keep: set[int] = set()
    stack, seen = list(outputs), set(inputs)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in producer and producer[name] not in keep:
            keep.add(producer[name])
            stack.extend(uses(graph.node[producer[name]]))
    nodes = [node for index, node in enumerate(graph.node) if index in keep]
    read = {name for node in nodes for name in uses(node)} | set(outputs)
    weights = [i for i in graph.initializer if i.name in read and i.name not in inputs]
    made = {name for node in nodes for name in node.output}
    missing = read - made - set(inputs) - {w.name for w in weights}
    if missing:
        raise ConfigError(f"the {role} would need {sorted(missing)}, which the cut does not carry")
    infos = {v.name: v for v in [*graph.value_info, *graph.input, *graph.output]}
    unshaped = [n for n in [*inputs, *outputs] if not infos[n].type.tensor_type.HasField("shape")]
    if unshaped:
        raise ConfigError(
            f"the {role} would exchange {unshaped} whose rank shape inference does not know "
            "(as after a Loop whose body declares no shape); choose another cut"
        )
    part = onnx.helper.make_graph(
        nodes,
        f"{graph.name}_{role}",
        [infos[name] for name in inputs],
        [infos[name] for name in outputs],
        initializer=weights,
        value_info=[v for v in graph.value_info if v.name in made],
    )
    out = onnx.helper.make_model(
        part, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    out.functions.extend(model.functions)
    return out


def run_model(path: str | os.PathLike[str], feed: Arrays) -> Arrays:
    """Every output of the ONNX file at ``path`` on the inputs of ``feed`` it takes
    (extra entries are ignored), on the CPU; InferenceError naming the file when it
    does not load or run."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        wanted = {i.name for i in session.get_inputs()}
        values = session.run(None, {k: v for k, v in feed.items() if k in wanted})
    except Exception as exc:  # onnxruntime's exception types are not exported
        raise InferenceError(f"{Path(path).name} does not run: {describe(exc)}") from exc
    return dict(zip(names, values, strict=True))


def verify_split(
    model_path: str | os.PathLike[str],
    head_path: Path,
    tail_path: Path,
    inputs: Arrays,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> float:
    """Largest absolute difference between ``tail(head(x))`` and the full model.

    NaN in the same places on both sides counts as equal. Raises
    InferenceError when the split diverges or a part does not load or run.
    """
    expected = run_model(model_path, inputs)
    middle = {**inputs, **run_model(head_path, inputs)}
    got = run_model(tail_path, middle)
    worst = 0.0
    for name, want in expected.items():
        have = got[name]
        if have.shape != want.shape or not np.allclose(
            have, want, rtol=rtol, atol=atol, equal_nan=True
        ):
            raise InferenceError(
                f"split of {model_path} diverges on output {name!r}: "
                f"max difference {_max_difference(have, want)}"
            )
        worst = max(worst, _max_difference(have, want))
    return worst


def _max_difference(have: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> float:
    if have.shape != want.shape:
        return float("inf")
    finite = np.isfinite(want) & np.isfinite(have)
    if not finite.any():
        return 0.0
    return float(np.abs(have[finite].astype(np.float64) - want[finite]).max())


# --- when does a FEATURE_OPS node provably mix its input? -----------------------------------

_REDUCTIONS = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
})  # fmt: skip
_POOLS = frozenset({"AveragePool", "MaxPool", "LpPool"})
_GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
# op -> (index of the weight input, index of its zero point or None)
_CONVS = {"Conv": (1, None), "ConvInteger": (1, 3), "QLinearConv": (3, 5)}
_MATMULS = {
    "MatMul": (1, None),
    "Gemm": (1, None),
    "MatMulInteger": (1, 3),
    "QLinearMatMul": (3, 5),
}


class _Facts:
    """What :func:`_mixes` may know about a model: static shapes (``None`` for an unknown
    dimension) and, on demand, the values of constant tensors."""

    def __init__(self, model: Any, constants: set[str]) -> None:
        graph = model.graph
        self.model = model
        self.constants = constants
        self.shapes: dict[str, tuple[int | None, ...]] = {}
        for info in [*graph.value_info, *graph.input, *graph.output]:
            tensor = info.type.tensor_type
            if tensor.HasField("shape"):
                self.shapes[info.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim
                )
        self._initializers = {i.name: i for i in graph.initializer}
        self._values: dict[str, np.ndarray[Any, Any] | None] = {}

    def value(self, name: str) -> np.ndarray[Any, Any] | None:
        """The value of ``name`` when it is constant: an initializer, or computed from
        initializers alone (a ``Constant``, a ``DequantizeLinear`` of int8 weights in a QDQ
        model…), folded once with onnxruntime. ``None`` otherwise, or when
        folding fails (then the caller fails closed)."""
        if not name or name not in self.constants:
            return None
        if name not in self._values:
            self._values[name] = self._fold(name)
        return self._values[name]

    def _fold(self, name: str) -> np.ndarray[Any, Any] | None:
        onnx = require("onnx", extra="compress", feature="model partitioning")
        if name in self._initializers:
            return np.asarray(onnx.numpy_helper.to_array(self._initializers[name]))
        try:
            import onnxruntime as ort

            part = _part(self.model, [], [name], "weight")
            session = ort.InferenceSession(
                part.SerializeToString(), providers=["CPUExecutionProvider"]
            )
            (value,) = session.run(None, {})
        except Exception:  # any failure to fold: not provably constant, fail closed
            return None
        return np.asarray(value)


def _attr(node: Any, name: str, default: Any) -> Any:
    onnx = require("onnx", extra="compress", feature="model partitioning")
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _input(node: Any, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _known_product(dims: Any) -> int:
    """Product of the static sizes among ``dims``. An unknown size counts as 1: a
    non-empty tensor has at least one element along it, so a product > 1 is proven
    mixing whatever the unknown sizes are (and an empty tensor leaks nothing)."""
    total = 1
    for d in dims:
        if d is not None and d > 0:
            total *= int(d)
    return total


def _mixes(node: Any, facts: _Facts) -> bool:
    """Whether every output element of FEATURE_OPS ``node`` provably combines more than
    one input element (see :data:`FEATURE_OPS`). Unknown shapes or weights: ``False``."""
    op = node.op_type
    if op in {"Shape", "Size", "ArgMax", "ArgMin"}:
        return True  # dimensions or indices: never the data's values
    if op in _REDUCTIONS:
        return _reduction_mixes(node, facts)
    if op in _POOLS:
        return _window_taps(node, facts) > 1
    if op in _GLOBAL_POOLS:
        shape = facts.shapes.get(_input(node, 0))
        return shape is not None and len(shape) >= 3 and _known_product(shape[2:]) > 1
    if op in _CONVS:
        return _conv_mixes(node, facts)
    if op == "ConvTranspose":
        return _conv_transpose_mixes(node, facts)
    if op in _MATMULS:
        return _matmul_mixes(node, facts)
    if op in {"LSTM", "GRU", "RNN"}:
        # W: [directions, gates x hidden, input_size]: each gate mixes input_size elements.
        weight = facts.value(_input(node, 1))
        return weight is not None and _rows_mix(weight.reshape(-1, weight.shape[-1]))
    return False


def _reduction_mixes(node: Any, facts: _Facts) -> bool:
    shape = facts.shapes.get(_input(node, 0))
    if shape is None:
        return False
    axes_input = _input(node, 1)
    if axes_input:
        value = facts.value(axes_input)
        if value is None:
            return False  # axes computed at run time: not provably mixing
        axes = [int(a) for a in value.reshape(-1)]
    else:
        axes = list(_attr(node, "axes", []))
    if not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            return False  # the identity
        axes = list(range(len(shape)))
    try:
        return _known_product(shape[a] for a in axes) > 1
    except IndexError:
        return False  # an axis out of range: onnxruntime refuses the model anyway


def _clips(node: Any, kernel: list[int]) -> list[tuple[int, int]]:
    """Per spatial axis, the kernel taps a window may lose to padding at the begin and at
    the end: ``ceil(pad / dilation)``; ``ceil_mode`` pads the end by up to ``stride - 1``;
    a ``SAME`` pad is at most half the extent less one, rounded up."""
    rank = len(kernel)
    strides = list(_attr(node, "strides", [1] * rank))
    dilations = list(_attr(node, "dilations", [1] * rank))
    pads = list(_attr(node, "pads", [0] * 2 * rank))
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    ceil_mode = int(_attr(node, "ceil_mode", 0))
    clips = []
    for axis, k in enumerate(kernel):
        extent = (k - 1) * dilations[axis] + 1
        if auto_pad.startswith("SAME"):
            begin = end = -(-(extent - 1) // 2)
        else:
            begin, end = pads[axis], pads[axis + rank]
        if ceil_mode:
            end += strides[axis] - 1  # the last window may hang over the end
        clips.append((-(-begin // dilations[axis]), -(-end // dilations[axis])))
    return clips


def _tap_ranges(node: Any, facts: _Facts, kernel: list[int]) -> list[list[tuple[int, int]]]:
    """Per spatial axis, the smallest ranges ``[lo, hi)`` of kernel taps a window may
    keep inside the data: clipped at the begin, at the end, and — when the input along
    that axis is unknown or shorter than the kernel's extent — at both."""
    shape = facts.shapes.get(_input(node, 0))
    rank = len(kernel)
    dilations = list(_attr(node, "dilations", [1] * rank))
    ranges = []
    for axis, ((begin, end), k) in enumerate(zip(_clips(node, kernel), kernel, strict=True)):
        extent = (k - 1) * dilations[axis] + 1
        size = shape[2 + axis] if shape is not None and len(shape) == 2 + rank else None
        options = [(min(begin, k), k), (0, max(k - end, 0))]
        if (begin or end) and (size is None or size < extent):
            options.append((min(begin, k), max(k - end, min(begin, k))))
        ranges.append(options)
    return ranges


def _window_taps(node: Any, facts: _Facts) -> int:
    """Fewest input positions one pool window covers, padding and ``ceil_mode`` taken
    into account."""
    kernel = [int(k) for k in _attr(node, "kernel_shape", [])]
    if not kernel:
        return 0
    taps = 1
    for options in _tap_ranges(node, facts, kernel):
        taps *= min(hi - lo for lo, hi in options)
    return taps


def _weight(
    node: Any, facts: _Facts, index: int, zero_index: int | None, channel_axis: int | None
) -> Any:
    """The constant weight with its zero point subtracted (``None`` if not constant, or
    its zero point is per channel along an axis other than ``channel_axis``)."""
    weight = facts.value(_input(node, index))
    if weight is None:
        return None
    if zero_index is not None and _input(node, zero_index):
        zero = facts.value(_input(node, zero_index))
        if zero is None:
            return None
        if zero.size > 1:  # per output channel
            if channel_axis is None:
                return None
            shape = [1] * weight.ndim
            shape[channel_axis] = -1
            zero = zero.reshape(shape)
        return weight.astype(np.int64) - zero.astype(np.int64)
    return weight


def _rows_mix(matrix: np.ndarray[Any, Any]) -> bool:
    """Every row has at least two non-zero entries: each output element is a combination
    of at least two input elements, not a (scaled) copy of one or a constant."""
    return bool(matrix.size) and bool((np.count_nonzero(matrix, axis=-1) >= 2).all())


def _conv_mixes(node: Any, facts: _Facts) -> bool:
    """W: [M, C/group, k1, k2, …]. Every output channel needs two non-zero weights among
    the taps that stay inside the data, for every way padding may clip a window."""
    weight_index, zero_index = _CONVS[node.op_type]
    weight = _weight(node, facts, weight_index, zero_index, 0)
    if weight is None or weight.ndim < 3:
        return False  # a weight computed at run time: not provably mixing
    kernel = [int(d) for d in weight.shape[2:]]
    for box in itertools.product(*_tap_ranges(node, facts, kernel)):
        kept = weight[(slice(None), slice(None), *(slice(lo, hi) for lo, hi in box))]
        if not _rows_mix(kept.reshape(weight.shape[0], -1)):
            return False
    return True


def _conv_transpose_mixes(node: Any, facts: _Facts) -> bool:
    """W: [C, M/group, k…]. A border output may receive a single tap per axis, so only
    mixing over input channels counts: each (output channel, tap) needs two non-zero
    weights across the C/group input channels."""
    weight = _weight(node, facts, 1, None, None)
    if weight is None or weight.ndim < 3:
        return False
    group = int(_attr(node, "group", 1))
    per_group = weight.reshape(group, weight.shape[0] // group, -1)  # [g, C/g, M/g x taps]
    return all(_rows_mix(block.T) for block in per_group)


def _matmul_mixes(node: Any, facts: _Facts) -> bool:
    """The contracted axis of a constant operand must hold two non-zero weights for every
    output element. A product of two run-time tensors is not provably mixing."""
    weight_index, zero_index = _MATMULS[node.op_type]
    right = _weight(node, facts, weight_index, zero_index, -1)
    if right is not None and right.ndim == 1 and node.op_type != "Gemm":
        right = right[:, None]  # a vector: one output column
    if right is not None and right.ndim >= 2:
        if node.op_type == "Gemm" and _attr(node, "transB", 0):
            right = right.T
        return _rows_mix(np.swapaxes(right, -1, -2))  # columns of B over K
    left_zero = {"MatMulInteger": 2, "QLinearMatMul": 2}.get(node.op_type)
    left = _weight(node, facts, 0, left_zero, None)
    if left is not None and left.ndim == 1 and node.op_type != "Gemm":
        left = left[None, :]
    if left is not None and left.ndim >= 2:
        if node.op_type == "Gemm" and _attr(node, "transA", 0):
            left = left.T
        return _rows_mix(left)  # rows of A over K
    return False
