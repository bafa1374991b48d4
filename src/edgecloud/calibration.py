"""``edgecloud calibrate``: choose a deployment's cascade threshold on labelled data.

::

    edgecloud calibrate -d deployment.yaml --data val.npz [--at root.guard.inner.cascade]
        (--target-accuracy R | --max-escalation E) [--guarantee DELTA]

The rows (``--data``: the inputs by name as a request carries them, plus
``labels``; without it the large model's version samples, if they carry
labels) go through the cascade's small and large models (:func:`run_model`);
the threshold is chosen on the cascade's own confidence measure and output
(:func:`edgecloud.routing.calibrate.calibrate_report`: on average with
Clopper–Pearson intervals, or with ``guarantee`` by Learn-then-Test,
:mod:`edgecloud.routing.guarantee`), and written into the file in place of
the old value: only that line changes (:mod:`edgecloud._yaml_edit`: under
a lock, so concurrent runs on one file each keep their edit; a read-only
file, a duplicate key, or a path through a YAML alias is refused before any
model runs). A symlinked file stays a link: the file it points to is
rewritten, and ``repository:`` is resolved from the link's directory, as
``edgecloud.load`` does.

Errors are one ConfigError naming the file and what to pass or fix.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _yaml_edit
from .backends.local import LocalBackend
from .deployment import CascadeNode, DeploymentSpec, _read, _validate, walk
from .errors import ConfigError, InvalidRequestError, ModelNotFoundError
from .repository import ModelRepository
from .routing.calibrate import Calibration, calibrate_report
from .routing.transforms import derive
from .samples import (
    LABELS,
    SAMPLES_FILE,
    Samples,
    class_indices,
    data_for,
    expected_inputs,
    finite,
    load_request_samples,
)
from .tensors import InferRequest

__all__ = ["Calibrated", "DeploymentFile", "calibrate_deployment", "find_cascades", "run_model"]

Array = np.ndarray[Any, Any]


@dataclass(frozen=True, slots=True)
class DeploymentFile:
    """A deployment file as calibration reads it (models are run, nothing is built)."""

    path: Path
    raw: dict[str, Any]
    spec: DeploymentSpec
    repository: ModelRepository


@dataclass(frozen=True, slots=True)
class Calibrated:
    """What ``calibrate_deployment`` chose and wrote."""

    path: Path
    at: str
    """YAML path of the cascade, e.g. ``root.fallback.primary.cascade``."""
    small_model: str
    large_model: str
    measure: str
    data: Path
    """The rows used: the ``--data`` file or the large model's samples."""
    calibration: Calibration
    written: bool


def find_cascades(spec: DeploymentSpec) -> dict[str, CascadeNode]:
    """Every cascade of the tree: YAML path (``root.fastest.paths.0.cascade``) -> its node,
    parents first (:func:`edgecloud.deployment.walk`)."""
    return {at: node for at, node in walk(spec) if isinstance(node, CascadeNode)}


def run_model(
    deployment: DeploymentFile, model: str, inputs: Mapping[str, Array]
) -> dict[str, Array]:
    """``model``'s outputs on request ``inputs`` (all rows), run on this machine.

    The one place calibration runs a model: its inputs derived from the
    request's as the deployment declares (``models:``, as every leaf of the
    built tree does), then a LocalBackend on the deployment's repository (runs
    larger than the model's batch size are split). Raises what the backend
    raises (InvalidRequestError for inputs the model does not take,
    ModelNotFoundError).
    """
    derived = derive(deployment.spec.models, model, dict(inputs))
    with LocalBackend(deployment.repository) as local:
        return local.infer(InferRequest(model, derived)).outputs


def request_inputs(deployment: DeploymentFile, small_model: str, large_model: str) -> list[str]:
    """The input names a request to the cascade carries.

    A model the file's ``models:`` section does not declare takes the request
    as it is, so the request carries its inputs (the large model's first);
    when both are declared, the request carries the sources their inputs are
    derived from.
    """
    models = deployment.spec.models
    for model in (large_model, small_model):
        if model not in models:
            return [spec.name for spec in deployment.repository.config(model).inputs]
    return sorted(
        {
            derivation.source or name
            for model in (small_model, large_model)
            for name, derivation in models[model].inputs.items()
        }
    )


