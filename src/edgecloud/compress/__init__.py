"""Shrink models for the edge: quantization (and, later, pruning and distillation).

``compress(repo, model, method)`` builds the compressed model in a scratch
directory, evaluates it against its parent (size, latency through
LocalBackend, fidelity), enforces the optional tolerance, and only then adds
it to the repository as a new version, with the method, its parameters, the
parent version and the evaluation in the version's metadata. A failure at any
step leaves the repository as it was.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CompressionError, ConfigError, EdgecloudError, InvalidRequestError
from ..repository import ModelRepository, ModelVersion, VersionPolicy
from .evaluate import EvalData, Evaluation, evaluate, random_inputs
from .methods import METHODS, CompressOptions, resolve

__all__ = ["METHODS", "CompressOptions", "CompressionResult", "EvalData", "Evaluation", "compress"]

Arrays = dict[str, np.ndarray[Any, Any]]

SENTENCES = [
    "The device answers most requests on its own.",
    "Hard cases are escalated to the cloud server.",
    "Quantization makes the model four times smaller.",
    "A cat sat on the warm windowsill in the sun.",
    "The train to the airport leaves every ten minutes.",
    "Latency matters more than throughput for this application.",
    "She bought fresh bread and cheese at the market.",
    "Privacy rules keep personal data on the phone.",
] * 4


@dataclass
class CompressionResult:
    model: str
    method: str
    parent_version: int
    version: ModelVersion
    parameters: dict[str, Any]
    evaluation: Evaluation


def eval_data(entry: ModelVersion) -> EvalData:
    """Labelled test data where the zoo has it; otherwise representative inputs."""
    if entry.config.metadata.get("dataset", "").startswith("sklearn digits"):
        from ..zoo import datasets

        test = datasets.digits("test")
        return EvalData({entry.config.inputs[0].name: test.x}, test.y, "digits test split")
    if (entry.path / "tokenizer.json").is_file():
        from ..zoo.minilm import tokenize

        return EvalData(tokenize(SENTENCES, entry.path / "tokenizer.json"), None, "sentences")
    return EvalData(random_inputs(entry.config), None, "random inputs (seed 0)")


def calibration_batches(entry: ModelVersion, source: str | Path | None) -> list[Arrays]:
    """Input batches for static quantization: an .npz file, or ``zoo`` for the model's own data."""
    if source is None:
        return []
    if str(source) == "zoo":
        if entry.config.metadata.get("dataset", "").startswith("sklearn digits"):
            from ..zoo import datasets

            x = datasets.digits("train").x[:512]
            return [{entry.config.inputs[0].name: x[i : i + 32]} for i in range(0, len(x), 32)]
        if (entry.path / "tokenizer.json").is_file():
            from ..zoo.minilm import tokenize

            return [tokenize(SENTENCES[i : i + 8], entry.path / "tokenizer.json")
                    for i in range(0, len(SENTENCES), 8)]  # fmt: skip
        raise InvalidRequestError(
            f"the zoo has no calibration data for {entry.name!r}; pass an .npz file"
        )
    return _npz_batches(Path(source), entry)


