"""Audio in and out: 16 kHz mono WAV files as float32 samples, checked with clear errors."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from ..errors import DatatypeMismatchError, InvalidRequestError
from .triggers import SAMPLE_RATE, VAD_CHUNK

__all__ = ["chunks", "read_wav", "validate_audio", "write_wav"]


def read_wav(path: str | Path, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """PCM WAV → float32 mono samples in [-1, 1]; other rates or formats are errors."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as wav:
            rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
            frames = wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise InvalidRequestError(f"{path} does not exist") from None
    except (wave.Error, EOFError) as exc:
        raise InvalidRequestError(f"{path} is not a PCM WAV file: {exc}") from exc
    if rate != sample_rate:
        raise InvalidRequestError(
            f"{path} is sampled at {rate} Hz; the VAD needs {sample_rate} Hz "
            f"(resample it, e.g. `ffmpeg -i in.wav -ar {sample_rate} -ac 1 out.wav`)"
        )
    if width != 2:
        raise DatatypeMismatchError(f"{path} has {8 * width}-bit samples; use 16-bit PCM")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.float32)
    return validate_audio(samples, name=str(path))


def validate_audio(samples: np.ndarray, *, name: str = "audio") -> np.ndarray:
    """float32, 1-D, non-empty, finite."""
    if samples.dtype != np.float32:
        raise DatatypeMismatchError(
            f"{name}: samples must be float32 in [-1, 1], got {samples.dtype} "
            "(int16 PCM: divide by 32768)"
        )
    if samples.ndim != 1:
        raise InvalidRequestError(f"{name}: mono samples are 1-D, got shape {list(samples.shape)}")
    if samples.size == 0:
        raise InvalidRequestError(f"{name}: no samples")
    if not np.isfinite(samples).all():
        raise InvalidRequestError(f"{name}: samples hold NaN or infinity")
    return samples


def chunks(samples: np.ndarray, size: int = VAD_CHUNK) -> list[np.ndarray]:
    """Whole chunks of ``size`` samples; a short last chunk is zero-padded."""
    samples = validate_audio(samples)
    pad = (-len(samples)) % size
    if pad:
        samples = np.concatenate([samples, np.zeros(pad, dtype=np.float32)])
    return list(samples.reshape(-1, size))


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())
