"""Codecs for one changed initializer: how its new bytes travel given the old ones.

A codec turns (old raw_data, new raw_data) of one tensor into a JSON-able
``params`` dict and a byte ``payload``, and back. Codecs register themselves
by name in :data:`CODECS` (a registry filled by a decorator, as MLServer's
``register_input_codec``). Each delta names the codec that was asked for; a
lossy codec encodes only what it is meant for and hands every other tensor to
the lossless one, so every tensor entry names the codec that decodes it.

* ``xor-zstd`` (lossless): XOR of the old and new bit patterns, split into
  byte planes (every element's byte 0, then every byte 1, ...), zstd. A
  fine-tune leaves sign and exponent bytes mostly unchanged, so the XOR's
  high planes are runs of zeros that zstd removes, and the noisy low mantissa
  planes do not dilute them. Byte grouping of float tensors is ZipNN's
  (Hershcovitch et al., "ZipNN: Lossless Compression for AI Models", 2024),
  XOR against the base is their delta mode for fine-tunes.
* ``int8`` (lossy): the difference ``new - old`` in float32 (float64 for
  DOUBLE), quantized to int8 with one scale per row (axis 0: ``max|d| /
  127``), zstd. BitDelta (Liu et al., 2024, "Your Fine-Tune May Only Be
  Worth One Bit") keeps one scale per matrix and 1-bit signs; DeltaZip (Yao
  et al., 2023) quantizes deltas group-wise; a per-row int8 scale sits
  between them and needs no calibration data.
* ``topk`` (lossy): the fewest largest differences by magnitude whose
  omission leaves an error below :data:`TOPK_RELATIVE_ERROR` of the new
  tensor's norm, kept as a bitmask plus float16 values scaled by the largest
  one, zstd — magnitude sparsification of the task vector as in TIES-merging
  (Yadav et al., 2023) and the sparse half of DeltaZip; the count adapts to
  the change, so a retrain (every weight moved) keeps nearly everything
  instead of a fixed fraction that would wreck it.

Lossy codecs touch only float tensors of rank >= 2 with at least
:data:`MIN_LOSSY_ELEMENTS` elements and finite values (BitDelta quantizes
only the linear layers' weights): biases, norms, integer tensors and
anything non-finite stay exact.

Decoding is deterministic (numpy elementwise IEEE arithmetic, no fused
multiply-add), so the publisher computes the device's result byte for byte
and signs its sha256. Every length is checked before allocation: a payload
decodes to exactly the old tensor's size or raises :class:`CodecError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .._optional import require
from .onnx_wire import ITEMSIZE, Initializer

__all__ = [
    "CODECS",
    "MIN_LOSSY_ELEMENTS",
    "TOPK_RELATIVE_ERROR",
    "Codec",
    "CodecError",
    "Encoded",
    "register",
]

Array = np.ndarray[Any, Any]

#: Smallest tensor a lossy codec quantizes; smaller ones stay exact (biases and
#: norms are a few KB in all, and their exactness costs nothing measurable).
MIN_LOSSY_ELEMENTS = 4096
#: Largest ``||dropped differences|| / ||new tensor||`` (Frobenius norms) ``topk``
#: leaves per tensor. TIES-merging keeps a fixed 20 % of a task vector; a bound
#: on the error instead keeps the outputs close whatever the change. Measured on
#: minilm after 10 AdamW steps (lr 5e-5) of every weight: 15.5 % of the full
#: file, min cosine 0.9993 to the fine-tuned model's embeddings (int8: 11.8 %,
#: cosine 1.0000; xor-zstd: 31.6 %, exact).
TOPK_RELATIVE_ERROR = 1e-3
#: zstd level: 3 is zstd's default; on minilm's XOR planes level 9 saved < 1 %
#: for 4x the time (measured on this machine).
ZSTD_LEVEL = 3

#: numpy dtypes of float TensorProto types a lossy codec may quantize
#: (1 FLOAT, 10 FLOAT16, 11 DOUBLE); bfloat16 has no numpy dtype.
_FLOATS: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),
    10: np.dtype("<f2"),
    11: np.dtype("<f8"),
}


class CodecError(ValueError):
    """A payload or its params do not decode to the tensor they claim to be."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """One tensor's encoding: the codec that decodes it, its params and payload."""

    codec: str
    params: dict[str, Any]
    payload: bytes


