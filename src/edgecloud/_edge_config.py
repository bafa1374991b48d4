"""A model's ``config.yaml`` read on the edge path, without pydantic or PyYAML.

Importing pydantic and building the config models costs the first request of
a device ~16 MB of RSS and tens of milliseconds (measured with
``bench/edge_footprint.py``); PyYAML another ~1 MB. LocalBackend therefore
reads configs here, into plain frozen dataclasses with the attributes of
:class:`edgecloud.repository.ModelConfig` and :class:`edgecloud.tensors.TensorSpec`.

The promise is *same answer, same error* as the pydantic path, by construction:

- :func:`parse_plain_yaml` reads the plain block YAML that ``yaml.safe_dump``
  writes (block mappings and sequences, plain and single-quoted scalars,
  ``[]``/``{}``, full-line comments) and resolves scalars only where YAML 1.1
  and :class:`edgecloud._config_files.Loader` leave no doubt (``64``, ``0.95``,
  ``true``, ``null``, ``'0'``, ``sklearn digits, 8x8``). Anything else — flow
  collections, anchors, tags, double quotes, folded lines, ``0x1F``, ``yes``,
  a key written twice — returns :data:`UNSURE`;
- :func:`lean_config` accepts values only of the exact types the pydantic
  models declare and makes their checks; any doubt (a ``"64"`` pydantic may
  coerce, a value out of range) returns None;
- :func:`read_config` then falls back to PyYAML + pydantic, whose answer (or
  error, word for word) is the one returned. ``tests/test_edge_config.py``
  holds both paths to the same result on good and bad configs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from .errors import ModelLoadError
from .repository import INT32_MAX, INT64_MAX, _one_line
from .tensors import DATATYPES, TensorDomain

if TYPE_CHECKING:
    from ._config_models import ModelConfig

__all__ = [
    "UNSURE",
    "EdgeDynamicBatching",
    "EdgeModelConfig",
    "EdgeTensorSpec",
    "EdgeVersionPolicy",
    "lean_config",
    "parse_plain_yaml",
    "read_config",
]


@dataclass(frozen=True, slots=True)
class EdgeTensorSpec(TensorDomain):
    """:class:`edgecloud.tensors.TensorSpec`'s fields and methods, as a dataclass."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    min_value: int | float | None = None
    max_value: int | float | None = None
    allowed_values: tuple[int | float, ...] | None = None


@dataclass(frozen=True, slots=True)
class EdgeVersionPolicy:
    """:class:`edgecloud.repository.VersionPolicy` as a dataclass."""

    kind: Literal["latest", "all", "specific"] = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    def select(self, on_disk: Iterable[int]) -> list[int]:
        """The served versions among those on disk, ascending (as VersionPolicy.select)."""
        ordered = sorted(on_disk)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.count :]


@dataclass(frozen=True, slots=True)
class EdgeDynamicBatching:
    """:class:`edgecloud.repository.DynamicBatching` as a dataclass."""

    max_queue_delay_us: int = 500
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class EdgeModelConfig:
    """:class:`edgecloud.repository.ModelConfig` as a dataclass (same fields and meaning)."""

    name: str
    inputs: tuple[EdgeTensorSpec, ...]
    outputs: tuple[EdgeTensorSpec, ...]
    platform: Literal["onnxruntime_onnx"] = "onnxruntime_onnx"
    max_batch_size: int = 0
    labels: tuple[str, ...] | None = None
    version_policy: EdgeVersionPolicy = field(default_factory=EdgeVersionPolicy)
    dynamic_batching: EdgeDynamicBatching | None = None
    description: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @classmethod
    def from_model(cls, config: ModelConfig) -> EdgeModelConfig:
        """The dataclass twin of a validated pydantic config."""
        data = config.model_dump()
        specs = {k: tuple(_spec(s) for s in data[k]) for k in ("inputs", "outputs")}
        labels = data["labels"]
        batching = data["dynamic_batching"]
        return cls(
            name=data["name"],
            inputs=specs["inputs"],
            outputs=specs["outputs"],
            platform=data["platform"],
            max_batch_size=data["max_batch_size"],
            labels=None if labels is None else tuple(labels),
            version_policy=_policy(data["version_policy"]),
            dynamic_batching=None if batching is None else _batching(batching),
            description=data["description"],
            metrics=dict(data["metrics"]),
            metadata=dict(data["metadata"]),
        )


# -- the YAML subset -----------------------------------------------------------


