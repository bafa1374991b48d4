"""Sample, evaluation and calibration inputs for a model version.

A samples file is a numpy ``.npz`` archive::

    <input name>   one array per model input, named as in the model's config,
                   of exactly the declared datatype and shape (no casting)
    labels         optional: 1-D, one entry per row (class index, name or target)

Rows: for a batched model (``max_batch_size > 0``) the leading dimension of
every input is the batch, so a file holds any number of rows (runs larger
than ``max_batch_size`` are split by :class:`~edgecloud.backends.local.LocalBackend`);
every input must agree on it. For an unbatched model the file is one full
request; its rows are the common leading dimension of its non-scalar inputs
(scalars, such as a sample rate, are per request), or 1 when those disagree:
a stateful model's state has its own leading axis (Silero VAD: ``input``
``[N, 576]``, ``state`` ``[2, N, 128]``, ``sr`` a scalar), so no axis of the
request is "the rows" and the request counts as one. ``labels`` must have one
entry per row.

A model version may carry its samples (``samples.npz`` in the version,
hashed in ``version.json`` like every other artefact:
``ModelRepository.add_version(..., samples=PATH)``); every command that
needs data takes ``--data FILE.npz`` and otherwise uses the version's samples
(:func:`data_for`). Archives are read with ``allow_pickle=False``: a file
that holds pickled objects is refused, never unpickled. Every member's
``.npy`` header is read before its data: an archive whose arrays declare more
than :data:`MAX_NPZ_BYTES` in all, or more bytes than the member holds (a
forged header, a zip bomb), or two members for one name (``x`` and ``x.npy``)
is refused before anything is allocated.

Every problem is one :class:`~edgecloud.errors.ConfigError` naming the file
and what to fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, InvalidRequestError
from .repository import SAMPLES_FILE, ModelVersion
from .tensors import InputValidator, numpy_dtype

if TYPE_CHECKING:
    import zipfile

    from ._config_models import ModelConfig
    from ._edge_config import EdgeModelConfig, EdgeTensorSpec
    from .tensors import TensorSpec

__all__ = [
    "BUILT_BYTES",
    "DATA_OPTION",
    "LABELS",
    "SAMPLES_FILE",
    "Samples",
    "built_size_error",
    "checked_labels",
    "class_indices",
    "data_for",
    "expected_inputs",
    "finite",
    "load_request_samples",
    "load_samples",
    "read_npy",
    "row_batches",
    "score_classes",
    "target_values",
]

LABELS = "labels"
"""The optional array of per-row labels in a samples file."""

DATA_OPTION = "--data"
"""The command-line option every command that needs data takes (``FILE.npz``)."""


@dataclass(frozen=True, slots=True)
class Samples:
    """Validated inputs for one model (and optional labels), read from ``source``."""

    source: Path
    inputs: dict[str, np.ndarray[Any, Any]]
    """Input name -> array of the declared datatype and shape."""
    labels: np.ndarray[Any, Any] | None
    """1-D, ``rows`` entries; None when the file has none."""
    rows: int


def expected_inputs(config: ModelConfig | EdgeModelConfig) -> str:
    """The inputs a samples file must hold, as a message fragment.

    E.g. ``x (FP32 [rows, 4]), b (INT64 [rows, 2])``; ``?`` is any size.
    """
    return ", ".join(_describe(spec, config.batched) for spec in config.inputs)


def _describe(spec: TensorSpec | EdgeTensorSpec, batched: bool) -> str:
    dims = ["?" if d == -1 else str(d) for d in spec.shape]
    if batched:
        dims.insert(0, "rows")
    return f"{spec.name} ({spec.datatype} [{', '.join(dims)}])"


def load_samples(path: str | os.PathLike[str], config: ModelConfig | EdgeModelConfig) -> Samples:
    """Read and check a samples file against ``config``'s inputs.

    Raises ConfigError naming ``path`` when it is missing, a directory, not an
    ``.npz`` archive, holds pickled objects, lacks an input or has one the
    model does not take, has an array of the wrong datatype or shape, rows
    that disagree, no rows, or ``labels`` that are not 1-D with one per row.
    """
    from ._config_files import checked_path  # PyYAML + pydantic: off the edge path

    file = checked_path(Path(path), "file", "samples file")
    fix = f"expected a .npz file (numpy.savez) with {expected_inputs(config)}"
    arrays = _read_npz(file, fix)
    takes_labels = any(spec.name == LABELS for spec in config.inputs)
    labels = None if takes_labels else arrays.pop(LABELS, None)
    validator = InputValidator(config.name, config.inputs, config.max_batch_size)
    try:
        batch, checked = validator.check(arrays)  # byte order made native, nothing cast
    except InvalidRequestError as exc:
        raise ConfigError(f"samples file {file}: {exc.message}; {fix}") from exc
    arrays = dict(checked)
    rows = batch if config.batched else _request_rows(arrays)
    return _samples(file, arrays, labels, rows, fix)


def _samples(
    file: Path,
    arrays: dict[str, np.ndarray[Any, Any]],
    labels: np.ndarray[Any, Any] | None,
    rows: int,
    fix: str,
) -> Samples:
    """The checked file: at least one row, labels 1-D with one entry per row."""
    if rows == 0:
        raise ConfigError(f"samples file {file} holds no rows; {fix}")
    if labels is not None and (labels.ndim != 1 or len(labels) != rows):
        raise ConfigError(
            f"samples file {file}: labels must be 1-D with one entry per row ({rows}), "
            f"got shape {list(labels.shape)}"
        )
    return Samples(file, arrays, labels, rows)


MAX_NPZ_BYTES = 2 * 1024**3
"""Largest total of array bytes a samples archive may declare: 2 GiB, about 3,500
224x224 RGB FP32 images or 500,000 rows of 1,000 FP32 features. A samples file is a
check, calibration or evaluation set, read whole into memory; the cap keeps a
forged or compressed archive (a zip bomb) from exhausting the host's memory."""


