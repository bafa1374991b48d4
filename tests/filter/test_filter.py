"""Filter with real triggers: Silero VAD on espeak-ng speech in noise, sensor anomalies,
motion; events queue in a real SQLite outbox while the server is down and reach a real
server after reconnect; bad audio is a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecloud import (
    ConfigError,
    DatatypeMismatchError,
    InvalidRequestError,
    ModelRepository,
    RemoteBackend,
    ShapeMismatchError,
)
from edgecloud.filter import (
    AnomalyTrigger,
    Filter,
    FrameDiffTrigger,
    SegmentConfig,
    VadTrigger,
    calibrate_threshold,
    chunks,
    read_wav,
    score_events,
    write_wav,
)
from edgecloud.routing.outbox import Outbox
from edgecloud.server.launch import free_port, serve_process

from ..models import event_sink_config, event_sink_onnx
from ..routing.conftest import metric

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng missing (make test installs it)"
)


@pytest.fixture(scope="module")
def speech():  # type: ignore[no-untyped-def]
    from edgecloud.filter.synth import make_stream

    return make_stream(duration_s=120, utterances=4, snr_db=10, seed=3)


@needs_espeak
def test_vad_forwards_every_utterance_and_little_else(zoo_repo: ModelRepository, speech) -> None:  # type: ignore[no-untyped-def]
    vad = VadTrigger(zoo_repo)
    f = Filter(vad, segment=SegmentConfig(pre_roll_s=0.25, post_roll_s=0.25))
    events = f.feed_all(chunks(speech.audio))
    score = score_events(events, speech.spans)
    assert score.recall == 1.0 and score.precision == 1.0
    assert f.stats.bytes_saved > 0.9  # speech is ~6 % of this stream
    assert f.stats.bytes_sent == sum(e.bytes_sent for e in events)
    assert f.stats.bytes_total == speech.audio.nbytes + (-len(speech.audio)) % 512 * 4
    # each event records what it sent and what was held back before it
    assert sum(e.bytes_suppressed_before for e in events) <= f.stats.bytes_suppressed
    vad.close()


@needs_espeak
@pytest.mark.network
def test_events_queue_offline_and_are_delivered_after_reconnect(
    zoo_repo: ModelRepository,
    speech,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    repo = ModelRepository(tmp_path / "server-repo")
    repo.add_version("events", event_sink_onnx(tmp_path / "sink.onnx"), config=event_sink_config())
    port = free_port()
    outbox = Outbox(tmp_path / "outbox.db")
    with RemoteBackend(f"http://127.0.0.1:{port}", timeout=1.0) as offline:
        f = Filter(VadTrigger(zoo_repo), inner=offline, model="events", outbox=outbox)
        events = f.feed_all(chunks(speech.audio))
    assert len(events) == 4 and all(e.queued for e in events)
    assert len(outbox) == 4 and f.stats.queued_events == 4
    server = serve_process(repo.root, http_port=port, log=tmp_path / "server.log")
    try:
        with RemoteBackend(server.url, timeout=5.0) as online:
            result = outbox.drain(online.infer)
        assert result.delivered == 4 and result.remaining == 0 and len(outbox) == 0
        assert metric(server, "edgecloud_requests_total", "events") == 4  # type: ignore[arg-type]
    finally:
        server.stop()
        outbox.close()


def test_without_an_outbox_an_unsendable_event_is_an_error() -> None:
    trigger = FrameDiffTrigger(threshold=0.1)
    with RemoteBackend(f"http://127.0.0.1:{free_port()}", timeout=0.5) as offline:
        f = Filter(trigger, inner=offline, segment=SegmentConfig(0, 0, 0, 0))
        frames = [np.zeros((4, 4), np.float32)] * 3 + [np.ones((4, 4), np.float32)] * 2
        with pytest.raises(ConfigError, match="no outbox to keep it"):
            f.feed_all(frames)


def test_bad_audio_is_a_clear_error(zoo_repo: ModelRepository, tmp_path: Path) -> None:
    write_wav(tmp_path / "8k.wav", np.zeros(8000, np.float32), sample_rate=8000)
    with pytest.raises(InvalidRequestError, match="8000 Hz; the VAD needs 16000 Hz"):
        read_wav(tmp_path / "8k.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav")
    with pytest.raises(InvalidRequestError, match="not a PCM WAV"):
        read_wav(tmp_path / "junk.wav")
    with pytest.raises(DatatypeMismatchError, match="divide by 32768"):
        chunks(np.zeros(1024, np.int16))
    with pytest.raises(InvalidRequestError, match="no samples"):
        chunks(np.zeros(0, np.float32))
    vad = VadTrigger(zoo_repo)
    with pytest.raises(ShapeMismatchError, match="512 mono samples"):
        vad.score(np.zeros(480, np.float32))
    f = Filter(vad)
    f.feed(np.zeros(512, np.float32))
    with pytest.raises(InvalidRequestError, match="every chunk must have shape"):
        f.feed(np.zeros(256, np.float32))
    vad.close()


def sensor_stream(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """6 channels at 10 Hz (levels + noise + slow wander); 1 s chunks; anomalies at known
    seconds: an offset channel, a vibration burst, a drift, a saturated sensor."""
    rng = np.random.default_rng(seed)

    def normal_run(n: int) -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi, 6)
        wander = 0.05 * np.sin(2 * np.pi * np.arange(n)[:, None] / 6000 + phase)
        return np.array([1.0, 0.8, 0.5, -0.7, 0.3, 1.2]) + wander + rng.normal(0, 0.1, (n, 6))

    x = normal_run(3600 * 10)
    anomalies = [(600, 620), (1500, 1505), (2400, 2460), (3000, 3010)]
    x[6000:6200, 2] += 1.0  # offset channel
    x[15000:15050] += rng.normal(0, 0.6, (50, 6))  # vibration burst
    x[24000:24600, 0] += np.minimum(np.linspace(0, 6, 600), 1.5)  # drift, then stuck high
    x[30000:30100, 4] = 2.0  # saturated sensor
    return x.reshape(-1, 10, 6), normal_run(6000), anomalies


def test_sensor_anomalies_are_caught_and_normal_data_suppressed() -> None:
    chunks_, normal, truth = sensor_stream()
    trigger = AnomalyTrigger(threshold=2.5, alpha=0.7).fit(normal)
    f = Filter(trigger, segment=SegmentConfig(pre_roll_s=2, post_roll_s=2, merge_gap_s=3))
    events = f.feed_all(list(chunks_))
    spans = [(float(a), float(b)) for a, b in truth]
    score = score_events(events, spans)
    assert score.recall == 1.0 and score.precision == 1.0
    assert f.stats.bytes_saved > 0.95


def test_frame_difference_finds_motion() -> None:
    still = np.full((8, 8), 100, np.uint8)
    moving = still.copy()
    moving[2:6, 2:6] = 250
    frames = [still] * 5 + [moving, still] * 3 + [still] * 5
    f = Filter(FrameDiffTrigger(threshold=0.05), segment=SegmentConfig(0, 0, 0, 0.1))
    events = f.feed_all(frames)
    assert [(e.start_chunk, e.end_chunk) for e in events] == [(5, 11)]


def test_calibrated_threshold_reaches_the_target_recall() -> None:
    scores = [0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.05]
    labels = [True, True, True, True, False, False, False]
    assert calibrate_threshold(scores, labels, 0.75) == 0.7  # 3 of 4 positives
    assert calibrate_threshold(scores, labels, 1.0) == 0.2
    with pytest.raises(InvalidRequestError, match="no positive"):
        calibrate_threshold([0.1], [False], 0.9)


@needs_espeak
def test_cli_prints_events_and_bandwidth_saved(zoo_repo: ModelRepository, tmp_path: Path) -> None:
    from edgecloud.filter.synth import make_stream

    from ..test_cli import assert_one_line_error
    from ..test_cli import edgecloud as run_cli

    s = make_stream(duration_s=40, utterances=2, snr_db=20, seed=7)
    write_wav(tmp_path / "s.wav", s.audio)
    result = run_cli("filter", "-i", tmp_path / "s.wav", "--repo", zoo_repo.root,
                     "--plot", tmp_path / "s.png")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 events" in result.stdout and "of the uplink saved" in result.stdout
    assert (tmp_path / "s.png").stat().st_size > 1000
    write_wav(tmp_path / "8k.wav", s.audio[:8000], sample_rate=8000)
    bad = run_cli("filter", "-i", tmp_path / "8k.wav", "--repo", zoo_repo.root)
    assert_one_line_error(bad, "8000 Hz", "ffmpeg")


def test_a_chunk_of_nan_is_sent_and_does_not_poison_the_trigger() -> None:
    """A sensor dropout (NaN readings) is real data: it triggers and is sent; the
    trigger's state (EWMA, previous frame) never sees it, so later chunks score as before."""
    chunks_, normal, _ = sensor_stream()
    clean = Filter(AnomalyTrigger(threshold=2.5, alpha=0.7).fit(normal))
    clean.feed_all(list(chunks_))
    dropped = np.array(chunks_, dtype=np.float64)
    dropped[3] = np.nan
    dropped[4, 0, 0] = np.inf
    f = Filter(AnomalyTrigger(threshold=2.5, alpha=0.7).fit(normal))
    events = f.feed_all(list(dropped))
    assert f.stats.unreadable_chunks == 2 and f.scores[3:5] == [np.inf, np.inf]
    assert any(e.start_chunk <= 3 and e.end_chunk >= 5 for e in events)
    assert np.isfinite(f.scores[5:]).all()  # the EWMA never saw the NaN: not poisoned
    assert f.scores[30:] == pytest.approx(clean.scores[30:], rel=1e-6)  # and it forgets
    frames = Filter(FrameDiffTrigger(threshold=0.05), segment=SegmentConfig(0, 0, 0, 0.1))
    frames.feed_all([np.zeros((4, 4)), np.full((4, 4), np.nan), np.zeros((4, 4))])
    assert frames.scores == [0.0, np.inf, 0.0] and frames.stats.triggered_chunks == 1


