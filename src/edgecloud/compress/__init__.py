"""Shrink models for the edge: quantization (and, later, pruning and distillation).

``compress(repo, model, method)`` builds the compressed model in a scratch
directory, evaluates it against its parent (size, latency through
LocalBackend, fidelity), enforces the optional tolerance, and only then adds
it to the repository as a new version, with the method, its parameters, the
parent version and the evaluation in the version's metadata. A failure at any
step leaves the repository as it was.

Building and evaluating run in a worker process under a time limit
(:mod:`.worker`), reporting progress; a method that cannot convert graphs with
control flow (If/Loop/Scan) refuses them before any work, saying why; a
compressed model with NaN/Inf outputs or a non-finite fidelity figure is
refused whatever the tolerance (:func:`check_fidelity`).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._config_files import checked_path
from ..errors import (
    CompressionError,
    ConfigError,
    EdgecloudError,
    InvalidRequestError,
    describe,
)
from ..repository import ModelRepository, ModelVersion, VersionPolicy
from .evaluate import EvalData, Evaluation, check_fidelity, evaluate, random_inputs
from .methods import (
    METHODS,
    TORCH_METHOD_NAMES,
    CompressOptions,
    check_needs,
    refuse_unsupported,
    resolve_any,
)
from .worker import Progress, run_limited

__all__ = ["METHODS", "CompressOptions", "CompressionResult", "EvalData", "Evaluation", "compress"]

Arrays = dict[str, np.ndarray[Any, Any]]

DEFAULT_TIME_LIMIT_S = 1800.0
"""Building plus evaluating one compressed version. The zoo's MiniLM takes 7-9 s wall
(int8-dynamic, int8-static, fp16; `edgecloud compress`, 2 shared cores): half an hour
means something is stuck, as fp16 on Silero VAD was for over ten minutes."""

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
    checked_path(path, "file", "calibration file")
    if not zipfile.is_zipfile(path):  # np.load would read an .npy, or report "pickled data"
        raise InvalidRequestError(
            f"calibration file {path} is not an .npz file (arrays named after the model's "
            "inputs, written by numpy.savez)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidRequestError(f"cannot read calibration file {path}: {describe(exc)}") from exc
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
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
) -> CompressionResult:
    """Compress a model version into a new version, evaluated and parity-checked.

    ``tolerance``: the most accuracy (points) the model may lose where labels
    exist; otherwise the most ``1 - min cosine`` between outputs. Whatever the
    tolerance, a compressed model whose outputs hold NaN or Inf, or any
    fidelity figure that is not finite, is refused. ``settings`` overrides
    CompressOptions fields (e.g. ``{"amount": 0.5}`` for pruning; ``progress``
    receives ``(fraction, text)``). Building and evaluating run in a worker
    process stopped after ``time_limit_s`` seconds (None: no limit).

    Raises CompressionError (cannot compress, lost too much, not finite),
    DeadlineExceededError (time limit), ConfigError / InvalidRequestError (bad
    method, settings or calibration data); the repository is then unchanged.
    """
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"tolerance must be a number >= 0 and finite, got {tolerance}")
    build = resolve_any(method)
    check_needs(method)
    parent = _parent(repo, model, version)
    refuse_unsupported(parent.model_path, method)
    options = CompressOptions(
        calibration=calibration_batches(parent, calibration),
        per_channel=per_channel,
        transformer=(parent.path / "tokenizer.json").is_file(),
        **(settings or {}),
    )
    progress, options.progress = options.progress, None  # a closure does not pickle
    with tempfile.TemporaryDirectory(prefix="edgecloud-compress-") as tmp:
        target = Path(tmp) / "model.onnx"
        parameters, evaluation = run_limited(
            _build_and_evaluate,
            (build, method, parent, target, options, threads),
            limit_s=time_limit_s,
            what=f"{method} on {model!r} version {parent.version}",
            progress=progress,
        )
        check_fidelity(evaluation, tolerance, model, method)
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


def _build_and_evaluate(
    build: Callable[..., dict[str, Any]],
    method: str,
    parent: ModelVersion,
    target: Path,
    options: CompressOptions,
    threads: int,
    progress: Progress,
) -> tuple[dict[str, Any], Evaluation]:
    """The worker's part (see :func:`run_limited`): write ``target``, then evaluate it."""
    options.progress = lambda fraction, text: progress(0.7 * fraction, text)
    progress(0.0, "compressing")
    try:
        source = parent if method in TORCH_METHOD_NAMES else parent.model_path
        parameters = build(source, target, options)
    except EdgecloudError:
        raise
    except Exception as exc:  # onnx / onnxruntime quantizer errors
        raise CompressionError(
            f"{method} cannot compress model {parent.name!r} version {parent.version}: "
            f"{describe(exc)[:300]}"
        ) from exc
    progress(0.7, "evaluating against the parent")
    return parameters, _evaluate(parent, target, target.parent, threads)


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
    except CompressionError:
        raise
    except EdgecloudError as exc:
        raise CompressionError(f"the compressed model does not run: {describe(exc)}") from exc
