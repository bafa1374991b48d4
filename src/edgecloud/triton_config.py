"""Triton model repositories, read as they are: ``config.pbtxt`` -> :class:`ModelConfig`.

A Triton model directory is served unchanged::

    <repo>/<model>/config.pbtxt      Triton's ModelConfig, protobuf text format
    <repo>/<model>/labels.txt        optional, named by an output's label_filename
    <repo>/<model>/<version>/model.onnx   (or default_model_filename)

The text is parsed with the ``ModelConfig`` message tritonclient ships
(``tritonclient.grpc.model_config_pb2``, extra ``edgecloud[triton]``), so the
grammar is Triton's own. Importing it loads ``tritonclient.grpc``'s package,
hence grpc (about 0.25 s, once per process); its descriptors live in the
default pool under package ``inference``, edgecloud's own ``inference.proto``
in a private pool (Makefile ``proto``), so the two never clash.

What is honoured (Triton's model_configuration.md):

- ``platform: "onnxruntime_onnx"`` / ``backend: "onnxruntime"`` (or neither, for
  an ``.onnx`` file, as Triton's auto-complete does);
- ``input`` / ``output``: name, ``data_type`` (``TYPE_FP32`` -> ``FP32``, ...,
  ``TYPE_STRING`` -> ``BYTES``), ``dims`` with ``-1``; dims exclude the batch
  dimension when ``max_batch_size > 0``, as edgecloud's own config;
- ``max_batch_size`` (0: unbatched), ``dynamic_batching`` (``preferred_batch_size``,
  ``max_queue_delay_microseconds``), ``version_policy`` (latest, all, specific),
  ``default_model_filename``, ``label_filename`` (on the first output);
- no ``config.pbtxt``, or one without inputs and outputs: completed from the
  ONNX graph, as Triton's onnxruntime backend does (a graph whose every tensor
  has a dynamic leading dimension gets ``max_batch_size`` 4 and dynamic
  batching: Triton's ``default-max-batch-size``).

What changes answers and cannot be honoured is refused by name in one line
(another platform or backend, ensembles, sequence batching, ``reshape``,
shape tensors, ragged or optional inputs, batch inputs/outputs, custom
operations, decoupled models, repository agents, BF16). Settings that only
tune how Triton schedules or places work (``instance_group``,
``optimization``, ``model_warmup``, queue policies, ``parameters``,
``response_cache``, ...) are ignored, and the model's metadata says which
(``triton_ignored``): edgecloud sets threads, runners and device per server
(``serve --threads``, ``--device``, the ``runners_per_model`` setting).

Nothing is ever written into a Triton model directory: it has no
``version.json``, so its files are checked for presence and against the
graph (names, datatypes, dims), not against a sha256.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._optional import require
from .errors import ConfigError, MissingDependencyError, ModelLoadError
from .repository import (
    CONFIG_FILE,
    MANIFEST_FILE,
    DynamicBatching,
    ModelConfig,
    VersionPolicy,
    config_from_onnx,
    version_number,
)
from .tensors import TensorSpec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._edge_config import EdgeModelConfig
    from .tensors import Spec

__all__ = [
    "AUTO_MAX_BATCH_SIZE",
    "DEFAULT_MODEL_FILE",
    "TRITON_CONFIG",
    "TRITON_TYPES",
    "TritonModel",
    "check_graph",
    "is_triton_model",
    "read_triton_model",
]

TRITON_CONFIG = "config.pbtxt"
DEFAULT_MODEL_FILE = "model.onnx"
AUTO_MAX_BATCH_SIZE = 4
"""Triton's ``--backend-config=default-max-batch-size`` default, used when a
batchable ONNX graph's config is auto-completed."""

