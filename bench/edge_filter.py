"""Edge filtering: uplink bytes forwarded vs raw streaming, event recall and precision.

Audio: for each SNR (clean, 20, 10, 5, 0 dB), several 10-minute streams of
background noise (pink, slowly varying, with stretches of near-silence) with
espeak-ng sentences at known times — about one a minute, as an always-on
microphone hears — screened by Silero VAD (the zoo's ``vad`` through
LocalBackend) with the threshold calibrated on a separate stream (chunk recall
0.95 at 10 dB). Sensors: an hour of 6 channels at 10 Hz with four injected
anomalies (offset, vibration burst, drift, saturation), per noise level.

The peer is raw streaming: every byte sent (bytes_saved = 1 − forwarded/raw).

    python bench/edge_filter.py [--repo model-repo] [--streams 8]

Writes bench/results/edge_filter.json (top-level ``bytes_saved`` and ``recall``
for audio at 10 dB SNR) and bench/results/edge_filter.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_bench_args, results_dir, write_result

from edgecloud import ModelRepository
from edgecloud.filter import (
    AnomalyTrigger,
    Filter,
    SegmentConfig,
    VadTrigger,
    calibrate_threshold,
    chunks,
    score_events,
)
from edgecloud.filter.plot import plot_events
from edgecloud.filter.synth import make_stream
from edgecloud.zoo import build_zoo

SNRS: list[float | None] = [None, 20, 10, 5, 0]
MODERATE = 10
AUDIO_SEGMENT = SegmentConfig(pre_roll_s=0.25, post_roll_s=0.25, min_duration_s=0.1,
                              merge_gap_s=0.5)  # fmt: skip


def calibrate_vad(vad: VadTrigger) -> float:
    """Threshold for 95 % chunk-level recall on a calibration stream (not a test stream)."""
    s = make_stream(duration_s=300, utterances=12, snr_db=MODERATE, seed=1000)
    vad.reset()
    parts = chunks(s.audio)
    scores = [vad.score(c) for c in parts]
    t = (np.arange(len(parts)) + 0.5) * vad.chunk_s
    labels = [any(a <= x < b for a, b in s.spans) for x in t]
    return calibrate_threshold(scores, labels, 0.95)


def audio_rows(vad: VadTrigger, streams: int, console: Console) -> list[dict[str, Any]]:
    rows = []
    for snr in SNRS:
        sent = total = detected = truths = true_events = events = 0
        for seed in track(range(streams), description=f"audio {snr or 'clean'} dB",
                          console=console, transient=True):  # fmt: skip
            s = make_stream(duration_s=600, utterances=10, snr_db=snr, seed=seed)
            vad.reset()
            f = Filter(vad, segment=AUDIO_SEGMENT)
            found = f.feed_all(chunks(s.audio))
            score = score_events(found, s.spans)
            sent += f.stats.bytes_sent
            total += f.stats.bytes_total
            detected += score.detected
            truths += score.truths
            events += score.events
            true_events += round(score.precision * score.events)
        rows.append({
            "signal": "audio", "snr_db": snr, "streams": streams, "truth_events": truths,
            "events": events, "bytes_raw": total, "bytes_sent": sent,
            "bytes_saved": 1 - sent / total, "recall": detected / truths,
            "precision": true_events / events if events else 1.0,
        })  # fmt: skip
    return rows


def sensor_stream(
    noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    rng = np.random.default_rng(seed)

    def normal_run(n: int) -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi, 6)
        wander = 0.05 * np.sin(2 * np.pi * np.arange(n)[:, None] / 6000 + phase)
        return np.array([1.0, 0.8, 0.5, -0.7, 0.3, 1.2]) + wander + rng.normal(0, noise, (n, 6))

    x = normal_run(36_000)
    x[6000:6200, 2] += 1.0
    x[15000:15050] += rng.normal(0, 0.6, (50, 6))
    x[24000:24600, 0] += np.minimum(np.linspace(0, 6, 600), 1.5)
    x[30000:30100, 4] = 2.0
    truth = [(600.0, 620.0), (1500.0, 1505.0), (2400.0, 2460.0), (3000.0, 3010.0)]
    return x.reshape(-1, 10, 6), normal_run(6000), truth


def sensor_rows() -> list[dict[str, Any]]:
    rows = []
    for noise in (0.05, 0.1, 0.2):
        parts, normal, truth = sensor_stream(noise, seed=0)
        f = Filter(AnomalyTrigger(threshold=3.0, alpha=0.7).fit(normal),
                   segment=SegmentConfig(pre_roll_s=2, post_roll_s=2, merge_gap_s=3))  # fmt: skip
        score = score_events(f.feed_all(list(parts)), truth)
        rows.append({
            "signal": "sensors", "noise_sigma": noise, "truth_events": score.truths,
            "events": score.events, "bytes_raw": f.stats.bytes_total,
            "bytes_sent": f.stats.bytes_sent, "bytes_saved": f.stats.bytes_saved,
            "recall": score.recall, "precision": score.precision,
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default="model-repo")
    parser.add_argument("--streams", type=int, default=8)
    args = parse_bench_args(parser)
    console = Console()
    repo = ModelRepository(args.repo)
    build_zoo(repo, only=["vad"])
    vad = VadTrigger(repo)
    vad.threshold = calibrate_vad(vad)
    audio = audio_rows(vad, args.streams, console)
    sensors = sensor_rows()

    table = Table(title=f"Edge filtering vs raw streaming (VAD threshold {vad.threshold:.3f})")
    for col in ("signal", "SNR / noise", "events (truth)", "bytes saved", "recall", "precision"):
        table.add_column(col, justify="right")
    for r in audio + sensors:
        level = (
            f"σ {r['noise_sigma']}"
            if r["signal"] == "sensors"
            else ("clean" if r["snr_db"] is None else f"{r['snr_db']} dB")
        )
        rates = (f"{r[k]:.1%}" for k in ("bytes_saved", "recall", "precision"))
        table.add_row(r["signal"], level, f"{r['events']} ({r['truth_events']})", *rates)
    console.print(table)

    moderate = next(r for r in audio if r["snr_db"] == MODERATE)
    example = make_stream(duration_s=120, utterances=3, snr_db=MODERATE, seed=42)
    vad.reset()
    f = Filter(vad, segment=AUDIO_SEGMENT)
    events = f.feed_all(chunks(example.audio))
    plot_events(example.audio, f.scores, events, vad.threshold, vad.chunk_s,
                results_dir() / "edge_filter.png", truth=example.spans)  # fmt: skip
    path = write_result("edge_filter", {
        "bytes_saved": moderate["bytes_saved"],
        "recall": moderate["recall"],
        "precision": moderate["precision"],
        "snr_db": MODERATE,
        "vad_threshold": vad.threshold,
        "audio": audio,
        "sensors": sensors,
        "machine": machine(),
    })  # fmt: skip
    console.print(f"wrote {path} and {results_dir() / 'edge_filter.png'}")
    vad.close()


if __name__ == "__main__":
    main()