class Codec(Protocol):
    name: str
    lossy: bool

    def encode(self, tensor: Initializer, old: memoryview, new: memoryview) -> Encoded:
        """Encode the change from ``old`` to ``new`` (equal lengths) of ``tensor``."""
        ...

    def decode(
        self, tensor: Initializer, old: memoryview, params: dict[str, Any], payload: memoryview
    ) -> Array:
        """The new raw bytes (uint8, ``len(old)`` long). Raises CodecError."""
        ...


CODECS: dict[str, Codec] = {}


def register(cls: Callable[[], Codec]) -> Callable[[], Codec]:
    """Class decorator: add an instance of ``cls`` to :data:`CODECS` under its name."""
    codec = cls()
    CODECS[codec.name] = codec
    return cls


def _zstd() -> Any:
    return require("zstandard", extra="fleet", feature="model deltas")


def _compress(data: bytes | memoryview) -> bytes:
    return bytes(_zstd().ZstdCompressor(level=ZSTD_LEVEL).compress(data))


def _decompress(payload: memoryview, size: int) -> bytes:
    """Exactly ``size`` bytes from one zstd frame; the frame's claimed size is checked first."""
    zstd = _zstd()
    try:
        claimed = zstd.frame_content_size(payload)
        if claimed != size:
            raise CodecError(f"payload claims {claimed} bytes where {size} are expected")
        out = zstd.ZstdDecompressor().decompress(
            payload, max_output_size=size, allow_extra_data=False
        )
    except zstd.ZstdError as exc:
        raise CodecError(f"payload is not a valid zstd frame: {exc}") from exc
    if len(out) != size:
        raise CodecError(f"payload decodes to {len(out)} bytes where {size} are expected")
    return bytes(out)


def _u8(data: memoryview | bytes) -> Array:
    return np.frombuffer(data, dtype=np.uint8)


@register
class XorZstd:
    """Lossless: XOR of bit patterns, byte planes, zstd (module docstring)."""

    name = "xor-zstd"
    lossy = False

    @staticmethod
    def _itemsize(tensor: Initializer, nbytes: int) -> int:
        size = ITEMSIZE.get(tensor.data_type, 1)
        return size if nbytes % size == 0 else 1

    def encode(self, tensor: Initializer, old: memoryview, new: memoryview) -> Encoded:
        size = self._itemsize(tensor, len(old))
        xor = np.bitwise_xor(_u8(old), _u8(new))
        planes = np.ascontiguousarray(xor.reshape(-1, size).T)
        return Encoded(self.name, {}, _compress(planes.data))

    def decode(
        self, tensor: Initializer, old: memoryview, params: dict[str, Any], payload: memoryview
    ) -> Array:
        if params:
            raise CodecError(f"xor-zstd takes no params, got {sorted(params)}")
        size = self._itemsize(tensor, len(old))
        planes = _u8(_decompress(payload, len(old))).reshape(size, -1)
        return np.bitwise_xor(_u8(old).reshape(-1, size), planes.T).reshape(-1)


def _lossy_view(
    tensor: Initializer, old: memoryview, new: memoryview
) -> tuple[Array, Array] | None:
    """(old, difference) in the compute dtype when ``tensor`` suits a lossy codec, else None."""
    dtype = _FLOATS.get(tensor.data_type)
    if (
        dtype is None
        or len(tensor.dims) < 2
        or tensor.numel < MIN_LOSSY_ELEMENTS
        or tensor.numel * dtype.itemsize != len(old)
    ):
        return None
    compute = np.float64 if dtype.itemsize == 8 else np.float32
    before: Array = np.frombuffer(old, dtype=dtype).astype(compute)
    after: Array = np.frombuffer(new, dtype=dtype).astype(compute)
    with np.errstate(all="ignore"):
        diff = after - before
    if not (np.isfinite(before).all() and np.isfinite(diff).all()):
        return None
    return before, diff


def _lossy_params(tensor: Initializer, old: memoryview) -> tuple[np.dtype[Any], type]:
    dtype = _FLOATS.get(tensor.data_type)
    if (
        dtype is None
        or len(tensor.dims) < 2
        or tensor.numel < MIN_LOSSY_ELEMENTS
        or tensor.numel * dtype.itemsize != len(old)
    ):
        raise CodecError(f"tensor {tensor.name!r} is not one a lossy codec encodes")
    return dtype, (np.float64 if dtype.itemsize == 8 else np.float32)


def _finish(before: Array, diff: Array, dtype: np.dtype[Any]) -> Array:
    with np.errstate(all="ignore"):
        result = (before + diff).astype(dtype)
    return result.view(np.uint8).reshape(-1)