BUILT_BYTES = 1024**3
"""Largest request edgecloud builds itself from a config (warm-up zeros, the random rows
of the row-independence check and of timings): 1 GiB, half :data:`MAX_NPZ_BYTES`. A
graph that fixes a dimension so large (``[2**62, 4]``, ``[10**9, 4]``) would make every
one of those allocations fail or exhaust the host's memory."""


def built_size_error(
    config: ModelConfig | EdgeModelConfig, shapes: dict[str, list[int]], purpose: str
) -> ConfigError | None:
    """A ConfigError naming the largest input when building ``shapes`` (input name ->
    full shape, rows included) for ``config`` would take over :data:`BUILT_BYTES`;
    None when it fits. Counted in Python integers: a huge shape cannot overflow.
    ``purpose``: what builds them ("warm-up"), said in the message."""
    sizes = {}
    for spec in config.inputs:
        count = 1
        for dim in shapes[spec.name]:
            count *= max(int(dim), 0)
        dtype = numpy_dtype(spec.datatype)
        sizes[spec.name] = count * (dtype.itemsize if dtype.kind != "O" else 8)
    if sum(sizes.values()) <= BUILT_BYTES:
        return None
    name = max(sizes, key=lambda n: sizes[n])
    return ConfigError(
        f"model {config.name!r}: input {name!r} of shape {shapes[name]} takes {sizes[name]} "
        f"bytes, over the {BUILT_BYTES} (1 GiB) {purpose} may build for one request; a model "
        "whose every request is that large cannot be served: export it with that dimension "
        "dynamic (or smaller)"
    )