_PLATFORM = "onnxruntime_onnx"
_BACKEND = "onnxruntime"
TRITON_TYPES = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "BYTES": "TYPE_STRING",
}  # fmt: skip
"""Open Inference Protocol datatype -> Triton's ``DataType`` name (model_config.proto);
BF16 has no numpy dtype, so neither side has it."""
_TYPES = {triton: datatype for datatype, triton in TRITON_TYPES.items()}
# Fields that change what a model computes or how it is called: refused by name.
_REFUSED_FIELDS = {
    "batch_input": "batch inputs",
    "batch_output": "batch outputs",
    "model_operations": "custom operation libraries",
    "model_repository_agents": "repository agents (they rewrite the model files)",
}
# Fields that only tune Triton's scheduling or placement: ignored, with a note.
_IGNORED_FIELDS = (
    "instance_group",
    "optimization",
    "model_warmup",
    "parameters",
    "cc_model_filenames",
    "metric_tags",
    "response_cache",
    "model_metrics",
)
_REFUSED_TENSOR_FIELDS = {
    "reshape": "reshape",
    "is_shape_tensor": "shape tensors",
    "allow_ragged_batch": "ragged batches",
    "optional": "optional inputs",
    "is_non_linear_format_io": "non-linear I/O formats",
}


@dataclass(frozen=True, slots=True)
class TritonModel:
    """A Triton model directory read as edgecloud serves it."""

    config: ModelConfig
    """The model's config; ``metadata`` has ``source: triton`` and, when any,
    ``triton_ignored`` (what was ignored and why)."""
    model_file: str
    """File name inside each version directory (``default_model_filename``)."""
    notes: tuple[str, ...]
    """Settings ignored, one line each."""


def is_triton_model(directory: Path) -> bool:
    """Whether ``directory`` is a Triton model rather than an edgecloud one.

    It is when it has ``config.pbtxt`` and no ``config.yaml``, or neither
    but a version directory holding ``model.onnx`` and no ``version.json``
    (Triton serves an ONNX model without a config: auto-complete).
    """
    if (directory / CONFIG_FILE).exists():
        return False
    if (directory / TRITON_CONFIG).exists():
        return True
    versions = [p for p in directory.iterdir() if version_number(p.name) and p.is_dir()]
    return any((p / DEFAULT_MODEL_FILE).is_file() for p in versions) and not any(
        (p / MANIFEST_FILE).exists() for p in versions
    )


def read_triton_model(directory: Path, name: str, versions: list[int]) -> TritonModel:
    """Read ``directory``'s ``config.pbtxt`` (or auto-complete it from the graph).

    ``versions``: the numeric version directories on disk (the graph of the
    newest completes a config without tensors). ModelLoadError naming the
    file and what to change (with the line for a syntax error);
    MissingDependencyError when tritonclient is not installed.
    """
    path = directory / TRITON_CONFIG
    where = f"model {name!r}: {path}"
    if path.exists():
        proto = _parse(path, where)
    else:
        where = f"model {name!r}: {directory} (no {TRITON_CONFIG}: auto-completed)"
        proto = None
    return _convert(proto, directory, name, versions, where)


def check_graph(config: ModelConfig | EdgeModelConfig, model: Path, where: str) -> None:
    """The graph in ``model`` matches the config: inputs by name (all of them),
    outputs by name (a subset), datatypes, rank (plus one batch dimension when
    ``max_batch_size > 0``, dynamic in the graph) and every fixed dim.

    This is a Triton version's check in place of sha256. ModelLoadError naming
    ``where`` and the first difference.
    """
    if model.is_dir():
        raise ModelLoadError(
            f"{where}: {model} is a directory; edgecloud loads a single .onnx file "
            "(external weights next to it are fine)"
        )
    if not model.is_file():
        raise ModelLoadError(f"{where}: {model} is missing")
    graph = config_from_onnx(model, config.name)
    _check_tensors("input", config.inputs, graph.inputs, config.max_batch_size, where, model)
    _check_tensors("output", config.outputs, graph.outputs, config.max_batch_size, where, model)
    declared = {s.name for s in config.inputs}
    missing = [s.name for s in graph.inputs if s.name not in declared]
    if missing:
        raise ModelLoadError(
            f"{where}: the graph {model} has inputs {missing} that config.pbtxt does not "
            "declare; declare every input"
        )