def test_bad_numbers_are_refused_not_measured() -> None:
    _, normal, _ = sensor_stream()
    for bad in (np.nan, np.inf):
        broken = normal.copy()
        broken[3, 1] = bad
        with pytest.raises(InvalidRequestError, match="1 of .* are NaN or infinite"):
            AnomalyTrigger().fit(broken)
    with pytest.raises(InvalidRequestError, match="numbers.*<U1"):
        AnomalyTrigger().fit(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(InvalidRequestError, match="numbers.*object"):
        Filter(FrameDiffTrigger()).feed(np.array([None, 1], dtype=object))
    for threshold in (np.nan, np.inf):
        with pytest.raises(ConfigError, match="threshold must be finite"):
            Filter(FrameDiffTrigger(threshold=threshold))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fit", "nan-fit.npy"], "--fit .*nan-fit.npy: fit on finite readings"),
        (["--fit", "str.npy"], "--fit .*str.npy: fit on numbers"),
        (["--fit", "normal.npy", "--threshold", "nan"], "--threshold for anomaly .* got nan"),
        (["--fit", "normal.npy", "--threshold", "0"], "--threshold for anomaly .* got 0"),
        (["--fit", "normal.npy", "--plot", "normal.npy"], "--plot writes a PNG"),
        (["--fit", "normal.npy", "-i", "str.npy"], "str.npy: chunks are numbers"),
        (["--fit", "normal.npy", "-i", "empty.npy"], r"empty.npy holds no chunks \(shape \[0, 4"),
        (["--fit", "normal.npy", "-i", "scalar.npy"], r"scalar.npy holds no chunks \(shape \[\]"),
        (["--fit", "normal.npy", "--chunk-s", "nan"], "chunk duration must be a finite number"),
        # .npy headers are read before numpy allocates: forged, truncated, objects, not .npy
        (["--fit", "normal.npy", "-i", "forged.npy"], "forged.npy: its header declares 16000000"),
        (["--fit", "forged.npy"], "--fit file .*forged.npy: its header declares 1600000000000"),
        (["--fit", "cut.npy"], r"cut.npy: its header declares \d+ data bytes but .* \(truncated"),
        (["--fit", "normal.npy", "-i", "objects.npy"], "objects.npy holds pickled Python objects"),
        (["--fit", "normal.npy", "-i", "text.npy"], "cannot read --input file .*text.npy as .npy"),
        (["--fit", "missing.npy"], "missing.npy does not exist"),
        (["--fit", "normal.npy", "--plot", "text.png"], "text.png exists and is not a PNG"),
    ],
)
def test_cli_refuses_bad_numbers_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    import re
    import subprocess
    import sys

    _, normal, _ = sensor_stream()
    np.save(tmp_path / "normal.npy", normal)
    np.save(tmp_path / "nan-fit.npy", np.full_like(normal, np.nan))
    np.save(tmp_path / "str.npy", np.array([["a", "b", "c"]] * 10))
    np.save(tmp_path / "stream.npy", np.full((20, 4, normal.shape[1]), 0.0))
    np.save(tmp_path / "empty.npy", np.zeros((0, 4, normal.shape[1])))
    np.save(tmp_path / "scalar.npy", np.float64(3.0))
    forged_npy(tmp_path / "forged.npy", (10**11, 4))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "normal.npy").read_bytes()[:-8])
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "text.npy").write_text("# my notes\n")
    (tmp_path / "text.png").write_text("# my notes\n")
    before = (tmp_path / "normal.npy").read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "filter", "-i", "stream.npy", "--trigger",
         "anomaly", *args], capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(message, " ".join(result.stderr.split())), result.stderr
    assert (tmp_path / "normal.npy").read_bytes() == before
    assert (tmp_path / "text.png").read_text() == "# my notes\n"


