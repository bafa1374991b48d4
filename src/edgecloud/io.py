"""Reading request tensors from files (.npy, .npz, .json) for the CLI and scripts."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidRequestError
from .repository import ModelConfig
from .tensors import TensorSpec, numpy_dtype

__all__ = ["load_inputs"]

Arrays = dict[str, np.ndarray[Any, Any]]


def load_inputs(path: str | Path, config: ModelConfig) -> Arrays:
    """Input tensors for ``config``'s model from a file.

    - ``.npy``: one array, for a model with exactly one input;
    - ``.npz``: arrays named after the model's inputs;
    - ``.json``: ``{"input_name": nested list, ...}`` or an Open Inference
      Protocol body ``{"inputs": [{"name", "shape", "datatype", "data"}]}``.

    JSON numbers are cast to each input's declared datatype.
    """
    file = Path(path)
    if not file.is_file():
        raise InvalidRequestError(f"input file {file} does not exist")
    suffix = file.suffix.lower()
    try:
        if suffix == ".npy":
            return _single(config, np.load(file, allow_pickle=False), file)
        if suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        if suffix == ".json":
            return _from_json(json.loads(file.read_text()), config)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"cannot read {file}: {' '.join(str(exc).split())}") from exc
    raise InvalidRequestError(f"input file {file} must end in .npy, .npz or .json")


def _single(config: ModelConfig, array: np.ndarray[Any, Any], file: Path) -> Arrays:
    if len(config.inputs) != 1:
        names = [i.name for i in config.inputs]
        raise InvalidRequestError(
            f"{file} holds one array but model {config.name!r} has inputs {names}; "
            "use .npz or .json to name them"
        )
    return {config.inputs[0].name: array}


def _from_json(body: Any, config: ModelConfig) -> Arrays:
    specs = {s.name: s for s in config.inputs}
    if isinstance(body, dict) and isinstance(body.get("inputs"), list):
        return {t["name"]: _v2_tensor(t, specs) for t in body["inputs"]}
    if not isinstance(body, dict):
        raise InvalidRequestError("JSON input must be an object mapping input names to data")
    return {name: _cast(name, data, specs) for name, data in body.items()}


def _v2_tensor(tensor: Any, specs: dict[str, TensorSpec]) -> np.ndarray[Any, Any]:
    if not isinstance(tensor, dict) or not {"name", "data"} <= tensor.keys():
        raise InvalidRequestError("each entry of 'inputs' needs at least 'name' and 'data'")
    name = str(tensor["name"])
    datatype = tensor.get("datatype")
    array = _cast(name, tensor["data"], specs, numpy_dtype(datatype) if datatype else None)
    if "shape" in tensor:
        try:
            array = array.reshape([int(d) for d in tensor["shape"]])
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(
                f"input {name!r}: {array.size} values do not fit shape {tensor['shape']}"
            ) from exc
    return array


def _cast(
    name: str, data: Any, specs: dict[str, TensorSpec], dtype: np.dtype[Any] | None = None
) -> np.ndarray[Any, Any]:
    if dtype is None:
        spec = specs.get(name)
        dtype = numpy_dtype(spec.datatype) if spec else None
    try:
        return np.asarray(data, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(
            f"input {name!r}: data is not a rectangular array of {dtype}: {exc}"
        ) from exc