class _Unsure:
    """Not in the subset read here: ask PyYAML."""

    def __repr__(self) -> str:
        return "UNSURE"


UNSURE: Any = _Unsure()
"""What :func:`parse_plain_yaml` and :func:`lean_config` return when in doubt."""

_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE"})
#: YAML 1.1 words PyYAML's SafeLoader resolves to booleans besides true/false.
_BOOL_WORDS = frozenset(
    w for base in ("yes", "no", "on", "off") for w in (base, base.title(), base.upper())
)
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+(?:e[-+][0-9]+)?")
#: A plain string no resolver of YAML 1.1 or the Loader's 1.2 floats can claim:
#: it starts with a letter (any script) and holds no indicator that changes its meaning.
_STRING = re.compile(r"[^\W\d_][^\t#:\"]*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Characters PyYAML's reader refuses (``yaml.reader.Reader.NON_PRINTABLE``) or reads
#: as line breaks (NEL, LS, PS), and the byte-order mark: all left to PyYAML.
_ODD = (
    "[^\\x0a\\x20-\\x7e\\xa0-\\ud7ff\\ue000-\\ufefe\\uff00-\\ufffd\\U00010000-\\U0010ffff]"
    "|[\\u2028\\u2029]"
)


def _scalar(text: str) -> Any:
    """One scalar as the Loader resolves it, or UNSURE."""
    if text in _NULLS:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text == "[]":
        return []
    if text == "{}":
        return {}
    if _INT.fullmatch(text):
        return int(text) if len(text) <= 100 else UNSURE  # Python refuses 4300+ digits
    if _FLOAT.fullmatch(text):
        return float(text)
    if len(text) >= 2 and text[0] == text[-1] == "'":
        inner = text[1:-1]
        if "'" in inner.replace("''", ""):
            return UNSURE
        return inner.replace("''", "'")
    if text in _BOOL_WORDS or not _STRING.fullmatch(text) or text.endswith(" "):
        return UNSURE
    return text


def parse_plain_yaml(text: str) -> Any:
    """The document ``yaml.load(text, Loader)`` gives, for the plain block subset; else UNSURE."""
    if not (text.isascii() and text.replace("\n", "").isprintable()) and re.search(_ODD, text):
        return UNSURE  # (ASCII text skips compiling the pattern: the edge's cold start)
    lines: list[tuple[int, str, bool]] = []
    gap = False  # a blank or comment line came before this one (it would end a folded scalar)
    for raw in text.split("\n"):
        line = raw.rstrip(" ")
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            gap = True
            continue
        if "\t" in line or "\r" in line or " #" in line:
            return UNSURE
        lines.append((len(line) - len(stripped), stripped, gap))
        gap = False
    if not lines or lines[0][0] != 0:
        return UNSURE
    value, end = _block(lines, 0, 0)
    return value if end == len(lines) else UNSURE


def _block(lines: list[tuple[int, str, bool]], i: int, indent: int) -> tuple[Any, int]:
    """The node starting at line ``i`` (indented ``indent``) and the line after it."""
    if lines[i][1].startswith("- ") or lines[i][1] == "-":
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[tuple[int, str, bool]], i: int, indent: int) -> tuple[Any, int]:
    items: list[Any] = []
    while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
        rest = lines[i][1][2:]
        if ":" in rest and rest[0] != "'":  # "- key: value" opens a mapping two columns in
            lines[i] = (indent + 2, rest, lines[i][2])
            value, i = _mapping(lines, i, indent + 2)
        else:
            value, i = _folded(lines, i + 1, indent, rest)
        if value is UNSURE:
            return UNSURE, i
        items.append(value)
    return items, i


def _folded(lines: list[tuple[int, str, bool]], i: int, indent: int, first: str) -> tuple[Any, int]:
    """The scalar ``first`` with the plain continuation lines from line ``i`` (indented
    more than ``indent``) folded in, one space each, as ``yaml.safe_dump`` wraps long
    strings; and the line after it. UNSURE unless every part is a plain string."""
    parts = [first]
    while i < len(lines) and lines[i][0] > indent:
        if lines[i][2] or not _STRING.fullmatch(lines[i][1]):
            return UNSURE, i
        parts.append(lines[i][1])
        i += 1
    text = " ".join(parts)
    value = _scalar(text)
    if len(parts) > 1 and (not isinstance(value, str) or value != text or first[0] == "'"):
        return UNSURE, i
    return value, i