# -- parsing -------------------------------------------------------------------


def _model_config_pb2() -> Any:
    """tritonclient's ModelConfig messages (imports tritonclient.grpc, hence grpc)."""
    try:
        return require(
            "tritonclient.grpc.model_config_pb2",
            extra="triton",
            feature="Reading a Triton config.pbtxt",
        )
    except RuntimeError as exc:  # tritonclient without its grpc part raises this
        raise MissingDependencyError(
            "tritonclient[grpc]", "triton", "Reading a Triton config.pbtxt"
        ) from exc


def _parse(path: Path, where: str) -> Any:
    pb2 = _model_config_pb2()
    text_format = require(
        "google.protobuf.text_format", extra="triton", feature="Reading a Triton config.pbtxt"
    )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelLoadError(f"{where}: cannot read it: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{where}: not UTF-8 text") from exc
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        reason = str(exc).split(" : ", 1)[-1] if line else str(exc)
        at = f"line {line}, column {column}" if line else "parse error"
        raise ModelLoadError(f"{where}: {at}: {' '.join(reason.split())}") from exc


# -- mapping -------------------------------------------------------------------


def _convert(
    proto: Any, directory: Path, name: str, versions: list[int], where: str
) -> TritonModel:
    notes = _checked(proto, name, where) if proto is not None else []
    model_file = _model_file(proto, where)
    inputs, outputs, max_batch, auto = _tensors(proto, directory, name, versions, model_file, where)
    labels = _labels(proto, directory, outputs, where) if proto is not None else None
    config_path = directory / TRITON_CONFIG if proto is not None else directory
    metadata = {"source": "triton", "triton_config": str(config_path)}
    try:
        batching = _dynamic_batching(proto, max_batch, where, notes)
        if auto:
            batching = batching or DynamicBatching(max_queue_delay_us=0)
            notes.append(
                f"max_batch_size auto-completed to {AUTO_MAX_BATCH_SIZE} with dynamic batching "
                "(the graph's leading dimensions are dynamic), as Triton does"
            )
        if notes:
            metadata["triton_ignored"] = "; ".join(notes)
        config = ModelConfig(
            name=name,
            max_batch_size=max_batch,
            inputs=inputs,
            outputs=outputs,
            labels=labels,
            version_policy=_version_policy(proto, where),
            dynamic_batching=batching,
            metadata=metadata,
        )
    except ValueError as exc:  # pydantic: duplicate tensor names, values out of range
        raise ModelLoadError(f"{where}: {' '.join(str(exc).split())}") from exc
    _check_versions(config, versions, directory, where)
    return TritonModel(config, model_file, tuple(notes))


def _checked(proto: Any, name: str, where: str) -> list[str]:
    """Refuse what cannot be honoured; the notes on what is ignored."""
    _refuse_unsupported(proto, where)
    if proto.name and proto.name != name:
        raise ModelLoadError(
            f"{where} names the model {proto.name!r}; Triton requires the directory "
            "name, so rename one of them"
        )
    if proto.max_batch_size < 0:
        raise ModelLoadError(
            f"{where}: max_batch_size {proto.max_batch_size} is negative; use 0 or more"
        )
    return _ignored(proto)


def _model_file(proto: Any, where: str) -> str:
    model_file = (proto.default_model_filename if proto is not None else "") or DEFAULT_MODEL_FILE
    _inside(model_file, "default_model_filename", where)
    unnamed = proto is not None and not (proto.platform or proto.backend)
    if unnamed and not model_file.endswith(".onnx"):
        raise ModelLoadError(
            f"{where}: no platform or backend, and default_model_filename {model_file!r} "
            f'is not an .onnx file; edgecloud serves ONNX models (platform "{_PLATFORM}")'
        )
    return str(model_file)


