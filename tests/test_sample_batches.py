"""Requests cut from a samples file (:func:`edgecloud.samples.row_batches`), the rows of
an unbatched model's file, and the one-line message every command gives without data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecloud import ConfigError, ModelRepository
from edgecloud.repository import ModelConfig
from edgecloud.samples import data_for, load_samples, row_batches
from edgecloud.tensors import TensorSpec

from .models import affine_config, affine_onnx


def _unbatched(*inputs: tuple[str, tuple[int, ...], str]) -> ModelConfig:
    return ModelConfig(
        name="u", max_batch_size=0,
        inputs=[TensorSpec(name=n, datatype=d, shape=s) for n, s, d in inputs],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=(-1,))],
    )  # fmt: skip


def test_row_batches_cut_a_batched_file_into_requests(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x=np.arange(28, dtype=np.float32).reshape(7, 4))
    samples = load_samples(tmp_path / "s.npz", affine_config())
    batches = row_batches(samples, affine_config(), 3)
    assert [b["x"].shape[0] for b in batches] == [3, 3, 1]
    assert all(b["x"].flags.c_contiguous for b in batches)
    assert len(row_batches(samples, affine_config(), 1, limit=2)) == 2
    assert len(row_batches(samples, affine_config(), 100)) == 1
    with pytest.raises(ValueError, match="at least 1"):
        row_batches(samples, affine_config(), 0)


def test_an_unbatched_file_is_one_request_whatever_its_axes(tmp_path: Path) -> None:
    """Silero VAD's layout: input [N, 576], state [2, N, 128], sr a scalar."""
    config = _unbatched(("input", (-1, -1), "FP32"), ("state", (2, -1, 128), "FP32"),
                        ("sr", (), "INT64"))  # fmt: skip
    arrays = {"input": np.zeros((8, 576), np.float32), "state": np.zeros((2, 8, 128), np.float32),
              "sr": np.array(16000, np.int64)}  # fmt: skip
    np.savez(tmp_path / "vad.npz", **arrays)  # type: ignore[arg-type]
    samples = load_samples(tmp_path / "vad.npz", config)
    assert samples.rows == 1  # the leading axes disagree (8 and 2): one request
    (request,) = row_batches(samples, config, 1)
    assert request["input"].shape == (8, 576)
    np.savez(tmp_path / "labelled.npz", **arrays, labels=np.array([1, 0]))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"one entry per row \(1\)"):
        load_samples(tmp_path / "labelled.npz", config)


def test_an_unbatched_files_scalars_do_not_count_as_rows(tmp_path: Path) -> None:
    config = _unbatched(("x", (-1, 4), "FP32"), ("gain", (), "FP32"))
    np.savez(tmp_path / "s.npz", x=np.ones((3, 4), np.float32), gain=np.array(2.0, np.float32),
             labels=np.array([0, 1, 2]))  # fmt: skip
    assert load_samples(tmp_path / "s.npz", config).rows == 3
    only = _unbatched(("gain", (), "FP32"))
    np.savez(tmp_path / "scalar.npz", gain=np.array(2.0, np.float32))
    assert load_samples(tmp_path / "scalar.npz", only).rows == 1


def test_without_data_every_command_says_the_same_line(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    version = repo.add_version("a", affine_onnx(tmp_path / "a.onnx"), config=affine_config("a"))
    with pytest.raises(ConfigError) as plain:
        data_for(version)
    with pytest.raises(ConfigError) as said:
        data_for(version, purpose="split")
    with pytest.raises(ConfigError) as flagged:
        data_for(version, purpose="advise --measure", flag="--small-data")
    assert said.value.message == f"split needs data: {plain.value.message}"
    assert "pass --small-data FILE.npz with inputs named x (FP32 [rows, 4])" in str(flagged.value)
    assert all("\n" not in e.value.message for e in (plain, said, flagged))