def _check_options(
    target: float | None, max_escalation: float | None, guarantee: float | None
) -> None:
    if (target is None) == (max_escalation is None):
        raise ConfigError("pass exactly one of --target-accuracy R or --max-escalation E")
    checks: tuple[tuple[str, float | None, str, Callable[[float], bool]], ...] = (
        ("--target-accuracy", target, "(0, 1]", lambda v: 0.0 < v <= 1.0),
        ("--max-escalation", max_escalation, "[0, 1]", lambda v: 0.0 <= v <= 1.0),
        ("--guarantee", guarantee, "(0, 1)", lambda v: 0.0 < v < 1.0),
    )
    for name, value, domain, inside in checks:
        if value is not None and not (math.isfinite(value) and inside(value)):
            raise ConfigError(f"{name} must be in {domain}, got {value}")


def _choose(path: Path, cascades: Mapping[str, CascadeNode], at: str | None) -> str:
    if not cascades:
        raise ConfigError(f"{path}: no cascade node to calibrate")
    if at is not None:
        if at not in cascades:
            raise ConfigError(
                f"{path}: --at {at}: no cascade there; cascades: {', '.join(cascades)}"
            )
        return at
    if len(cascades) > 1:
        raise ConfigError(
            f"{path}: {len(cascades)} cascades; pick one with --at: {', '.join(cascades)}"
        )
    return next(iter(cascades))


def _rows(deployment: DeploymentFile, small: str, large: str, data: Path | None) -> Samples:
    """The labelled rows: ``data``, else the large model's labelled version samples."""
    if data is not None:
        samples = load_request_samples(data, request_inputs(deployment, small, large))
        if samples.labels is None:
            raise ConfigError(
                f"samples file {samples.source} has no '{LABELS}' array: calibration needs "
                "the right class of every row"
            )
        return samples
    version = deployment.repository.get(large)
    if SAMPLES_FILE not in version.files:
        raise ConfigError(
            f"calibrate needs labelled rows: model {large!r} version {version.version} "
            f"carries no samples: pass --data FILE.npz with inputs named "
            f"{expected_inputs(version.config)} and '{LABELS}' (required), one per row"
        )
    samples = data_for(version)
    if samples.labels is None:
        raise ConfigError(
            f"model {large!r} version {version.version}'s samples carry no labels: pass "
            f"--data FILE.npz with inputs named {expected_inputs(version.config)} and "
            f"'{LABELS}', one per row"
        )
    return samples


def _probabilities(
    deployment: DeploymentFile, model: str, samples: Samples, output: str, where: str
) -> Array:
    try:
        outputs = run_model(deployment, model, samples.inputs)
    except InvalidRequestError as exc:
        config = deployment.repository.config(model)
        raise ConfigError(
            f"samples file {samples.source}: model {model!r} cannot run these inputs: "
            f"{exc.message}; it takes {expected_inputs(config)}"
        ) from exc
    if output not in outputs:
        raise ConfigError(
            f"{where}.output: model {model!r} has no output {output!r} "
            f"(outputs: {', '.join(outputs)})"
        )
    return outputs[output]


def _models(deployment: DeploymentFile, cascade: CascadeNode, where: str) -> tuple[str, str]:
    names = []
    for key in ("small_model", "large_model"):
        name = getattr(cascade, key)
        if not name:
            raise ConfigError(f"{where}: set small_model and large_model to calibrate")
        try:
            deployment.repository.config(name)
        except ModelNotFoundError as exc:
            raise ConfigError(
                f"{where}.{key}: model {name!r} is not in {deployment.repository.root} "
                f"({exc.message})"
            ) from exc
        names.append(name)
    return names[0], names[1]