@register
class Int8:
    """Lossy: per-row int8 difference + zstd (module docstring)."""

    name = "int8"
    lossy = True

    def encode(self, tensor: Initializer, old: memoryview, new: memoryview) -> Encoded:
        view = _lossy_view(tensor, old, new)
        if view is None:
            return CODECS["xor-zstd"].encode(tensor, old, new)
        _, diff = view
        rows = diff.reshape(tensor.dims[0], -1)
        scale: Array = (np.abs(rows).max(axis=1) / 127.0).astype(np.float32)
        safe = np.where(scale > 0, scale, 1.0).astype(rows.dtype)
        quantized = np.clip(np.rint(rows / safe[:, None]), -127, 127).astype(np.int8)
        payload = _compress(scale.tobytes() + quantized.tobytes())
        return Encoded(self.name, {}, payload)

    def decode(
        self, tensor: Initializer, old: memoryview, params: dict[str, Any], payload: memoryview
    ) -> Array:
        if params:
            raise CodecError(f"int8 takes no params, got {sorted(params)}")
        dtype, compute = _lossy_params(tensor, old)
        rows = tensor.dims[0]
        raw = _decompress(payload, rows * 4 + tensor.numel)
        scale: Array = np.frombuffer(raw, dtype="<f4", count=rows).astype(compute)
        if not np.isfinite(scale).all() or (scale < 0).any():
            raise CodecError(f"tensor {tensor.name!r}: int8 scales must be finite and >= 0")
        quantized = np.frombuffer(raw, dtype=np.int8, offset=rows * 4).reshape(rows, -1)
        with np.errstate(all="ignore"):  # a hostile scale overflows; the sha256 check refuses
            diff: Array = (quantized.astype(compute) * scale[:, None]).reshape(-1)
        before: Array = np.frombuffer(old, dtype=dtype).astype(compute)
        return _finish(before, diff, dtype)


@register
class TopK:
    """Lossy: the largest differences, up to :data:`TOPK_RELATIVE_ERROR` (module docstring)."""

    name = "topk"
    lossy = True

    def encode(self, tensor: Initializer, old: memoryview, new: memoryview) -> Encoded:
        view = _lossy_view(tensor, old, new)
        if view is None:
            return CODECS["xor-zstd"].encode(tensor, old, new)
        before, diff = view
        energy = np.square(diff, dtype=np.float64)
        ordered = np.sort(energy)  # ascending: dropping from the front leaves the least error
        budget = (TOPK_RELATIVE_ERROR**2) * float(np.square(before + diff, dtype=np.float64).sum())
        dropped = int(np.searchsorted(np.cumsum(ordered), budget, side="right"))
        threshold = ordered[dropped] if dropped < ordered.size else np.inf
        mask = (energy >= threshold) & (energy > 0)
        values = diff[mask]
        peak = float(np.abs(values).max()) if values.size else 0.0
        scaled = (values / peak if peak > 0 else values).astype("<f2")
        payload = _compress(np.packbits(mask).tobytes() + scaled.tobytes())
        return Encoded(self.name, {"count": int(values.size), "peak": peak}, payload)

    def decode(
        self, tensor: Initializer, old: memoryview, params: dict[str, Any], payload: memoryview
    ) -> Array:
        dtype, compute = _lossy_params(tensor, old)
        count, peak = params.get("count"), params.get("peak")
        if (
            set(params) != {"count", "peak"}
            or type(count) is not int
            or not 0 <= count <= tensor.numel
            or type(peak) is not float
            or not (np.isfinite(peak) and peak >= 0)
        ):
            raise CodecError(f"tensor {tensor.name!r}: topk params must be count and peak")
        mask_bytes = (tensor.numel + 7) // 8
        raw = _decompress(payload, mask_bytes + 2 * count)
        mask = np.unpackbits(_u8(raw[:mask_bytes]), count=tensor.numel).astype(bool)
        if int(mask.sum()) != count:
            raise CodecError(f"tensor {tensor.name!r}: topk mask does not hold {count} values")
        values: Array = np.frombuffer(raw, dtype="<f2", offset=mask_bytes).astype(compute)
        diff: Array = np.zeros(tensor.numel, dtype=compute)
        with np.errstate(all="ignore"):  # a hostile peak overflows; the sha256 check refuses
            diff[mask] = values * compute(peak) if peak > 0 else values
        before: Array = np.frombuffer(old, dtype=dtype).astype(compute)
        return _finish(before, diff, dtype)
