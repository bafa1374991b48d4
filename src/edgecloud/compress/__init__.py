"""Shrink models for the edge: quantization, structured pruning, distillation.

``compress(repo, model, method, options=..., data=...)`` builds the compressed
model in a scratch directory, evaluates it against its parent (size, latency
through LocalBackend, fidelity), enforces the optional tolerance, and only
then adds it to the repository as a new version, with the method, its
parameters, the parent version and the evaluation in the version's metadata.
A failure at any step leaves the repository as it was.

Each method takes one typed options model (:mod:`.methods`: e.g.
``Int8StaticOptions``, ``PruneOptions``), given as the model or as a dict of
its fields. Evaluation data (:func:`evaluation_data`): ``data`` (``--data
FILE.npz``; ``--val`` for the training methods, whose ``--data`` is their
training set), else the version's samples, else one ConfigError naming the
flag; ``data="random"`` evaluates on seeded random inputs — agreement with
the parent only, which says nothing about accuracy on real inputs.

Building and evaluating run in a worker process under a time limit
(:mod:`.worker`), reporting progress; a method that cannot convert graphs with
control flow (If/Loop/Scan) refuses them before any work, saying why; a
compressed model with NaN/Inf outputs or a non-finite fidelity figure is
refused whatever the tolerance (:func:`check_fidelity`).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .._optional import available
from ..errors import CompressionError, ConfigError, EdgecloudError, describe
from ..repository import ModelRepository, ModelVersion, VersionPolicy
from ..samples import data_for, finite
from . import torch_methods  # noqa: F401  (registers prune and distill)
from .evaluate import EvalData, Evaluation, check_fidelity, evaluate, labelled, random_inputs
from .methods import (
    METHODS,
    Method,
    MethodOptions,
    check_needs,
    options_for,
    refuse_unsupported,
    resolve,
)
from .worker import Progress, run_limited

__all__ = [
    "METHODS",
    "RANDOM",
    "REPORT_FILES",
    "CompressionResult",
    "EvalData",
    "Evaluation",
    "MethodOptions",
    "compress",
    "evaluation_data",
]

DEFAULT_TIME_LIMIT_S = 1800.0
"""Building plus evaluating one compressed version. The zoo's MiniLM takes 7-9 s wall
(int8-dynamic, int8-static, fp16; `edgecloud compress`, 2 shared cores): half an hour
means something is stuck, as fp16 on Silero VAD was for over ten minutes."""

RANDOM = "random"
"""``--data random``: evaluate on seeded random inputs of the declared shapes."""


@dataclass
class CompressionResult:
    model: str
    method: str
    parent_version: int
    version: ModelVersion
    parameters: dict[str, Any]
    evaluation: Evaluation


def evaluation_data(
    parent: ModelVersion, data: str | os.PathLike[str] | None, *, flag: str = "--data"
) -> EvalData:
    """What the compressed model is compared with its parent on.

    ``data``: a samples file (labels give accuracy, else agreement and cosine
    with the parent), :data:`RANDOM` (seeded random inputs: agreement only,
    nothing about accuracy), or None for the version's samples. ConfigError
    naming ``flag`` when there is none, or naming the file when it does not fit.
    """
    if data is not None and str(data) == RANDOM:
        return EvalData(
            random_inputs(parent.config), None, "random inputs (seed 0; no measure of accuracy)"
        )
    samples = finite(data_for(parent, data, flag=flag), "compress evaluation")
    source = str(samples.source) if data is not None else f"{parent.name} samples"
    found = EvalData(samples.inputs, samples.labels, source)
    return labelled(parent.config, found, f"samples file {samples.source}")


def compress(
    repo: ModelRepository,
    model: str,
    method: str,
    *,
    options: MethodOptions | Mapping[str, Any] | None = None,
    data: str | os.PathLike[str] | None = None,
    version: int | str | None = None,
    tolerance: float | Literal["default"] | None = None,
    threads: int = 1,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
    progress: Progress | None = None,
    spell: Callable[[str], str] = repr,
    report: bool = False,
) -> CompressionResult:
    """Compress a model version into a new version, evaluated and parity-checked.

    ``options``: the method's options model or a dict of its fields
    (:func:`~.methods.options_for`). ``data``: evaluation data (see
    :func:`evaluation_data`). ``tolerance``: the most accuracy (points) the
    model may lose where labels exist and the first output holds class scores
    (labels checked by :func:`~edgecloud.samples.class_indices`; a regression's
    targets are checked but not scored); otherwise the most ``1 - min cosine``
    between outputs; ``"default"`` (what the CLI uses unless ``--tolerance`` is
    given): :data:`~.evaluate.DEFAULT_TOLERANCE_POINTS` with labels, else
    :data:`~.evaluate.DEFAULT_TOLERANCE_COSINE`. Whatever the tolerance, a
    compressed model whose outputs hold NaN or Inf, or any fidelity figure that
    is not finite, is refused.
    Building and evaluating run in a worker process stopped after
    ``time_limit_s`` seconds (None: no limit); ``progress`` receives
    ``(fraction, text)``; ``spell`` writes an option's name in errors (the CLI:
    its flag). ``report``: publish ``report.md`` (and ``report.png`` where
    matplotlib is installed) with the version, hashed in its ``version.json``
    like the model: a published version never changes afterwards.

    Raises CompressionError (cannot compress, lost too much, not finite),
    DeadlineExceededError (time limit), ConfigError / InvalidRequestError (bad
    method, options or data); the repository is then unchanged.
    """
    if isinstance(tolerance, str) and tolerance != "default":
        raise ConfigError(f"tolerance must be a number >= 0 or 'default', got {tolerance!r}")
    if isinstance(tolerance, float | int) and not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"tolerance must be a number >= 0 and finite, got {tolerance}")
    spec = resolve(method)
    checked = options_for(method, options, spell=spell)
    check_needs(method)
    parent = _parent(repo, model, version)
    refuse_unsupported(parent.model_path, method)
    if spec.trains:  # what a training method lacks first is its training data
        data_for(parent, getattr(checked, "data", None), purpose=f"compress -m {method}")
    evaluation_on = evaluation_data(parent, data, flag="--val" if spec.trains else "--data")
    with tempfile.TemporaryDirectory(prefix="edgecloud-compress-") as tmp:
        target = Path(tmp) / "model.onnx"
        parameters, evaluation = run_limited(
            _build_and_evaluate,
            (spec, parent, target, checked, evaluation_on, threads),
            limit_s=time_limit_s,
            what=f"{method} on {model!r} version {parent.version}",
            progress=progress,
        )
        check_fidelity(evaluation, tolerance, model, method)
        inherited = {k for k in parent.files if k not in ("model.onnx", "model.pt", *REPORT_FILES)}
        extra: dict[str, str | os.PathLike[str] | bytes] = {k: parent.path / k for k in inherited}
        number = repo.next_version(model)
        if report:
            extra.update(_report_files(model, method, parent.version, number, evaluation, tmp))
        added = repo.add_version(
            model,
            target,
            version=number,  # the number the report names; taken meanwhile: ConfigError
            extra_files=extra,
            metadata={
                "method": method,
                "parameters": parameters,
                "parent_version": parent.version,
                "evaluation": evaluation.as_dict(),
            },
        )
    return CompressionResult(model, method, parent.version, added, parameters, evaluation)


REPORT_FILES = ("report.md", "report.png")
"""What ``report=True`` publishes with a compressed version (never inherited)."""


def _report_files(
    model: str, method: str, parent: int, number: int, evaluation: Evaluation, tmp: str
) -> dict[str, str | os.PathLike[str] | bytes]:
    """report.md, and report.png when matplotlib is installed, rendered in ``tmp``."""
    from . import report

    row = report.Row(model, method, parent, number, evaluation)
    files: dict[str, str | os.PathLike[str] | bytes] = {
        "report.md": report.markdown([row]).encode()
    }
    if available("matplotlib"):
        files["report.png"] = report.plot([row], Path(tmp) / "report.png")
    return files


def _build_and_evaluate(
    spec: Method,
    parent: ModelVersion,
    target: Path,
    options: MethodOptions,
    data: EvalData,
    threads: int,
    progress: Progress,
) -> tuple[dict[str, Any], Evaluation]:
    """The worker's part (see :func:`run_limited`): write ``target``, then evaluate it."""
    progress(0.0, "compressing")
    try:
        parameters = spec.build(
            parent, target, options, lambda fraction, text: progress(0.7 * fraction, text)
        )
    except EdgecloudError:
        raise
    except Exception as exc:  # onnx / onnxruntime quantizer errors
        raise CompressionError(
            f"{spec.name} cannot compress model {parent.name!r} version {parent.version}: "
            f"{describe(exc)[:300]}"
        ) from exc
    progress(0.7, "evaluating against the parent")
    return parameters, _evaluate(parent, target, target.parent, data, threads)


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


def _evaluate(
    parent: ModelVersion, target: Path, tmp: Path, data: EvalData, threads: int
) -> Evaluation:
    """Both versions side by side in a scratch repository that serves them both."""
    scratch = ModelRepository(tmp / "scratch")
    config = parent.config.model_copy(update={"version_policy": VersionPolicy(kind="all")})
    scratch.add_version(parent.name, parent.model_path, config=config, version=1)
    for name in parent.files:
        if name not in ("model.onnx",) and (parent.path / name).is_file():
            shutil.copy(parent.path / name, scratch.root / parent.name / "1" / name)
    try:
        scratch.add_version(parent.name, target, version=2)
        return evaluate(scratch, parent.name, 1, 2, data, threads=threads)
    except CompressionError:
        raise
    except EdgecloudError as exc:
        raise CompressionError(f"the compressed model does not run: {describe(exc)}") from exc