def _labels(
    deployment: DeploymentFile, small: str, large: str, samples: Samples, scores: Array
) -> Array:
    """The rows' class indices (:func:`class_indices`: the check every consumer shares),
    in ``[0, classes)`` for the large model's ``scores`` [rows, classes]."""
    assert samples.labels is not None
    classes = [deployment.repository.config(m).labels for m in (small, large)]
    if classes[0] and classes[1] and classes[0] != classes[1]:
        raise ConfigError(
            f"models {small!r} and {large!r} declare different class names; a cascade "
            "needs both to answer the same classes"
        )
    n = int(scores.shape[1]) if scores.ndim == 2 else None
    names = classes[1] or classes[0]
    return class_indices(samples.labels, names, f"samples file {samples.source}", n)


def open_deployment(path: Path) -> DeploymentFile:
    """The deployment at ``path``; its ``repository:`` resolved as ``edgecloud.load`` does
    (relative to the file as named: a symlink's own directory) and required to exist."""
    raw = _read(path)
    spec = _validate(DeploymentSpec, raw, "", str(path))
    repo = Path(spec.repository)
    root = repo if repo.is_absolute() else path.parent / repo
    if not root.is_dir():
        raise ConfigError(
            f"{path}: repository: {root} "
            + ("is not a directory" if root.exists() else "does not exist")
            + (
                f" (relative paths are resolved from {path.parent})"
                if not repo.is_absolute()
                else ""
            )
        )
    return DeploymentFile(path, raw, spec, ModelRepository(root))


def calibrate_deployment(
    path: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    at: str | None = None,
    target: float | None = None,
    max_escalation: float | None = None,
    guarantee: float | None = None,
    write: bool = True,
) -> Calibrated:
    """Calibrate one cascade of the deployment at ``path`` and write its threshold.

    ``at``: the cascade's YAML path (needed when the file has several).
    ``target`` (relative accuracy, in (0, 1]) or ``max_escalation`` (in [0, 1]);
    ``guarantee`` δ in (0, 1): a threshold certified by Learn-then-Test.
    ``write=False`` only reports. Raises ConfigError for every problem (the
    file is then left exactly as it was).
    """
    _check_options(target, max_escalation, guarantee)
    path = Path(path)
    deployment = open_deployment(path)
    where = str(path)
    cascades = find_cascades(deployment.spec)
    chosen = _choose(path, cascades, at)
    cascade = cascades[chosen]
    keys: list[str | int] = [int(k) if k.isdigit() else k for k in chosen.split(".")]
    keys.append("threshold")
    with path.resolve().open(encoding="utf-8", newline="") as f:
        _yaml_edit.locate(f.read(), keys, where)  # refuse an alias or merge before any work
    if write:
        _yaml_edit.check_writable(path)  # and a file it may not write
    small, large = _models(deployment, cascade, f"{where}: {chosen}")
    # NaN rows would calibrate on answers that mean nothing (a model may map NaN to finite
    # scores): refused, as compress and split refuse them
    samples = finite(_rows(deployment, small, large, Path(data) if data is not None else None),
                     "calibrate")  # fmt: skip
    probs = [
        _probabilities(deployment, m, samples, cascade.output, f"{where}: {chosen}")
        for m in (small, large)
    ]
    labels = _labels(deployment, small, large, samples, probs[1])
    try:
        calibration = calibrate_report(
            probs[0], probs[1], labels, measure=cascade.confidence,
            target_relative_accuracy=target, max_escalation_rate=max_escalation,
            guarantee=guarantee,
        )  # fmt: skip
    except ConfigError as exc:
        raise ConfigError(f"{where}: {chosen}: {exc.message} ({samples.source})") from exc
    threshold = calibration.point.threshold
    if write:
        _yaml_edit.replace_scalar(path, keys, threshold, repr(threshold))
    return Calibrated(
        path=path, at=chosen, small_model=small, large_model=large,
        measure=cascade.confidence, data=samples.source, calibration=calibration, written=write,
    )  # fmt: skip
