"""``edgecloud calibrate``: choose a deployment's cascade threshold on labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .backends.local import LocalBackend
from .deployment import DeploymentSpec, _read, _validate
from .errors import ConfigError
from .repository import ModelRepository
from .routing.calibrate import OperatingPoint, calibrate
from .tensors import InferRequest
from .zoo import datasets

__all__ = ["calibrate_deployment"]


def _find_cascade(node: Any, at: str = "root") -> tuple[dict[str, Any], str] | None:
    if isinstance(node, dict):
        if "cascade" in node and isinstance(node["cascade"], dict):
            return node["cascade"], f"{at}.cascade"
        for key, value in node.items():
            found = _find_cascade(value, f"{at}.{key}")
            if found:
                return found
    return None


def calibrate_deployment(
    path: Path,
    *,
    dataset: str = "digits",
    split: str = "val",
    target: float | None = None,
    max_escalation: float | None = None,
) -> OperatingPoint:
    """Calibrate the deployment's (first) cascade and write the threshold back."""
    if split == "test":
        raise ConfigError("calibrate on the validation split; the test split is for measuring")
    raw = _read(path)
    _validate(DeploymentSpec, raw, "", str(path))
    found = _find_cascade(raw.get("root"))
    if found is None:
        raise ConfigError(f"{path}: no cascade node to calibrate")
    cascade, at = found
    small, large = cascade.get("small_model"), cascade.get("large_model")
    if not small or not large:
        raise ConfigError(f"{path}: {at}: set small_model and large_model to calibrate")
    data = datasets.load(dataset, split)  # type: ignore[arg-type]
    output = cascade.get("output", "probabilities")
    repository = ModelRepository(_repository(raw, path))
    with LocalBackend(repository) as local:
        probs = [
            local.infer(InferRequest(m, {repository.config(m).inputs[0].name: data.x})).outputs[
                output
            ]
            for m in (small, large)
        ]
    point = calibrate(
        probs[0], probs[1], data.y,
        measure=cascade.get("confidence", "max_prob"),
        target_relative_accuracy=target, max_escalation_rate=max_escalation,
    )  # fmt: skip
    cascade["threshold"] = round(point.threshold, 6)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return point


def _repository(raw: dict[str, Any], path: Path) -> Path:
    repo = Path(raw.get("repository", "model-repo"))
    return repo if repo.is_absolute() else path.parent / repo
