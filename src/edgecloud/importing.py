"""``edgecloud import``: add your own ONNX model to a repository, checked by running it.

The config is inferred from the graph (:func:`~edgecloud.repository.config_from_onnx`);
the version is added inside a repository transaction, so other processes do
not see it until it has run: with ``samples`` every row is run through
:class:`~edgecloud.backends.local.LocalBackend` and every floating-point
output must be finite; without, the model is loaded and warmed up on zeros.
Any failure rolls the transaction back: the repository is as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._config_files import checked_path, path_error
from .backends.local import LocalBackend, warm_up_shapes
from .errors import ConfigError, EdgecloudError, ModelLoadError, ModelNotFoundError
from .repository import ModelConfig, ModelRepository, ModelVersion, config_from_onnx
from .rows import check_version
from .samples import Samples, built_size_error, checked_labels, finite, load_samples
from .tensors import InferRequest

__all__ = ["Imported", "import_onnx", "import_triton", "read_labels"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class Imported:
    """What :func:`import_onnx` added."""

    version: ModelVersion
    rows: int
    """Sample rows run to check the model; 0 when no samples were given."""


def read_labels(path: Path) -> list[str]:
    """Class names from a text file, one per line (a final newline is optional;
    ``\r\n`` line ends and a leading UTF-8 byte-order mark, as Windows editors
    write them, are not part of any name).

    ConfigError naming the file when it is missing, not UTF-8, empty, or has a
    blank line (a stray one would shift every name after it). A name given
    twice is kept (ImageNet's 1000 classes name "crane" twice); such a name
    cannot be used as a label (:func:`~edgecloud.samples.class_indices`).
    """
    checked_path(path, "file", "labels file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise path_error(path, "file", "labels file", exc) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"labels file {path} is not UTF-8 text; one label per line") from exc
    text = text.removeprefix("\ufeff")
    labels = text.removesuffix("\n").split("\n") if text else []
    labels = [label.removesuffix("\r") for label in labels]
    if not labels:
        raise ConfigError(f"labels file {path} is empty; one label per line")
    blank = [i + 1 for i, label in enumerate(labels) if not label.strip()]
    if blank:
        raise ConfigError(
            f"labels file {path}: line {blank[0]} is blank; one label per line, none empty"
        )
    return labels


def import_onnx(
    repo: ModelRepository,
    model: Path,
    name: str,
    *,
    labels: Path | None = None,
    samples: Path | None = None,
    max_batch_size: int | None = None,
) -> Imported:
    """Add ``model`` as the next version of ``name``, checked by running it.

    A new model gets ``max_batch_size`` (default 0); a new version of an
    existing model keeps its config (labels, batching, policy), which the
    graph must match: same inputs and outputs, same ``max_batch_size``.
    ``labels`` must have one name per entry of the first output's last
    dimension. ConfigError (the caller's to fix) or ModelLoadError (the model
    does not load or run, or gives NaN/Inf on its samples); nothing is added.
    """
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"model name {name!r}: use letters, digits, '.', '_' and '-', starting with a "
            "letter or digit"
        )
    checked_path(model, "file", "model file")
    names = read_labels(labels) if labels is not None else None
    with repo.transaction():
        # The model's writer lock first: the config is read and the number chosen
        # while no other process writes this model (concurrent imports queue).
        repo.lock(name)
        config = _config(repo, model, name, names, max_batch_size)
        # non-finite sample inputs are refused, as compress, split and calibrate refuse
        # them: the version's samples feed those commands, and a check on NaN means nothing
        checked = finite(load_samples(samples, config), "import") if samples is not None else None
        if checked is not None and checked.labels is not None:  # declared shape; again as run
            checked_labels(checked.labels, config, f"samples file {checked.source}")
        version = repo.add_version(
            name,
            model,
            config=config,
            samples=samples,
            metadata={"imported_from": model.name},
        )
        # Inside the transaction: other processes do not see the version yet,
        # and any failure below rolls it (and a new model's directory) back.
        _check_runs(repo, version, checked)
    return Imported(version, checked.rows if checked else 0)


def import_triton(
    repo: ModelRepository,
    directory: Path,
    name: str | None = None,
    *,
    latest: bool = False,
) -> list[Imported]:
    """Convert one Triton model directory (``<triton repo>/<model>``) into ``name``.

    Every version its ``version_policy`` serves (``latest``: only the newest)
    is added under its own number, with the config read from ``config.pbtxt``
    (:mod:`edgecloud.triton_config`: labels, batching and the version policy
    carried; settings it ignores are recorded in the config's metadata), each
    graph checked against it and loaded and warmed up. ``directory`` is only
    read. All versions or none: ConfigError (not a Triton model, a bad name,
    ``name`` already in ``repo``) or ModelLoadError (the config or a graph is
    refused); MissingDependencyError without the ``triton`` extra.
    """
    from .triton_config import is_triton_model

    checked_path(directory, "directory", "Triton model directory")
    directory = directory.resolve()
    if not is_triton_model(directory):
        raise ConfigError(
            f"{directory} is not a Triton model directory: it needs config.pbtxt (or, for an "
            "ONNX model, version directories such as 1/model.onnx) and no config.yaml"
        )
    name = name or directory.name
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"model name {name!r}: use letters, digits, '.', '_' and '-', starting with a "
            "letter or digit (pass --name)"
        )
    if (repo.root / name).exists():
        raise ConfigError(
            f"model {name!r} already exists in {repo.root}; import the Triton model under "
            "another --name"
        )
    source = ModelRepository(directory.parent)
    served = source.served_versions(directory.name)
    if not served:
        raise ModelLoadError(
            f"Triton model {directory}: no version directory its version_policy serves "
            f"(on disk: {source.versions(directory.name)})"
        )
    entries = [source.get(directory.name, v) for v in (served[-1:] if latest else served)]
    config = _converted(entries[0].config, name)
    imported = []
    with repo.transaction():
        repo.lock(name)
        if (repo.root / name).exists():
            raise ConfigError(
                f"model {name!r} already exists in {repo.root}; import the Triton model under "
                "another --name"
            )
        for entry in entries:
            version = repo.add_version(
                name,
                entry.model_path,
                config=config,
                version=entry.version,
                metadata={"imported_from": f"triton:{entry.model_path}"},
            )
            _check_runs(repo, version, None)
            imported.append(Imported(version, 0))
    return imported


def _converted(triton: ModelConfig, name: str) -> ModelConfig:
    """The Triton model's config as an edgecloud one: same tensors, labels,
    batching and policy; provenance (and what was ignored) in the metadata."""
    metadata = {"imported_from": f"triton:{triton.metadata.get('triton_config', '')}"}
    if "triton_ignored" in triton.metadata:
        metadata["triton_ignored"] = triton.metadata["triton_ignored"]
    return triton.model_copy(update={"name": name, "metadata": metadata})


def _config(
    repo: ModelRepository,
    model: Path,
    name: str,
    labels: list[str] | None,
    max_batch_size: int | None,
) -> ModelConfig:
    """The config to write: inferred from the graph, or the model's own, checked against it."""
    try:
        existing: ModelConfig | None = repo.config(name)
    except ModelNotFoundError:
        existing = None
    batch = (
        max_batch_size
        if max_batch_size is not None
        else (existing.max_batch_size if existing else 0)
    )
    full = config_from_onnx(model, name)
    if not full.inputs or not full.outputs:
        raise ConfigError(f"model file {model}: the graph declares no inputs or no outputs")
    inferred = _batched(full, batch, model) if batch > 0 else full
    if existing is not None:
        if _signature(existing) != _signature(inferred):
            raise ConfigError(
                f"model file {model} does not match model {name!r} in {repo.root}: its "
                f"versions take {_signature(existing)}, this graph {_signature(inferred)}; "
                "import it under another --name"
            )
        inferred = existing
    if labels is not None:
        _check_labels(inferred, labels)
        if existing is not None and existing.labels != labels:
            raise ConfigError(_relabel(name, repo, existing.labels, labels))
        inferred = inferred.model_copy(update={"labels": labels})
    return inferred


def _relabel(name: str, repo: ModelRepository, old: list[str] | None, new: list[str]) -> str:
    """Why a new version cannot bring other labels: they are the model's (config.yaml),
    so they would rename the classes of every version already served."""

    def show(names: list[str] | None) -> str:
        if not names:
            return "no labels"
        return f"labels {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"

    return (
        f"model {name!r} in {repo.root} has {show(old)}, shared by all its versions; "
        f"this import gives {show(new)}, which would relabel the versions already there: "
        "import it under another --name, or without --labels to keep the model's"
    )


def _batched(full: ModelConfig, max_batch_size: int, model: Path) -> ModelConfig:
    """``full`` with the leading (batch) dimension dropped from every tensor.

    Every input's leading graph dimension must be symbolic: a graph declared
    for exactly 1 row (``[1, 4]``) cannot take a batch of 8, and a scalar has
    no batch dimension. Outputs may have a fixed one (a whole-run output).
    """
    for spec in full.inputs:
        if not spec.shape or spec.shape[0] != -1:
            lead = f"fixed leading dimension {spec.shape[0]}" if spec.shape else "no dimensions"
            raise ConfigError(
                f"model file {model}: input {spec.name!r} has {lead} "
                f"(shape {list(spec.shape)}), so the graph cannot take a batch of "
                f"{max_batch_size}; import it with --max-batch-size 0"
            )
    return full.model_copy(
        update={
            "max_batch_size": max_batch_size,
            "inputs": [s.model_copy(update={"shape": s.shape[1:]}) for s in full.inputs],
            "outputs": [s.model_copy(update={"shape": s.shape[1:]}) for s in full.outputs],
        }
    )


def _signature(config: ModelConfig) -> str:
    def specs(items: Any) -> str:
        return ", ".join(f"{s.name} {s.datatype}{list(s.shape)}" for s in items)

    return (
        f"inputs [{specs(config.inputs)}] -> outputs [{specs(config.outputs)}], "
        f"max_batch_size {config.max_batch_size}"
    )


def _check_labels(config: ModelConfig, labels: list[str]) -> None:
    first = config.outputs[0]
    size = first.shape[-1] if first.shape else 1
    if size != -1 and size != len(labels):
        raise ConfigError(
            f"{len(labels)} labels given, but output {first.name!r} has {size} entries "
            f"in its last dimension (shape {list(first.shape)}); give one label per entry"
        )


def _check_runs(repo: ModelRepository, version: ModelVersion, samples: Samples | None) -> None:
    """Load the new version and run its samples; ModelLoadError on any failure or NaN/Inf."""
    label = f"model {version.name!r} version {version.version}"
    # the check runs the model on zeros (and random rows): a huge fixed dimension is
    # refused by name here, before anything is allocated
    error = built_size_error(version.config, warm_up_shapes(version.config), "import's check")
    if error is not None:
        raise error
    with LocalBackend(repo, intra_op_threads=1, verify=True) as local:
        local.load(version.name, version.version)  # loads, checks the config, warms up
        if version.config.batched:  # rows of different clients will share a call
            check_version(version, samples.inputs if samples else None)
        if samples is None:
            return
        # A batched model runs max_batch_size rows at a time, as the server would
        # call it; an unbatched model's samples are one request.
        step = version.config.max_batch_size or samples.rows
        for start in range(0, samples.rows, step):
            chunk = (
                {k: v[start : start + step] for k, v in samples.inputs.items()}
                if version.config.batched
                else samples.inputs
            )
            request = InferRequest(version.name, chunk, version=str(version.version))
            try:
                outputs = local.infer(request).outputs
            except EdgecloudError as exc:
                raise ModelLoadError(
                    f"{label} fails on its samples {samples.source}: {exc.message}"
                ) from exc
            _check_outputs(version, outputs, f"{label} on its samples {samples.source}")
            if samples.labels is not None and start == 0:
                first = outputs[version.config.outputs[0].name]
                checked_labels(
                    samples.labels, version.config, f"samples file {samples.source}", first.shape
                )


def _check_outputs(version: ModelVersion, outputs: Mapping[str, Any], where: str) -> None:
    """Every floating-point output finite; the labels fit the first output."""
    for output, array in outputs.items():
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise ModelLoadError(
                f"{where} gives non-finite values (NaN or Inf) in output {output!r} "
                f"({bad} of {array.size} values); not imported"
            )
    first = version.config.outputs[0]
    labels = version.config.labels
    got = outputs[first.name]
    if labels is not None and got.ndim and got.shape[-1] != len(labels):
        raise ConfigError(
            f"{len(labels)} labels given, but output {first.name!r} has {got.shape[-1]} "
            f"entries in its last dimension ({where}); give one label per entry"
        )