def _tensors(
    proto: Any, directory: Path, name: str, versions: list[int], model_file: str, where: str
) -> tuple[list[TensorSpec], list[TensorSpec], int, bool]:
    """Inputs, outputs, max_batch_size, and whether max_batch_size was auto-completed.

    What the config does not declare comes from the newest version's graph; a
    config with no tensors and max_batch_size 0 on a graph whose every leading
    dimension is dynamic gets :data:`AUTO_MAX_BATCH_SIZE` (Triton's auto-complete).
    """
    max_batch = int(proto.max_batch_size) if proto is not None else 0
    inputs = [_spec(t, "input", where) for t in proto.input] if proto is not None else []
    outputs = [_spec(t, "output", where) for t in proto.output] if proto is not None else []
    if inputs and outputs:
        return inputs, outputs, max_batch, False
    graph = _graph(directory, name, versions, model_file, where)
    auto = not inputs and not outputs and max_batch == 0 and _batchable(graph)
    max_batch = AUTO_MAX_BATCH_SIZE if auto else max_batch
    cut = 1 if max_batch > 0 else 0
    inputs = inputs or [s.model_copy(update={"shape": s.shape[cut:]}) for s in graph.inputs]
    outputs = outputs or [s.model_copy(update={"shape": s.shape[cut:]}) for s in graph.outputs]
    return inputs, outputs, max_batch, auto


def _refuse_unsupported(proto: Any, where: str) -> None:
    platform, backend = proto.platform, proto.backend
    scheduling = proto.WhichOneof("scheduling_choice")
    if platform == "ensemble" or scheduling == "ensemble_scheduling":
        raise ModelLoadError(
            f"{where}: ensemble models (ensemble_scheduling) are not served by edgecloud; "
            "serve each ONNX step as its own model, or compose them in a deployment file"
        )
    if scheduling == "sequence_batching":
        raise ModelLoadError(
            f"{where}: sequence_batching (stateful models) is not served by edgecloud; "
            "edgecloud serves stateless models only"
        )
    odd = [
        f"{key} {value!r}"
        for key, value, good in (
            ("platform", platform, _PLATFORM),
            ("backend", backend, _BACKEND),
            ("runtime", proto.runtime, ""),
        )
        if value and value != good
    ]
    if odd:
        raise ModelLoadError(
            f"{where}: {', '.join(odd)} is not served by edgecloud, which runs ONNX models "
            f'with onnxruntime (platform "{_PLATFORM}" / backend "{_BACKEND}"); export the '
            "model to ONNX, or keep it on Triton"
        )
    for key, what in _REFUSED_FIELDS.items():
        if _is_set(proto, key):
            raise ModelLoadError(f"{where}: {key} ({what}) is not supported by edgecloud")
    if proto.model_transaction_policy.decoupled:
        raise ModelLoadError(
            f"{where}: decoupled models (model_transaction_policy) are not supported by "
            "edgecloud, which answers each request once"
        )


def _ignored(proto: Any) -> list[str]:
    notes = []
    for key in _IGNORED_FIELDS:
        if _is_set(proto, key):
            why = "edgecloud sets threads, runners and device per server"
            if key == "instance_group":
                groups = ", ".join(
                    f"{g.count or 1} x {_enum_name(g, 'kind')}" for g in proto.instance_group
                )
                why = f"{groups}; {why} (serve --threads, --device, the runners_per_model setting)"
            elif key == "model_warmup":
                why = "edgecloud warms every version up on zeros when it loads"
            notes.append(f"{key} ignored ({why})")
    return notes


def _is_set(proto: Any, key: str) -> bool:
    field = proto.DESCRIPTOR.fields_by_name[key]
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 6.30; `label` is deprecated
    if repeated is None:  # pragma: no cover - older protobuf
        repeated = field.label == field.LABEL_REPEATED
    if repeated:
        return len(getattr(proto, key)) > 0
    return bool(proto.HasField(key))