def _mapping(lines: list[tuple[int, str, bool]], i: int, indent: int) -> tuple[Any, int]:
    out: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent:
        key, sep, rest = lines[i][1].partition(":")
        if not sep or not _KEY.fullmatch(key) or key in out or _scalar(key) != key:
            return UNSURE, i
        if rest and not rest.startswith(" "):
            return UNSURE, i
        rest = rest.strip(" ")
        i += 1
        if rest:
            value, i = _folded(lines, i, indent, rest)
        elif i < len(lines) and (
            lines[i][0] > indent or (lines[i][0] == indent and lines[i][1].startswith("- "))
        ):
            value, i = _block(lines, i, lines[i][0])
        else:
            value = None
        if value is UNSURE:
            return UNSURE, i
        out[key] = value
    if i < len(lines) and lines[i][0] > indent:
        return UNSURE, i
    return out, i


# -- the checks of the pydantic models -------------------------------------------


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _is_number(value: Any) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _spec(data: Any) -> EdgeTensorSpec:
    """A TensorSpec's dict (validated) as the dataclass."""
    allowed = data.get("allowed_values")
    return EdgeTensorSpec(
        name=data["name"],
        datatype=data["datatype"],
        shape=tuple(data["shape"]),
        min_value=data.get("min_value"),
        max_value=data.get("max_value"),
        allowed_values=None if allowed is None else tuple(allowed),
    )


def _policy(data: Any) -> EdgeVersionPolicy:
    return EdgeVersionPolicy(data["kind"], data["count"], tuple(data["versions"]))


def _batching(data: Any) -> EdgeDynamicBatching:
    return EdgeDynamicBatching(data["max_queue_delay_us"], tuple(data["preferred_batch_sizes"]))


_SPEC_KEYS = frozenset({"name", "datatype", "shape", "min_value", "max_value", "allowed_values"})


def _lean_spec(kind: str, data: Any) -> EdgeTensorSpec | None:
    """TensorSpec's validators and ModelConfig's ``_check_bounds``, or None when in doubt."""
    if not isinstance(data, dict) or not data.keys() <= _SPEC_KEYS:
        return None
    name, datatype, shape = data.get("name"), data.get("datatype"), data.get("shape")
    if type(name) is not str or type(datatype) is not str or datatype not in DATATYPES:
        return None
    if type(shape) is not list or not all(
        type(d) is int and (d == -1 or 0 < d <= INT64_MAX) for d in shape
    ):
        return None
    low, high, allowed = data.get("min_value"), data.get("max_value"), data.get("allowed_values")
    bounds = [b for b in (low, high) if b is not None]
    if allowed is not None and (type(allowed) is not list or not allowed):
        return None
    values = [*bounds, *(allowed or ())]
    if not all(_is_number(v) for v in values):
        return None
    if any(type(v) is int and not -(2**63) <= v <= 2**64 - 1 for v in values):
        return None
    if values and datatype in ("BYTES", "BOOL"):
        return None
    if len(bounds) == 2 and bounds[0] > bounds[1]:
        return None
    return _spec(data)


_CONFIG_KEYS = frozenset(
    {
        "name", "platform", "max_batch_size", "inputs", "outputs", "labels", "version_policy",
        "dynamic_batching", "description", "metrics", "metadata",
    }
)  # fmt: skip