def _npz_batches(path: Path, entry: ModelVersion) -> list[Arrays]:
    if not path.is_file():
        raise InvalidRequestError(f"calibration file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidRequestError(f"cannot read calibration file {path}: {exc}") from exc
    names = [i.name for i in entry.config.inputs]
    if sorted(arrays) != sorted(names):
        raise InvalidRequestError(
            f"calibration file {path} holds {sorted(arrays)}; model {entry.name!r} needs {names}"
        )
    rows = len(next(iter(arrays.values())))
    return [{k: v[i : i + 32] for k, v in arrays.items()} for i in range(0, rows, 32)]


def compress(
    repo: ModelRepository,
    model: str,
    method: str,
    *,
    version: int | str | None = None,
    calibration: str | Path | None = None,
    tolerance: float | None = None,
    per_channel: bool = True,
    threads: int = 1,
    settings: dict[str, Any] | None = None,
) -> CompressionResult:
    """Compress a model version into a new version, evaluated and parity-checked.

    ``tolerance``: the most accuracy (points) the model may lose where labels
    exist; otherwise the most ``1 - min cosine`` between outputs. ``settings``
    overrides CompressOptions fields (e.g. ``{"amount": 0.5}`` for pruning).
    """
    torch_method = method in ("prune", "distill")
    run = None if torch_method else resolve(method)
    parent = _parent(repo, model, version)
    options = CompressOptions(
        calibration=calibration_batches(parent, calibration),
        per_channel=per_channel,
        transformer=(parent.path / "tokenizer.json").is_file(),
        **(settings or {}),
    )
    with tempfile.TemporaryDirectory(prefix="edgecloud-compress-") as tmp:
        target = Path(tmp) / "model.onnx"
        try:
            if run is None:
                from .torch_methods import TORCH_METHODS

                parameters = TORCH_METHODS[method](parent, target, options)
            else:
                parameters = run(parent.model_path, target, options)
        except EdgecloudError:
            raise
        except Exception as exc:  # onnx / onnxruntime quantizer errors
            raise CompressionError(
                f"{method} cannot compress model {model!r} version {parent.version}: "
                f"{' '.join(str(exc).split())[:300]}"
            ) from exc
        evaluation = _evaluate(parent, target, Path(tmp), threads)
        _check(evaluation, tolerance, model, method)
        extra = {k: v for k, v in parent.files.items() if k not in ("model.onnx", "model.pt")}
        added = repo.add_version(
            model,
            target,
            extra_files={k: parent.path / k for k in extra},
            metadata={
                "method": method,
                "parameters": parameters,
                "parent_version": parent.version,
                "evaluation": evaluation.as_dict(),
            },
        )
    return CompressionResult(model, method, parent.version, added, parameters, evaluation)


def _parent(repo: ModelRepository, model: str, version: int | str | None) -> ModelVersion:
    """The given version, else the newest version that is not itself compressed."""
    if version is not None:
        return repo.get(model, version, served_only=False)
    for number in reversed(repo.versions(model)):
        entry = repo.get(model, number, served_only=False, verify=False)
        if "method" not in entry.metadata:
            entry.verify()
            return entry
    raise CompressionError(f"model {model!r} has no uncompressed version to start from")


def _evaluate(parent: ModelVersion, target: Path, tmp: Path, threads: int) -> Evaluation:
    """Both versions side by side in a scratch repository that serves them both."""
    scratch = ModelRepository(tmp / "scratch")
    config = parent.config.model_copy(update={"version_policy": VersionPolicy(kind="all")})
    scratch.add_version(parent.name, parent.model_path, config=config, version=1)
    for name in parent.files:
        if name not in ("model.onnx",) and (parent.path / name).is_file():
            shutil.copy(parent.path / name, scratch.root / parent.name / "1" / name)
    try:
        scratch.add_version(parent.name, target, version=2)
        return evaluate(scratch, parent.name, 1, 2, eval_data(parent), threads=threads)
    except EdgecloudError as exc:
        raise CompressionError(f"the compressed model does not run: {exc.message}") from exc


def _check(evaluation: Evaluation, tolerance: float | None, model: str, method: str) -> None:
    if tolerance is None:
        return
    if tolerance < 0:
        raise ConfigError("tolerance must be >= 0")
    if evaluation.accuracy_drop_points is not None:
        if evaluation.accuracy_drop_points > tolerance:
            raise CompressionError(
                f"{method} on {model!r} loses {evaluation.accuracy_drop_points:.2f} accuracy "
                f"points ({evaluation.parent_accuracy:.2%} → {evaluation.accuracy:.2%}), more "
                f"than the tolerance of {tolerance:g}; the repository is unchanged"
            )
        return
    if 1 - evaluation.cosine_min > tolerance:
        raise CompressionError(
            f"{method} on {model!r}: outputs drift to cosine {evaluation.cosine_min:.4f} "
            f"(tolerance {tolerance:g} → at least {1 - tolerance:.4f}); the repository is unchanged"
        )