def _spec(tensor: Any, kind: str, where: str) -> TensorSpec:
    label = f"{where}: {kind} {tensor.name!r}"
    if not tensor.name:
        raise ModelLoadError(f"{where}: an {kind} has no name")
    for key, what in _REFUSED_TENSOR_FIELDS.items():
        if key in tensor.DESCRIPTOR.fields_by_name and _is_set_tensor(tensor, key):
            raise ModelLoadError(f"{label}: {key} ({what}) is not supported by edgecloud")
    type_name = _enum_name(tensor, "data_type")
    datatype = _TYPES.get(type_name)
    if datatype is None:
        raise ModelLoadError(
            f"{label}: data_type {type_name} is not supported by edgecloud "
            f"(use one of {', '.join(_TYPES)})"
        )
    dims = tuple(int(d) for d in tensor.dims)
    bad = [d for d in dims if d == 0 or d < -1]
    if bad:
        raise ModelLoadError(f"{label}: dims {list(dims)}: each dim is -1 (variable) or >= 1")
    return TensorSpec(name=tensor.name, datatype=datatype, shape=dims)


def _enum_name(message: Any, key: str) -> str:
    values = message.DESCRIPTOR.fields_by_name[key].enum_type.values_by_number
    number = getattr(message, key)
    return str(values[number].name) if number in values else str(number)


def _is_set_tensor(tensor: Any, key: str) -> bool:
    field = tensor.DESCRIPTOR.fields_by_name[key]
    if field.message_type is not None:
        return bool(tensor.HasField(key))
    return bool(getattr(tensor, key))


def _dynamic_batching(
    proto: Any, max_batch: int, where: str, notes: list[str]
) -> DynamicBatching | None:
    if proto is None or proto.WhichOneof("scheduling_choice") != "dynamic_batching":
        return None
    batching = proto.dynamic_batching
    if max_batch == 0:
        notes.append("dynamic_batching ignored (max_batch_size is 0: the model does not batch)")
        return None
    preferred = [int(size) for size in batching.preferred_batch_size]
    wrong = [size for size in preferred if not 1 <= size <= max_batch]
    if wrong:
        raise ModelLoadError(
            f"{where}: dynamic_batching preferred_batch_size {wrong} outside 1..max_batch_size "
            f"({max_batch})"
        )
    queue = [key for key in ("priority_levels", "default_priority_level") if getattr(batching, key)]
    if len(batching.priority_queue_policy):
        queue.append("priority_queue_policy")
    if batching.HasField("default_queue_policy"):
        queue.append("default_queue_policy")
    if queue:
        notes.append(
            f"dynamic_batching {', '.join(queue)} ignored (edgecloud has one queue per version, "
            "bounded by the server's request timeout)"
        )
    return DynamicBatching(
        max_queue_delay_us=int(batching.max_queue_delay_microseconds),
        preferred_batch_sizes=preferred,
    )


def _version_policy(proto: Any, where: str) -> VersionPolicy:
    if proto is None or not proto.HasField("version_policy"):
        return VersionPolicy()  # Triton's default: latest 1
    policy = proto.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy(kind="all")
    if choice == "specific":
        versions = [int(v) for v in policy.specific.versions]
        if not versions:
            raise ModelLoadError(f"{where}: version_policy specific lists no versions")
        return VersionPolicy(kind="specific", versions=versions)
    count = int(policy.latest.num_versions) if choice == "latest" else 1
    if count < 1:
        raise ModelLoadError(f"{where}: version_policy latest num_versions must be at least 1")
    return VersionPolicy(kind="latest", count=count)


