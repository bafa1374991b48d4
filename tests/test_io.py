from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecloud import ConfigError, InvalidRequestError
from edgecloud.io import load_inputs

from .models import affine_config, two_input_config


def test_npy_for_a_single_input_model(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    inputs = load_inputs(tmp_path / "x.npy", affine_config())
    assert list(inputs) == ["x"] and inputs["x"].shape == (2, 4)


def test_npy_needs_a_single_input_model(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((2, 2), np.float32))
    with pytest.raises(InvalidRequestError, match=r"inputs \['a', 'b'\]; use .npz or .json"):
        load_inputs(tmp_path / "x.npy", two_input_config())


def test_npz_names_inputs(tmp_path: Path) -> None:
    np.savez(tmp_path / "in.npz", a=np.ones((1, 2), np.float32), b=np.ones((1, 2), np.int64))
    assert set(load_inputs(tmp_path / "in.npz", two_input_config())) == {"a", "b"}


def test_json_decodes_to_declared_datatypes(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text(json.dumps({"a": [[1.5, 2]], "b": [[3, 4]]}))
    inputs = load_inputs(tmp_path / "in.json", two_input_config())
    assert inputs["a"].dtype == np.float32 and inputs["b"].dtype == np.int64


def test_json_open_inference_protocol_body(tmp_path: Path) -> None:
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": list(range(8))}]}
    (tmp_path / "in.json").write_text(json.dumps(body))
    inputs = load_inputs(tmp_path / "in.json", affine_config())
    assert inputs["x"].shape == (2, 4) and inputs["x"].dtype == np.float32


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (
            '{"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": [1, 2]}]}',
            InvalidRequestError,
            r"2 values in data, but shape \[3, 4\] holds 12",
        ),
        (
            '{"inputs": [{"name": "x", "shape": [1, 4], "data": [1, 2, 3, 4]}]}',
            InvalidRequestError,
            "has no 'datatype'",  # as the server says: the wire's own decoder
        ),
        ('{"x": [[1, 2], [3]]}', InvalidRequestError, "nested data does not match shape"),
        ('{"x": "ab"', InvalidRequestError, "not valid JSON"),
        ("[1, 2]", InvalidRequestError, "must be an object"),
        (
            '{"inputs": [{"name": "x", "shape": [1], "datatype": "F32", "data": [1]}]}',
            InvalidRequestError,
            "F32",
        ),
    ],
)
def test_bad_json_is_a_clear_error(
    tmp_path: Path, content: str, error: type[Exception], message: str
) -> None:
    (tmp_path / "in.json").write_text(content)
    with pytest.raises(error, match=message):
        load_inputs(tmp_path / "in.json", affine_config())


def test_missing_corrupt_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_inputs(tmp_path / "absent.npy", affine_config())
    with pytest.raises(ConfigError, match="is a directory; expected a file"):
        load_inputs(tmp_path, affine_config())
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InvalidRequestError, match="cannot read"):
        load_inputs(tmp_path / "bad.npy", affine_config())
    (tmp_path / "bad.npz").write_bytes(b"PK garbage")
    with pytest.raises(InvalidRequestError, match="input file .*bad.npz is not a .npz archive"):
        load_inputs(tmp_path / "bad.npz", affine_config())
    (tmp_path / "in.csv").write_text("1,2")
    with pytest.raises(InvalidRequestError, match=r"must end in .npy, .npz or .json"):
        load_inputs(tmp_path / "in.csv", affine_config())


def test_an_npz_input_is_read_like_a_samples_file(tmp_path: Path) -> None:
    """A samples file is a valid input file (its labels are not an input), and a member
    whose header declares more than it holds is refused before numpy allocates it."""
    import zipfile

    np.savez(tmp_path / "s.npz", x=np.ones((2, 4), np.float32), labels=np.array([0, 1]))
    assert list(load_inputs(tmp_path / "s.npz", affine_config())) == ["x"]
    header = (
        b"\x93NUMPY\x01\x00"
        + b"v\x00"
        + (b"{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000000, 4), }").ljust(118)
        + b"\n"
    )
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as archive:
        archive.writestr("x.npy", header + b"\x00" * 16)
    with pytest.raises(InvalidRequestError, match="bomb.npz"):
        load_inputs(tmp_path / "bomb.npz", affine_config())


@pytest.mark.parametrize(
    ("shape", "size", "message"),
    [
        ((10**11, 4), None, "declares 1600000000000 data bytes but the file holds 64"),
        ((10**8, 4), None, "declares 1600000000 data bytes but the file holds 64"),
        # as many bytes as declared (a sparse file) but over the cap: refused unread
        ((700_000_000, 1), 2_800_000_200, "declares 2800000000 bytes, over 2147483648"),
    ],
)
def test_npy_headers_are_checked_before_allocation(
    tmp_path: Path, shape: tuple[int, ...], size: int | None, message: str
) -> None:
    from .filter.test_filter import forged_npy

    forged_npy(tmp_path / "x.npy", shape, size)
    with pytest.raises(InvalidRequestError, match=message):
        load_inputs(tmp_path / "x.npy", affine_config())


def test_npy_of_objects_or_cut_short_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidRequestError, match="pickled Python objects"):
        load_inputs(tmp_path / "o.npy", affine_config())
    np.save(tmp_path / "c.npy", np.zeros((4, 3), np.float32))
    (tmp_path / "c.npy").write_bytes((tmp_path / "c.npy").read_bytes()[:-4])
    with pytest.raises(InvalidRequestError, match="truncated or forged"):
        load_inputs(tmp_path / "c.npy", affine_config())
