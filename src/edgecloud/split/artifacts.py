"""Head and tail as ordinary model versions in a repository.

For a cut ``cutN`` of model ``m`` version ``v``:

- ``m.head.cutN`` version ``v`` runs on the device (inputs → cut tensors);
- ``m.tail.cutN`` version ``v`` (``m.tail.cutN.fp16`` / ``.int8`` with an
  activation codec) runs on the server (cut tensors → outputs).

Any Open Inference Protocol server that serves the repository hosts the tail:
it is a plain ONNX model with a plain config. Each version records its parent
(name, version, sha256), the cut, the codec and the raw inputs the tail
receives; writing the same split again reuses it, and a stale one (another
parent behind the same version) is an error.

Writing is all-or-nothing: both parts are extracted, checked numerically
against the parent (``tail(head(x))`` equals the full model) and given their
configs in a scratch directory before anything is added; the two versions
are then added inside :func:`all_or_nothing`, which removes what this call
added — and restores the configs it rewrote — if anything fails, so the
repository never holds a head without its tail.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import ConfigError, EdgecloudError
from ..repository import (
    CONFIG_FILE,
    ModelRepository,
    ModelVersion,
    VersionPolicy,
    config_from_onnx,
)
from .codec import Codec, add_decoder, check_codec, encode
from .partition import CutPoint, extract, run_model, verify_split

__all__ = [
    "SplitPair",
    "all_or_nothing",
    "fidelity",
    "head_name",
    "tail_name",
    "write_split",
]

Arrays = dict[str, np.ndarray[Any, Any]]


def head_name(model: str, cut: str) -> str:
    return f"{model}.head.{cut}"


def tail_name(model: str, cut: str, codec: str = "fp32") -> str:
    return f"{model}.tail.{cut}" + ("" if codec == "fp32" else f".{codec}")


@dataclass(frozen=True, slots=True)
class SplitPair:
    """A cut written to the repository: the device's head and the server's tail."""

    cut: CutPoint
    codec: Codec
    head: ModelVersion
    tail: ModelVersion


def write_split(
    repo: ModelRepository,
    parent: ModelVersion,
    cut: CutPoint,
    codec: str = "fp32",
    inputs: Arrays | None = None,
) -> SplitPair:
    """Write (or reuse) the head and tail versions of ``parent`` cut at ``cut``.

    ``inputs`` (default: the parent's evaluation data, two rows) are what
    ``tail(head(x))`` is checked on before anything is written. Raises
    ConfigError when the split diverges from the parent or a part does not
    run, EdgecloudError when the repository cannot be written; either way no
    part of this split is left in the repository.
    """
    codec = check_codec(codec)
    onnx = require("onnx", extra="compress", feature="model partitioning")
    provenance = {
        "split_of": parent.name,
        "parent_version": parent.version,
        "parent_sha256": parent.files.get("model.onnx", ""),
        "cut": cut.name,
        "tensors": list(cut.tensors),
        "raw_inputs_of_tail": list(cut.raw_inputs),
    }
    names = {
        "head": head_name(parent.name, cut.name),
        "tail": tail_name(parent.name, cut.name, codec),
    }
    existing = {
        role: _existing(repo, name, parent.version, provenance) for role, name in names.items()
    }
    if all(existing.values()):
        return SplitPair(cut, codec, existing["head"], existing["tail"])  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="edgecloud-split-") as tmp:
        head_path, tail_path = extract(parent.model_path, cut, Path(tmp))
        onnx.save(add_decoder(onnx.load(str(tail_path)), codec), str(tail_path))
        _verify(parent, cut, codec, head_path, tail_path, inputs)
        paths = {"head": head_path, "tail": tail_path}
        configs = {role: _config(parent, cut, role, names[role], paths[role]) for role in paths}
        written = {}
        with all_or_nothing(repo, parent.name):
            for role, path in paths.items():
                if existing[role] is not None:
                    written[role] = existing[role]
                    continue
                written[role] = _add(repo, names[role], path, configs[role], parent, {
                    **provenance, "role": role, "codec": codec if role == "tail" else "fp32"
                })  # fmt: skip
    return SplitPair(cut, codec, written["head"], written["tail"])  # type: ignore[arg-type]


LOSSY_COSINE = 0.99
"""Least cosine of ``tail(encode(head(x)))`` to the parent with fp16/int8 activations:
the floor a SplitBackend applies by default (``min_cosine``), so no split is written
that the planner would never pick for fidelity."""


def _verify(
    parent: ModelVersion,
    cut: CutPoint,
    codec: Codec,
    head: Path,
    tail: Path,
    inputs: Arrays | None,
) -> None:
    """Refuse a split whose composition is not the parent (before anything is written).

    fp32: ``tail(head(x))`` equals the parent (rtol 1e-3, atol 1e-4; for a parent
    that computes in half precision, an ``fp16`` version, :data:`HALF_TOLERANCE`);
    fp16/int8: same output names, dtypes and shapes, cosine at least
    :data:`LOSSY_COSINE`.
    """
    if inputs is None:
        from .workflow import sample_inputs

        inputs = sample_inputs(parent, batch=2)
    try:
        if codec == "fp32":
            rtol, atol = HALF_TOLERANCE if _computes_in_half(parent.model_path) else (1e-3, 1e-4)
            verify_split(parent.model_path, head, tail, inputs, rtol=rtol, atol=atol)
            return
        cosine = _composed_cosine(parent.model_path, head, tail, cut, codec, inputs)
    except EdgecloudError as exc:
        problem = exc.message
    else:
        if cosine >= LOSSY_COSINE:
            return
        problem = f"with {codec} activations the outputs reach cosine {cosine:.4f} only"
    raise ConfigError(
        f"cannot split {parent.name!r} version {parent.version} at {cut.name}"
        f"{'' if codec == 'fp32' else f' with {codec} activations'}: {problem}; "
        "nothing was written"
    )


HALF_TOLERANCE = (1e-2, 1e-3)
"""(rtol, atol) of the fp32 check for a parent holding float16/bfloat16 tensors. A few
ulps of float16 (machine epsilon 2**-10 ≈ 9.8e-4): onnxruntime may run the whole model
with a Cast pair removed (in float32) but the tail from the float16 tensor it receives."""


def _computes_in_half(model: Path) -> bool:
    onnx = require("onnx", extra="compress", feature="model partitioning")
    from .partition import _load

    half = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    graph = _load(model).graph
    infos = [*graph.value_info, *graph.input, *graph.output]
    return any(i.type.tensor_type.elem_type in half for i in infos) or any(
        t.data_type in half for t in graph.initializer
    )


def _composed_cosine(
    model: Path, head: Path, tail: Path, cut: CutPoint, codec: Codec, inputs: Arrays
) -> float:
    """Worst cosine of ``tail(encode(head(x)))`` to the model (NaN if any is NaN)."""
    expected = run_model(model, inputs)
    middle = {**inputs, **run_model(head, inputs)}
    got = run_model(tail, encode(codec, {name: middle[name] for name in cut.tensors}))
    return _worst_cosine(expected, got)


def _worst_cosine(expected: Arrays, got: Arrays) -> float:
    """Smallest cosine over outputs; NaN when any output is NaN/Inf or of another dtype/shape."""
    worst = 1.0
    for name, want in expected.items():
        have = got.get(name)
        if have is None or have.dtype != want.dtype or have.shape != want.shape:
            return float("nan")
        a, b = want.astype(np.float64).ravel(), have.astype(np.float64).ravel()
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            return float("nan")
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        cosine = float(a @ b / norm) if norm > 0 else float(np.array_equal(a, b))
        worst = min(worst, cosine)
    return worst


def _config(parent: ModelVersion, cut: CutPoint, role: str, name: str, path: Path) -> Any:
    return config_from_onnx(
        path,
        name,
        max_batch_size=_batch_limit(parent, path),
        version_policy=VersionPolicy(kind="all"),  # each version is the split of that parent's
        description=f"{role} of {parent.name} v{parent.version} cut at {cut.name}",
        metadata={"split_of": parent.name, "role": role, "cut": cut.name},
    )


def _add(
    repo: ModelRepository,
    name: str,
    path: Path,
    config: Any,
    parent: ModelVersion,
    metadata: dict[str, Any],
) -> ModelVersion:
    try:
        return repo.add_version(
            name, path, config=config, version=parent.version, metadata=metadata
        )
    except EdgecloudError:
        raise
    except OSError as exc:
        raise EdgecloudError(
            f"cannot write {name} version {parent.version} into {repo.root}: "
            f"{exc.strerror or type(exc).__name__} ({exc.filename}); nothing of this split "
            "was kept"
        ) from exc


@contextlib.contextmanager
def all_or_nothing(repo: ModelRepository, model: str) -> Iterator[None]:
    """Undo, on any exception, what the block added to ``model``'s split models.

    The split models of ``model`` are the directories ``model.head.*`` and
    ``model.tail.*``; a new one is removed, a new version of an existing one is
    removed and its config restored. Other models are not touched. The block is
    one repository transaction: if the process dies inside it, readers never see
    its versions and the next writer rolls them back.
    """
    with repo.transaction():  # and a crash: see ModelRepository.transaction
        before = _split_dirs(repo, model)
        try:
            yield
        except BaseException:
            for name in _split_dirs(repo, model):
                _restore(repo.root / name, before.get(name))
            raise


def _restore(directory: Path, state: tuple[set[str], bytes | None] | None) -> None:
    if state is None:
        shutil.rmtree(directory, ignore_errors=True)
        return
    entries, config = state
    for child in directory.iterdir():
        if child.name not in entries:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    if config is not None:
        (directory / CONFIG_FILE).write_bytes(config)


def _split_dirs(repo: ModelRepository, model: str) -> dict[str, tuple[set[str], bytes | None]]:
    """Each split model directory of ``model``: its entries and its config's bytes."""
    found: dict[str, tuple[set[str], bytes | None]] = {}
    if not repo.root.is_dir():
        return found
    for directory in repo.root.iterdir():
        if directory.is_dir() and directory.name.startswith((f"{model}.head.", f"{model}.tail.")):
            config = directory / CONFIG_FILE
            entries = {child.name for child in directory.iterdir()}
            found[directory.name] = (entries, config.read_bytes() if config.is_file() else None)
    return found


def _existing(
    repo: ModelRepository, name: str, version: int, provenance: dict[str, Any]
) -> ModelVersion | None:
    if name not in repo.model_names() or version not in repo.versions(name):
        return None
    entry = repo.get(name, version, served_only=False)
    if entry.metadata.get("parent_sha256") != provenance["parent_sha256"]:
        raise ConfigError(
            f"{repo.root / name / str(version)} was split from another {provenance['split_of']} "
            f"version {version}; remove it to split again"
        )
    return entry


def _batch_limit(parent: ModelVersion, path: Path) -> int:
    """The parent's batch limit when every tensor of this part has a batch dimension."""
    limit = parent.config.max_batch_size
    if limit <= 0:
        return 0
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tensors = [*session.get_inputs(), *session.get_outputs()]
    batched = all(t.shape and not isinstance(t.shape[0], int) for t in tensors)
    return limit if batched else 0


def fidelity(parent: ModelVersion, pair: SplitPair, inputs: Arrays) -> float:
    """Cosine similarity of ``tail(encode(head(x)))`` to the parent's outputs (worst output).

    NaN when an output holds NaN/Inf or differs in dtype or shape (never hidden
    by ``min``, which would skip a NaN).
    """
    return _composed_cosine(
        parent.model_path, pair.head.model_path, pair.tail.model_path, pair.cut, pair.codec, inputs
    )