def lean_config(data: Any) -> EdgeModelConfig | None:
    """``ModelConfig.model_validate(data)`` as the dataclass, or None when in doubt."""
    if not isinstance(data, dict) or not data.keys() <= _CONFIG_KEYS:
        return None
    if type(data.get("name")) is not str or data.get("platform", "onnxruntime_onnx") != (
        "onnxruntime_onnx"
    ):
        return None
    if not _is_int(data.get("max_batch_size", 0), 0, INT32_MAX):
        return None
    specs: dict[str, tuple[EdgeTensorSpec, ...]] = {}
    for kind in ("input", "output"):
        given = data.get(f"{kind}s")
        if type(given) is not list:
            return None
        found = [_lean_spec(kind, s) for s in given]
        if any(s is None for s in found) or len({s.name for s in found if s}) != len(found):
            return None
        specs[kind] = tuple(s for s in found if s is not None)
    labels = data.get("labels")
    if labels is not None and not (type(labels) is list and all(type(x) is str for x in labels)):
        return None
    policy = _lean_policy(data.get("version_policy", {}))
    batching = _lean_batching(data.get("dynamic_batching"))
    description = data.get("description", "")
    metrics, metadata = data.get("metrics", {}), data.get("metadata", {})
    if policy is None or batching is UNSURE or type(description) is not str:
        return None
    limit = data.get("max_batch_size", 0)
    if (
        batching is not None
        and type(limit) is int
        and limit > 0
        and any(size > limit for size in batching.preferred_batch_sizes)
    ):
        return None  # the full parser words the refusal

    if type(metrics) is not dict or not all(
        type(k) is str and (type(v) is float or _is_int(v, -(2**53), 2**53))
        for k, v in metrics.items()
    ):
        return None
    if type(metadata) is not dict or not all(
        type(k) is str and type(v) is str for k, v in metadata.items()
    ):
        return None
    return EdgeModelConfig(
        name=data["name"],
        inputs=specs["input"],
        outputs=specs["output"],
        max_batch_size=data.get("max_batch_size", 0),
        labels=None if labels is None else tuple(labels),
        version_policy=policy,
        dynamic_batching=batching,
        description=description,
        metrics={k: float(v) for k, v in metrics.items()},
        metadata=dict(metadata),
    )


def _lean_policy(data: Any) -> EdgeVersionPolicy | None:
    if type(data) is not dict or not data.keys() <= {"kind", "count", "versions"}:
        return None
    kind, count, versions = data.get("kind", "latest"), data.get("count", 1), data.get("versions")
    if kind not in ("latest", "all", "specific") or not _is_int(count, 1, INT32_MAX):
        return None
    versions = [] if versions is None and "versions" not in data else versions
    if type(versions) is not list or not all(_is_int(v, 1, INT64_MAX) for v in versions):
        return None
    return EdgeVersionPolicy(kind, count, tuple(versions))


def _lean_batching(data: Any) -> Any:
    """The EdgeDynamicBatching, None (off), or UNSURE."""
    if data is None:
        return None
    if type(data) is not dict or not data.keys() <= {"max_queue_delay_us", "preferred_batch_sizes"}:
        return UNSURE
    delay, sizes = data.get("max_queue_delay_us", 500), data.get("preferred_batch_sizes", [])
    if not _is_int(delay, 0, INT64_MAX) or type(sizes) is not list:
        return UNSURE
    if not all(_is_int(s, 1, INT32_MAX) for s in sizes):
        return UNSURE
    return EdgeDynamicBatching(delay, tuple(sizes))


# -- reading ---------------------------------------------------------------------


@overload
def read_config(text: str, name: str, path: Path, *, lean: Literal[False]) -> ModelConfig: ...
@overload
def read_config(text: str, name: str, path: Path, *, lean: Literal[True]) -> EdgeModelConfig: ...
@overload
def read_config(
    text: str, name: str, path: Path, *, lean: bool
) -> ModelConfig | EdgeModelConfig: ...
def read_config(text: str, name: str, path: Path, *, lean: bool) -> ModelConfig | EdgeModelConfig:
    """Model ``name``'s config from the text of ``path``; ModelLoadError naming the file.

    ``lean``: the dataclass, read here when the text is plain and valid
    (:func:`parse_plain_yaml`, :func:`lean_config`), else through pydantic
    (whose error is raised as it is). Not lean: the pydantic model, always.
    """
    if lean:
        raw = parse_plain_yaml(text)
        config = None if raw is UNSURE else lean_config(raw)
        if config is not None:
            _check_name(config.name, name, path)
            return config
    full = _read_pydantic(text, name, path)
    if lean:
        return EdgeModelConfig.from_model(full)
    return full


def _read_pydantic(text: str, name: str, path: Path) -> ModelConfig:
    """The config through PyYAML (:class:`~edgecloud._config_files.Loader`) and pydantic."""
    import yaml
    from pydantic import ValidationError

    from ._config_files import Loader
    from ._config_models import ModelConfig

    try:
        config = ModelConfig.model_validate(yaml.load(text, Loader=Loader))
    except (yaml.YAMLError, ValidationError, ValueError) as exc:  # ValueError: 4300+ digits
        raise ModelLoadError(f"model {name!r}: invalid config {path}: {_one_line(exc)}") from exc
    _check_name(config.name, name, path)
    return config


def _check_name(found: str, name: str, path: Path) -> None:
    if found != name:
        raise ModelLoadError(f"model {name!r}: {path} names the model {found!r}; names must match")
