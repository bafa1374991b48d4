"""Reading request tensors from files (.npy, .npz, .json) for the CLI and scripts."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ._config_files import checked_path
from .errors import InvalidRequestError, clip
from .repository import ModelConfig
from .tensors import TensorSpec, datatype_of, numpy_dtype
from .wire.rest import decode_request, loads, tensor_from_json

__all__ = ["load_inputs"]

Arrays = dict[str, np.ndarray[Any, Any]]


def load_inputs(path: str | Path, config: ModelConfig) -> Arrays:
    """Input tensors for ``config``'s model from a file.

    - ``.npy``: one array, for a model with exactly one input;
    - ``.npz``: arrays named after the model's inputs;
    - ``.json``: ``{"input_name": nested list, ...}`` or an Open Inference
      Protocol body ``{"inputs": [{"name", "shape", "datatype", "data"}]}``.

    Nothing is coerced, as on the server: JSON goes through the wire's one
    decoder (:mod:`edgecloud.wire.values`) with each input's declared datatype
    (``1.5`` or ``"7"`` for INT64, ``1e39`` for FP32 are errors naming the
    tensor, element and value), and arrays must already have the declared
    dtype. Raises ConfigError for a path that is missing or not a readable
    file, InvalidRequestError (or TensorValueError) for its contents.
    """
    file = checked_path(Path(path), "file", "input file")
    suffix = file.suffix.lower()
    try:
        if suffix == ".npy":
            arrays = _single(config, _npy(file), file)
        elif suffix == ".npz":
            arrays = _npz(file, config)
        elif suffix == ".json":
            return _from_json(file.read_bytes(), config)
        else:
            raise InvalidRequestError(f"input file {file} must end in .npy, .npz or .json")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"cannot read {file}: {' '.join(str(exc).split())}") from exc
    return _checked_arrays(arrays, config, file)


def _npy(file: Path) -> np.ndarray[Any, Any]:
    """The file's array, its header checked before numpy allocates (:func:`read_npy`)."""
    from .errors import ConfigError
    from .samples import read_npy

    try:
        return read_npy(file, "input file")
    except ConfigError as exc:
        raise InvalidRequestError(exc.message) from exc


def _npz(file: Path, config: ModelConfig) -> Arrays:
    """The archive's arrays, read as samples files are (headers checked before numpy
    allocates, nothing unpickled); a samples file's ``labels`` is not an input."""
    from .errors import ConfigError
    from .samples import LABELS, _read_npz

    try:
        arrays = _read_npz(file, "arrays named after the model's inputs (numpy.savez)")
    except ConfigError as exc:
        raise InvalidRequestError(exc.message.replace("samples file", "input file", 1)) from exc
    if LABELS not in {spec.name for spec in config.inputs}:
        arrays.pop(LABELS, None)
    return arrays


def _single(config: ModelConfig, array: np.ndarray[Any, Any], file: Path) -> Arrays:
    if len(config.inputs) != 1:
        names = [i.name for i in config.inputs]
        raise InvalidRequestError(
            f"{file} holds one array but model {config.name!r} has inputs {names}; "
            "use .npz or .json to name them"
        )
    return {config.inputs[0].name: array}


def _checked_arrays(arrays: Arrays, config: ModelConfig, file: Path) -> Arrays:
    """Arrays whose dtype is the declared one; another dtype is refused, not cast."""
    specs = _specs(config)
    for name, array in arrays.items():
        spec = _spec(specs, name, config)
        if spec.datatype == "BYTES":
            ok = array.dtype.kind in ("S", "U", "O")
        else:
            ok = array.dtype == numpy_dtype(spec.datatype)
        if not ok:
            raise InvalidRequestError(
                f"{file}: input {name!r} is {array.dtype} but model {config.name!r} declares "
                f"{spec.datatype}; convert it explicitly (e.g. array.astype(...)) before saving"
            )
    return arrays


def _specs(config: ModelConfig) -> dict[str, TensorSpec]:
    return {s.name: s for s in config.inputs}


def _spec(specs: dict[str, TensorSpec], name: str, config: ModelConfig) -> TensorSpec:
    spec = specs.get(name)
    if spec is None:
        raise InvalidRequestError(
            f"model {config.name!r} has no input {clip(name)}; its inputs are {sorted(specs)}"
        )
    return spec


def _from_json(raw: bytes, config: ModelConfig) -> Arrays:
    try:
        body = loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"not valid JSON: {' '.join(str(exc).split())}") from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("JSON input must be an object mapping input names to data")
    specs = _specs(config)
    if isinstance(body.get("inputs"), list):  # an Open Inference Protocol body: as the server
        arrays = decode_request(raw, None, config.name, None).request.inputs
        for name, array in arrays.items():
            spec, sent = _spec(specs, name, config), datatype_of(array)
            if spec.datatype != sent:
                raise InvalidRequestError(
                    f"input {name!r} is sent as {sent} but model {config.name!r} declares "
                    f"{spec.datatype}"
                )
        return dict(arrays)
    return {name: _plain(name, data, _spec(specs, name, config)) for name, data in body.items()}


def _plain(name: str, data: Any, spec: TensorSpec) -> np.ndarray[Any, Any]:
    """``data`` (nested lists, or one value) decoded with ``spec``'s datatype."""
    shape: list[int] = []
    level = data
    while type(level) is list:
        shape.append(len(level))
        if not level:
            break
        level = level[0]
    array: np.ndarray[Any, Any] = tensor_from_json(data, spec.datatype, shape, name)
    return array
