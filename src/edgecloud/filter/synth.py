"""A labelled audio test set made offline: espeak-ng speech in noise at known times and SNRs.

Nothing is downloaded: espeak-ng (a Debian package; ``make test`` installs it)
speaks a fixed list of sentences, resampled to 16 kHz, placed at seeded random
times in a stream of background noise (pink noise with slow level changes, and
stretches of near-silence), scaled so the speech-to-noise ratio is exactly the
one asked for. The ground truth is each utterance's span.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import MissingDependencyError
from .triggers import SAMPLE_RATE

__all__ = ["SENTENCES", "AudioSet", "make_stream", "speak"]

SENTENCES = (
    "Turn on the lights in the kitchen.",
    "What is the weather like tomorrow morning?",
    "The pressure in line three is rising.",
    "Please call the maintenance team now.",
    "Set a timer for ten minutes.",
    "Where did I park the car?",
    "The delivery arrived at the north gate.",
    "Stop the conveyor belt immediately.",
    "Remind me to water the plants.",
    "How many visitors came in today?",
    "Open the garage door.",
    "The temperature sensor reads forty degrees.",
)


class EspeakMissing(MissingDependencyError):
    def __init__(self) -> None:
        Exception.__init__(self, "espeak-ng is not installed (apt-get install espeak-ng)")
        self.message = "espeak-ng is not installed (apt-get install espeak-ng)"


@lru_cache(maxsize=64)
def _speak_cached(text: str, voice: str, speed: int) -> bytes:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakMissing()
    wav = subprocess.run(
        [exe, "-v", voice, "-s", str(speed), "--stdout", text],
        capture_output=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return wav


def speak(text: str, *, voice: str = "en-us", speed: int = 160) -> np.ndarray:
    """espeak-ng's rendering of ``text`` as float32 at 16 kHz, peak-normalised."""
    with wave.open(io.BytesIO(_speak_cached(text, voice, speed))) as wav:
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    x = pcm.astype(np.float64) / 32768.0
    n = round(len(x) * SAMPLE_RATE / rate)
    resampled = np.interp(np.arange(n) * rate / SAMPLE_RATE, np.arange(len(x)), x)
    nz = np.flatnonzero(np.abs(resampled) > 1e-3)  # trim espeak's leading/trailing silence
    resampled = resampled[nz[0] : nz[-1] + 1] if len(nz) else resampled
    out: np.ndarray = (resampled / max(1e-9, np.abs(resampled).max()) * 0.5).astype(np.float32)
    return out


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum))
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0
    x: np.ndarray = np.fft.irfft(spectrum, n)
    return x / float(x.std())


@dataclass
class AudioSet:
    audio: np.ndarray
    spans: list[tuple[float, float]]
    """Ground truth: (start s, end s) of each utterance."""
    snr_db: float | None
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def speech_share(self) -> float:
        return sum(e - s for s, e in self.spans) / self.duration_s


def make_stream(
    *,
    duration_s: float = 300.0,
    utterances: int = 10,
    snr_db: float | None = 10.0,
    noise_level: float = 0.02,
    seed: int = 0,
) -> AudioSet:
    """``utterances`` sentences at random, non-overlapping times in ``duration_s`` of
    background noise; ``snr_db`` None means speech in silence (clean)."""
    rng = np.random.default_rng(seed)
    n = int(duration_s * SAMPLE_RATE)
    if snr_db is None:
        background = rng.standard_normal(n) * 1e-4
    else:
        level = noise_level * (0.6 + 0.4 * np.sin(np.linspace(0, 6 * np.pi, n)) ** 2)
        background = _pink(n, rng) * level
        quiet = rng.integers(0, n - SAMPLE_RATE * 10, size=3)  # stretches of near-silence
        for q in quiet:
            background[q : q + SAMPLE_RATE * 10] *= 0.05
    clips = [speak(SENTENCES[(seed + k) % len(SENTENCES)]) for k in range(utterances)]
    slot = n // utterances
    spans: list[tuple[float, float]] = []
    audio = background.copy()
    noise_rms = float(np.sqrt(np.mean(background**2)))  # SNR against the stream's noise
    for k, clip in enumerate(clips):
        room = slot - len(clip) - SAMPLE_RATE
        start = k * slot + SAMPLE_RATE // 2 + int(rng.integers(0, max(1, room)))
        segment = clip.astype(np.float64)
        if snr_db is not None:
            speech_rms = np.sqrt(np.mean(segment**2))
            segment *= noise_rms * 10 ** (snr_db / 20) / speech_rms
        audio[start : start + len(clip)] += segment
        spans.append((start / SAMPLE_RATE, (start + len(clip)) / SAMPLE_RATE))
    peak = np.abs(audio).max()
    if peak > 0.99:
        audio *= 0.99 / peak
    return AudioSet(audio.astype(np.float32), spans, snr_db)