def _read_npz(file: Path, fix: str) -> dict[str, np.ndarray[Any, Any]]:
    """Every array in the archive, read without unpickling anything.

    Each member's header is checked first (:func:`_check_members`), so a forged
    or oversized array is refused before numpy allocates it.
    """
    import zipfile  # here: zipfile (bz2, lzma) costs the edge 1.6 MB RSS

    try:
        with file.open("rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise ConfigError(f"samples file {file} is a single .npy array, not an archive; {fix}")
        if not magic.startswith(b"PK\x03\x04"):
            raise ConfigError(f"samples file {file} is not a .npz archive; {fix}")
        with zipfile.ZipFile(file) as archive:
            _check_members(file, archive, fix)
        with np.load(file, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except OSError as exc:
        from ._config_files import path_error  # PyYAML + pydantic: off the edge path

        raise path_error(file, "file", "samples file", exc) from exc
    except ValueError as exc:
        # allow_pickle=False: a pickled object (array) or a file numpy cannot read at all
        why = (
            "holds pickled Python objects, which are never loaded"
            if "pickle" in str(exc)
            else f"cannot be read ({' '.join(str(exc).split())})"
        )
        raise ConfigError(f"samples file {file} {why}; {fix}") from exc
    except (zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ConfigError(f"samples file {file} is not a valid .npz archive; {fix}") from exc


def _check_members(file: Path, archive: zipfile.ZipFile, fix: str) -> None:
    """Refuse, before any array is read: two members for one name (``x`` and
    ``x.npy``: numpy would silently pick one), a member that is not ``.npy``, one
    whose header declares more bytes than the member holds (forged or truncated),
    or arrays declaring more than :data:`MAX_NPZ_BYTES` in all. ConfigError
    naming the file and the member."""
    names: dict[str, str] = {}
    total = 0
    for info in archive.infolist():
        key = info.filename.removesuffix(".npy")
        if key in names:
            raise ConfigError(
                f"samples file {file} holds two arrays named {key!r} ({names[key]!r} and "
                f"{info.filename!r}); keep one; {fix}"
            )
        names[key] = info.filename
        with archive.open(info) as member:
            declared, header = _declared_bytes(file, info.filename, member, fix)
        if declared > info.file_size - header:
            raise ConfigError(
                f"samples file {file}: array {key!r} declares {declared} bytes but its "
                f"member holds {max(info.file_size - header, 0)} (a forged or truncated "
                f"header); {fix}"
            )
        total += declared
        if total > MAX_NPZ_BYTES:
            raise ConfigError(
                f"samples file {file}: its arrays declare over {MAX_NPZ_BYTES} bytes (2 GiB), "
                f"the most a samples file may hold; use fewer rows; {fix}"
            )


def _declared_bytes(file: Path, member_name: str, member: Any, fix: str) -> tuple[int, int]:
    """The bytes an ``.npy`` member's header declares for its data, and the header's
    length; ConfigError for a member that is not ``.npy`` or holds Python objects."""
    try:
        declared, dtype = _npy_header(member)
    except ValueError as exc:
        raise ConfigError(
            f"samples file {file}: member {member_name!r} is not a .npy array "
            f"({' '.join(str(exc).split())}); {fix}"
        ) from exc
    if dtype.hasobject:
        raise ConfigError(
            f"samples file {file} holds pickled Python objects, which are never loaded; {fix}"
        )
    return declared, member.tell()


def _npy_header(stream: Any) -> tuple[int, np.dtype[Any]]:
    """The data bytes a ``.npy`` header declares (its shape times the item size,
    in Python ints: a forged shape cannot overflow) and the dtype, the stream
    left at the data; ValueError for something that is not a ``.npy`` header."""
    from numpy.lib import format as npy

    version = npy.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = npy.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = npy.read_array_header_2_0(stream)
    else:
        raise ValueError(f".npy format version {version} is not read here")
    count = 1
    for dim in shape:
        count *= int(dim)
    return count * dtype.itemsize, dtype


def read_npy(path: str | os.PathLike[str], what: str) -> np.ndarray[Any, Any]:
    """The array in a ``.npy`` file, its header checked before numpy allocates.

    ``what`` names the file in messages (``"--input file"``, ``"fit file"``).
    ConfigError (naming the file) for a path that is missing or not a file,
    a file that is not ``.npy``, an array of Python objects (never unpickled),
    a header declaring more data bytes than the file holds after it (forged
    or truncated), or more than :data:`MAX_NPZ_BYTES` (the samples cap).
    """
    from numpy.lib import format as npy

    from ._config_files import checked_path  # PyYAML + pydantic: off the edge path

    file = checked_path(Path(path), "file", what)
    fix = "save one array with numpy.save"
    try:
        with file.open("rb") as f:
            declared, dtype = _npy_header(f)
            left = os.fstat(f.fileno()).st_size - f.tell()
            if dtype.hasobject:
                raise ConfigError(
                    f"{what} {file} holds pickled Python objects, which are never loaded; {fix}"
                )
            if declared > left:
                raise ConfigError(
                    f"{what} {file}: its header declares {declared} data bytes but the file "
                    f"holds {left} after it (truncated or forged); {fix}"
                )
            if declared > MAX_NPZ_BYTES:
                raise ConfigError(
                    f"{what} {file}: its array declares {declared} bytes, over "
                    f"{MAX_NPZ_BYTES} (2 GiB); pass a smaller array"
                )
            f.seek(0)
            return np.asarray(npy.read_array(f, allow_pickle=False))
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(
            f"cannot read {what} {file} as .npy ({' '.join(str(exc).split())}); {fix}"
        ) from exc


def _rows(file: Path, arrays: dict[str, np.ndarray[Any, Any]]) -> int:
    """Rows of a set of inputs that must agree on them: their common leading dimension."""
    leading = {name: (a.shape[0] if a.ndim else 1) for name, a in arrays.items()}
    if len(set(leading.values())) > 1:
        raise ConfigError(
            f"samples file {file}: inputs disagree on the number of rows "
            f"(leading dimensions {leading}); give every input the same number of rows"
        )
    return next(iter(leading.values()), 1)


def _request_rows(arrays: dict[str, np.ndarray[Any, Any]]) -> int:
    """Rows of an unbatched model's sample (one request): its non-scalar inputs'
    common leading dimension, or 1 when they disagree or every input is a scalar."""
    leading = {a.shape[0] for a in arrays.values() if a.ndim}
    return leading.pop() if len(leading) == 1 else 1


def data_for(
    version: ModelVersion,
    data: str | os.PathLike[str] | None = None,
    *,
    purpose: str | None = None,
    flag: str = DATA_OPTION,
) -> Samples:
    """The inputs a command runs on: ``data`` (``--data FILE``) if given, else
    the version's ``samples.npz``; ConfigError saying what to pass when neither
    (``flag``: the option that passes the file, e.g. ``--calibration``).

    The version's samples are checked against its config like any other file
    (their sha256 is checked when the version is loaded with ``verify``).
    ``purpose`` (``"split"``, ``"advise --measure"``) starts the message with
    what needs the data; ``flag`` is the option named in it (``--data`` unless
    the command takes the file by another, e.g. ``--small-data``, ``--calibration``). Every
    command says it this way: one line, the option, the inputs expected.
    """
    if data is not None:
        return load_samples(data, version.config)
    if SAMPLES_FILE in version.files:
        return load_samples(version.path / SAMPLES_FILE, version.config)
    raise ConfigError(
        f"{f'{purpose} needs data: ' if purpose else ''}"
        f"model {version.name!r} version {version.version} carries no samples: pass "
        f"{flag} FILE.npz with inputs named {expected_inputs(version.config)} "
        f"(and optionally '{LABELS}', one per row)"
    )


def finite(samples: Samples, purpose: str) -> Samples:
    """``samples`` when every float input is finite; else ConfigError naming the
    file, the input and the first offending row (a measurement on NaN or inf,
    such as a timing, cosine or accuracy, means nothing, and training on them
    diverges). ``purpose``: what uses them (``"split"``), said in the message.
    Integer inputs pass."""
    for name, array in samples.inputs.items():
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            bad = ~np.isfinite(array)
            where = f" (first at row {int(np.argwhere(bad)[0][0])})" if array.ndim else ""
            raise ConfigError(
                f"{purpose}: samples file {samples.source}: input {name!r} holds "
                f"{int(bad.sum())} NaN or infinite values{where}; {purpose} needs finite "
                "inputs: drop or fill those rows"
            )
    return samples


def load_request_samples(path: str | os.PathLike[str], names: Sequence[str]) -> Samples:
    """Read a samples file of *request* inputs: exactly ``names``, plus optional ``labels``.

    For commands that send the rows through a deployment (``calibrate``): the
    file holds the inputs as a request carries them, whatever each model then
    takes. Checked here: the archive (as :func:`load_samples`), exactly the
    names (a missing or unknown one is named), every input's leading
    dimension is the same number of rows (> 0), labels 1-D with one per row.
    Datatypes and shapes are checked by the models that run them.
    """
    from ._config_files import checked_path  # PyYAML + pydantic: off the edge path

    file = checked_path(Path(path), "file", "samples file")
    fix = f"expected a .npz file (numpy.savez) with inputs {', '.join(names)} and '{LABELS}'"
    arrays = _read_npz(file, fix)
    labels = arrays.pop(LABELS, None)
    missing = [n for n in names if n not in arrays]
    unknown = sorted(set(arrays) - set(names))
    if missing or unknown:
        what = "; ".join(
            part
            for part in (
                f"lacks {', '.join(missing)}" if missing else "",
                f"holds {', '.join(unknown)}, which the request does not carry" if unknown else "",
            )
            if part
        )
        raise ConfigError(f"samples file {file} {what}; {fix}")
    scalars = [n for n, a in arrays.items() if a.ndim == 0]
    if scalars:
        raise ConfigError(
            f"samples file {file}: {', '.join(scalars)} has no rows (a scalar); {fix}"
        )
    return _samples(file, arrays, labels, _rows(file, arrays), fix)


LABEL_KINDS = "integer class indices or class names the model declares"
"""What a classifier's labels may be: the phrase every label error uses."""


def class_indices(
    labels: np.ndarray[Any, Any],
    classes: Sequence[str] | None,
    source: str,
    n_classes: int | None = None,
) -> np.ndarray[Any, Any]:
    """Labels as int64 class indices in ``[0, n_classes)``: the one label check.

    ``labels``: 1-D, one per row. Integers (any width, signed or not) are class
    indices; strings are names, mapped through ``classes`` (a model's
    ``labels``, index-aligned with its class scores). ``n_classes``: how many
    classes the model scores (default ``len(classes)``; None and no classes: no
    upper bound). Every consumer of a classifier's labels (``compress``
    evaluation, prune/distill training, ``calibrate``, ``import --samples``)
    calls this, so the rules and the messages are the same everywhere.

    ConfigError naming ``source`` for: labels not 1-D; floats (NaN included:
    a float is never rounded into a class), booleans or any other dtype;
    names when the model declares none, names it does not declare, or a name
    it declares twice; an index outside ``[0, n_classes)`` (the range and the
    offending values are named, exact even for uint64 near 2**64).
    """
    if labels.ndim != 1:
        raise ConfigError(
            f"{source}: labels must be 1-D, one per row, got shape {list(labels.shape)}; "
            f"give {LABEL_KINDS}"
        )
    n = n_classes if n_classes is not None else (len(classes) if classes else None)
    if labels.dtype.kind in "US":
        return _named(labels, classes, source)
    if labels.dtype.kind not in "iu":
        what = {"f": "floats", "b": "booleans", "c": "complex numbers"}.get(
            labels.dtype.kind, f"dtype {labels.dtype}"
        )
        nan = ", some NaN" if labels.dtype.kind in "fc" and np.isnan(labels).any() else ""
        raise ConfigError(
            f"{source}: labels are {what} ({labels.dtype}{nan}); give {LABEL_KINDS}"
            f"{f' (indices in [0, {n}))' if n is not None else ''}"
        )
    if labels.size:
        # compare in the labels' own dtype: astype(int64) would wrap uint64 >= 2**63
        low, high = labels.min(), labels.max()
        if low < 0 or (n is not None and high >= n):
            bad = labels[(labels < 0) | (labels >= n if n is not None else False)]
            shown = ", ".join(str(int(v)) for v in np.unique(bad)[:5])
            raise ConfigError(
                f"{source}: labels must be class indices in [0, {n if n is not None else 'n'})"
                f"{f' ({n} classes)' if n is not None else ''}, got {shown}"
                f"{' ...' if len(np.unique(bad)) > 5 else ''} "
                f"(labels range {int(low)}..{int(high)})"
            )
    return labels.astype(np.int64)


def _named(
    labels: np.ndarray[Any, Any], classes: Sequence[str] | None, source: str
) -> np.ndarray[Any, Any]:
    """Class names -> indices through the model's ``classes``."""
    if not classes:
        raise ConfigError(
            f"{source}: labels are class names but the model declares no class names "
            "(labels in its config); give integer class indices"
        )
    index: dict[str, int] = {}
    twice: set[str] = set()
    for i, name in enumerate(classes):
        if name in index:
            twice.add(name)
        index.setdefault(name, i)
    names = _label_names(labels, source)
    used = set(names)
    unknown = sorted(used - set(index))
    if unknown:
        raise ConfigError(
            f"{source}: labels {', '.join(map(repr, unknown[:5]))}"
            f"{' ...' if len(unknown) > 5 else ''} are not classes of the model "
            f"({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}); "
            f"give {LABEL_KINDS}"
        )
    ambiguous = sorted(used & twice)
    if ambiguous:
        raise ConfigError(
            f"{source}: labels {', '.join(map(repr, ambiguous[:5]))} name a class the model "
            "declares more than once; give integer class indices"
        )
    return np.array([index[n] for n in names], np.int64)


def _label_names(labels: np.ndarray[Any, Any], source: str) -> list[str]:
    """String labels as Python strings; byte strings (``S`` dtype, what ``np.savez`` of
    ``b'...'`` gives) are decoded as UTF-8. ConfigError naming ``source`` for bytes that
    are not UTF-8."""
    if labels.dtype.kind != "S":
        return [str(n) for n in labels.tolist()]
    names = []
    for i, raw in enumerate(labels.tolist()):
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{source}: label {i} ({raw!r}) is a byte string that is not UTF-8 "
                f"({exc.reason}); save class names as str (numpy 'U' dtype) or UTF-8 bytes"
            ) from exc
    return names


def target_values(labels: np.ndarray[Any, Any], source: str) -> np.ndarray[Any, Any]:
    """A regression's labels (targets, one per row) as float32; ConfigError naming
    ``source`` unless they are 1-D finite numbers (integers or floats; not
    booleans, not names, not NaN/Inf, none beyond float32's range: checked after the
    cast, so 1e39 is refused rather than stored as inf)."""
    if labels.ndim != 1:
        raise ConfigError(
            f"{source}: labels must be 1-D, one target per row, got shape {list(labels.shape)}"
        )
    if labels.dtype.kind not in "iuf":
        raise ConfigError(
            f"{source}: the model's first output is not class scores, so labels are "
            f"regression targets and must be numbers, got {labels.dtype}"
        )
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf: refused below
        values = labels.astype(np.float32)
    if not np.isfinite(values).all():
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        raise ConfigError(
            f"{source}: {bad} of {values.size} labels (regression targets) are NaN, Inf or "
            f"beyond float32's range (|value| > {float(np.finfo(np.float32).max):.4g})"
        )
    return values


def score_classes(shape: Sequence[int]) -> int | None:
    """Classes scored by a first output of (full, rows-first) ``shape``: C for
    ``[rows, C]`` with C > 1, -1 for ``[rows, ?]`` (not known until run), None
    when it is not class scores (a regression: its labels are targets)."""
    if len(shape) != 2 or shape[1] in (0, 1) or shape[1] < -1:
        return None
    return int(shape[1])


def checked_labels(
    labels: np.ndarray[Any, Any],
    config: ModelConfig | EdgeModelConfig,
    source: str,
    scores: Sequence[int] | None = None,
) -> np.ndarray[Any, Any]:
    """A model's labels normalised by what its first output is: class indices
    (:func:`class_indices`) where it holds class scores ``[rows, C]``, float32
    targets (:func:`target_values`) otherwise. ``scores``: the first output's
    shape as run (rows first); default the declared one. Where the number of
    classes is not declared (``[rows, ?]``) and not given, names are mapped and
    integers checked against the model's class names, and floats are left for
    the check at run time. ConfigError naming ``source``.
    """
    if scores is None:
        first = config.outputs[0]
        scores = first.full_shape(config.batched)
    n = score_classes(scores)
    if n is None:
        return target_values(labels, source)
    if n == -1:
        if labels.ndim == 1 and labels.dtype.kind == "f":
            return labels
        return class_indices(labels, config.labels, source)
    return class_indices(labels, config.labels, source, n)


def row_batches(
    samples: Samples, config: ModelConfig, size: int, *, limit: int | None = None
) -> list[dict[str, np.ndarray[Any, Any]]]:
    """The samples as requests of ``size`` rows each (the last may be shorter),
    at most ``limit`` of them; an unbatched model's file is one request, whole.

    Arrays are contiguous copies, safe to send as they are. ValueError when
    ``size`` < 1 (a programming error, not a user's).
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    if not config.batched:
        return [dict(samples.inputs)]
    starts = range(0, samples.rows, size)[:limit]
    return [
        {n: np.ascontiguousarray(a[start : start + size]) for n, a in samples.inputs.items()}
        for start in starts
    ]