def _check_versions(config: ModelConfig, versions: list[int], directory: Path, where: str) -> None:
    if not versions:
        raise ModelLoadError(
            f"{where}: no version directory in {directory}; put the model in "
            f"{directory}/1/{DEFAULT_MODEL_FILE}, as Triton expects"
        )
    policy = config.version_policy
    absent = [v for v in policy.versions if v not in versions] if policy.kind == "specific" else []
    if absent:
        raise ModelLoadError(
            f"{where}: version_policy specific names versions {absent}, which have no "
            f"directory in {directory} (on disk: {versions})"
        )


def _labels(proto: Any, directory: Path, outputs: list[TensorSpec], where: str) -> list[str] | None:
    labelled = [(i, t) for i, t in enumerate(proto.output) if t.label_filename]
    if not labelled:
        return None
    index, tensor = labelled[0]
    if len(labelled) > 1 or index != 0:
        raise ModelLoadError(
            f"{where}: label_filename on output {tensor.name!r}: edgecloud carries the labels "
            "of the first output only; put the labelled output first"
        )
    _inside(tensor.label_filename, "label_filename", where)
    from .importing import read_labels  # importing pulls LocalBackend

    try:
        labels = read_labels(directory / tensor.label_filename)
    except ConfigError as exc:
        raise ModelLoadError(f"{where}: label_filename: {exc.message}") from exc
    size = outputs[0].shape[-1] if outputs[0].shape else 1
    if size != -1 and size != len(labels):
        raise ModelLoadError(
            f"{where}: {len(labels)} labels in {directory / tensor.label_filename}, but output "
            f"{tensor.name!r} has {size} entries in its last dimension; one label per entry"
        )
    return labels


def _inside(name: str, key: str, where: str) -> None:
    """A file name from the config must stay inside its directory."""
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts or len(parts) != 1:
        raise ModelLoadError(f"{where}: {key} {name!r} is not a file name in the model's directory")


# -- the graph -----------------------------------------------------------------


def _graph(
    directory: Path, name: str, versions: list[int], model_file: str, where: str
) -> ModelConfig:
    """The full-shape tensors of the newest version's graph (to complete a config)."""
    if not versions:
        raise ModelLoadError(
            f"{where}: no version directory in {directory}, and no tensors declared to "
            f"serve; put the model in {directory}/1/{model_file}"
        )
    path = directory / str(versions[-1]) / model_file
    if not path.is_file():
        raise ModelLoadError(f"{where}: {path} is missing, so the config cannot be completed")
    return config_from_onnx(path, name)


def _batchable(graph: ModelConfig) -> bool:
    specs = [*graph.inputs, *graph.outputs]
    return bool(specs) and all(s.shape and s.shape[0] == -1 for s in specs)


def _check_tensors(
    kind: str,
    declared: Sequence[Spec],
    graph: list[TensorSpec],
    max_batch: int,
    where: str,
    model: Path,
) -> None:
    by_name = {s.name: s for s in graph}
    for spec in declared:
        actual = by_name.get(spec.name)
        label = f"{where}: {kind} {spec.name!r}"
        if actual is None:
            raise ModelLoadError(
                f"{label} is not in the graph {model} ({kind}s: {sorted(by_name)})"
            )
        if actual.datatype != spec.datatype:
            raise ModelLoadError(
                f"{label} is {spec.datatype} in the config but {actual.datatype} in {model}"
            )
        shape = actual.shape
        if max_batch > 0:
            if not shape or shape[0] != -1:
                raise ModelLoadError(
                    f"{label}: max_batch_size {max_batch} needs a dynamic leading (batch) "
                    f"dimension, but {model} declares {list(shape)}; use max_batch_size 0 "
                    "and full dims"
                )
            shape = shape[1:]
        if len(shape) != len(spec.shape) or any(
            d != -1 and g != -1 and d != g for d, g in zip(spec.shape, shape, strict=True)
        ):
            batch = " after the batch dimension" if max_batch > 0 else ""
            raise ModelLoadError(
                f"{label}: dims {list(spec.shape)} do not match {model}, which declares "
                f"{list(shape)}{batch}"
            )
