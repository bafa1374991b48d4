"""Head and tail as ordinary model versions in a repository.

For a cut ``cutN`` of model ``m`` version ``v``:

- ``m.head.cutN`` version ``v`` runs on the device (inputs → cut tensors);
- ``m.tail.cutN`` version ``v`` (``m.tail.cutN.fp16`` / ``.int8`` with an
  activation codec) runs on the server (cut tensors → outputs).

Any Open Inference Protocol server that serves the repository hosts the tail:
it is a plain ONNX model with a plain config. Each version records its parent
(name, version, sha256), the cut and the codec; writing the same split again
reuses it, and a stale one (another parent behind the same version) is an error.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import ConfigError
from ..repository import ModelRepository, ModelVersion, config_from_onnx
from .codec import Codec, add_decoder, check_codec, encode
from .partition import CutPoint, extract

__all__ = ["SplitPair", "fidelity", "head_name", "tail_name", "write_split"]

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
    repo: ModelRepository, parent: ModelVersion, cut: CutPoint, codec: str = "fp32"
) -> SplitPair:
    """Write (or reuse) the head and tail versions of ``parent`` cut at ``cut``."""
    codec = check_codec(codec)
    onnx = require("onnx", extra="compress", feature="model partitioning")
    provenance = {
        "split_of": parent.name,
        "parent_version": parent.version,
        "parent_sha256": parent.files.get("model.onnx", ""),
        "cut": cut.name,
        "tensors": list(cut.tensors),
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
        written = {}
        for role, path in (("head", head_path), ("tail", tail_path)):
            name = names[role]
            if existing[role] is not None:
                written[role] = existing[role]
                continue
            config = config_from_onnx(
                path,
                name,
                max_batch_size=_batch_limit(parent, path),
                description=f"{role} of {parent.name} v{parent.version} cut at {cut.name}",
                metadata={"split_of": parent.name, "role": role, "cut": cut.name},
            )
            written[role] = repo.add_version(
                name,
                path,
                config=config,
                version=parent.version,
                metadata={**provenance, "role": role, "codec": codec if role == "tail" else "fp32"},
            )
    return SplitPair(cut, codec, written["head"], written["tail"])  # type: ignore[arg-type]


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
    """Cosine similarity of ``tail(encode(head(x)))`` to the parent's outputs (worst output)."""
    import onnxruntime as ort

    def run(path: Path, feed: Arrays) -> Arrays:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, feed), strict=True))

    expected = run(parent.model_path, inputs)
    middle = {**inputs, **run(pair.head.model_path, inputs)}
    feed = encode(pair.codec, {name: middle[name] for name in pair.cut.tensors})
    got = run(pair.tail.model_path, feed)
    worst = 1.0
    for name, want in expected.items():
        a, b = want.astype(np.float64).ravel(), got[name].astype(np.float64).ravel()
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        cosine = float(a @ b / norm) if norm > 0 else float(np.array_equal(a, b))
        worst = min(worst, cosine)
    return worst
