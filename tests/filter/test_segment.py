"""Event segmentation: padding, merging, minimum duration — exact expectations, and the
streaming segmenter agrees with a plain offline definition on random streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud import ConfigError
from edgecloud.filter import SegmentConfig, Segmenter


def run(flags: str, config: SegmentConfig) -> list[tuple[int, int]]:
    """Chunks of 1 s, one character per chunk ('#' triggered); events as (start, end)."""
    seg = Segmenter(config, chunk_s=1.0)
    events = []
    for i, flag in enumerate(flags):
        events += seg.push(np.full(2, i, dtype=np.float32), flag == "#")
    events += seg.flush()
    for e in events:  # the data is exactly the chunks of the span, in order
        assert e.data.tolist() == [
            float(k) for k in range(e.start_chunk, e.end_chunk) for _ in "xx"
        ]
    return [(e.start_chunk, e.end_chunk) for e in events]


NONE = SegmentConfig(pre_roll_s=0, post_roll_s=0, min_duration_s=0, merge_gap_s=0)


def test_runs_become_events() -> None:
    assert run("..##...#..", NONE) == [(2, 4), (7, 8)]


def test_padding_before_and_after_clipped_to_the_stream() -> None:
    cfg = SegmentConfig(pre_roll_s=2, post_roll_s=1, min_duration_s=0, merge_gap_s=0)
    assert run("....##....", cfg) == [(2, 7)]
    assert run("#.........", cfg) == [(0, 2)]  # no pre-roll before the stream starts
    assert run(".........#", cfg) == [(7, 10)]  # no post-roll past its end


def test_gaps_up_to_merge_gap_are_merged() -> None:
    cfg = SegmentConfig(pre_roll_s=0, post_roll_s=0, min_duration_s=0, merge_gap_s=2)
    assert run("#..#...#", cfg) == [(0, 4), (7, 8)]  # gap 2 merges, gap 3 does not


def test_short_runs_are_dropped() -> None:
    cfg = SegmentConfig(pre_roll_s=0, post_roll_s=0, min_duration_s=3, merge_gap_s=1)
    # '##' is too short alone; '#.##' merged spans 4 chunks and is kept
    assert run("##.....#.##...", cfg) == [(7, 11)]


def test_padding_never_resends_data() -> None:
    cfg = SegmentConfig(pre_roll_s=3, post_roll_s=2, min_duration_s=0, merge_gap_s=0)
    # the second event's pre-roll would reach back into the first event's post-roll
    assert run("#....#", cfg) == [(0, 3), (3, 6)]
    # a post-roll stops where the next run starts
    assert run("#.#", cfg) == [(0, 2), (2, 3)]


def test_seconds_round_up_to_whole_chunks() -> None:
    cfg = SegmentConfig(pre_roll_s=0.3, post_roll_s=0.3, min_duration_s=0.1, merge_gap_s=0.5)
    assert cfg.in_chunks(0.032) == (10, 10, 4, 16)


def test_bad_settings_are_errors() -> None:
    with pytest.raises(ConfigError, match="pre_roll_s must be"):
        SegmentConfig(pre_roll_s=-1)
    for chunk_s in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="chunk duration must be a finite number"):
            Segmenter(SegmentConfig(), chunk_s=chunk_s)


def offline(
    flags: list[bool], pre: int, post: int, min_len: int, gap: int
) -> list[tuple[int, int]]:
    """The definition, on the whole stream at once."""
    runs: list[list[int]] = []
    for i, f in enumerate(flags):
        if not f:
            continue
        if runs and i - runs[-1][1] - 1 <= gap:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    events: list[tuple[int, int]] = []
    for k, (a, b) in enumerate(runs):
        if b - a + 1 < min_len:
            continue
        start = max(a - pre, events[-1][1] if events else 0, 0)
        next_run = runs[k + 1][0] if k + 1 < len(runs) else len(flags)
        events.append((start, min(b + 1 + post, len(flags), next_run)))
    return events


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.booleans(), min_size=0, max_size=80),
    st.integers(0, 4), st.integers(0, 4), st.integers(0, 4), st.integers(0, 4),
)  # fmt: skip
def test_streaming_matches_the_offline_definition(
    flags: list[bool], pre: int, post: int, min_len: int, gap: int
) -> None:
    cfg = SegmentConfig(pre_roll_s=pre, post_roll_s=post, min_duration_s=min_len, merge_gap_s=gap)
    text = "".join("#" if f else "." for f in flags)
    assert run(text, cfg) == offline(flags, pre, post, min_len, gap)
    assert math.isfinite(len(text))