def forged_npy(path: Path, shape: tuple[int, ...], size: int | None = None) -> None:
    """A .npy whose header declares ``shape`` (float32) over 64 bytes of data, or
    ``size`` bytes in all (a sparse file)."""
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": shape}
        )
        f.write(bytes(64))
        if size is not None:
            f.truncate(size)


def test_a_forged_fit_file_in_a_deployment_is_a_config_error(tmp_path: Path) -> None:
    import edgecloud

    forged_npy(tmp_path / "forged.npy", (10**11, 4))
    (tmp_path / "d.yaml").write_text(
        "outbox: {path: ob.db}\n"
        "root: {filter: {trigger: {kind: anomaly, fit: forged.npy}, inner: local}}\n"
    )
    with pytest.raises(ConfigError, match=r"trigger.fit: fit file .*forged.npy: its header"):
        edgecloud.load(tmp_path / "d.yaml")


def test_plot_writes_through_a_symlink_and_replaces_an_older_png(tmp_path: Path) -> None:
    import subprocess
    import sys

    _, normal, _ = sensor_stream()
    np.save(tmp_path / "normal.npy", normal)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "real.png").write_bytes(b"\x89PNG\r\n\x1a\nolder")
    (tmp_path / "link.png").symlink_to("plots/real.png")
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "edgecloud.cli", "filter", "-i", "normal.npy", "--trigger",
             "anomaly", "--fit", "normal.npy", "--plot", "link.png"],
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "link.png").is_symlink()
        assert (tmp_path / "plots" / "real.png").stat().st_size > 1000


def test_cli_sends_a_stream_of_nan_rather_than_saving_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    _, normal, _ = sensor_stream()
    np.save(tmp_path / "normal.npy", normal)
    np.save(tmp_path / "nan.npy", np.full((50, 4, normal.shape[1]), np.nan))
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "filter", "-i", "nan.npy", "--trigger",
         "anomaly", "--fit", "normal.npy", "--plot", "p.png"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "0.0% of the uplink saved (50 of 50 chunks triggered)" in out
    assert "50 of 50 chunks hold NaN or infinite readings" in " ".join(result.stderr.split())
    assert (tmp_path / "p.png").stat().st_size > 1000
