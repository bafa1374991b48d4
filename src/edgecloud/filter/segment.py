"""Turning per-chunk trigger decisions into events: padding, merging, minimum duration.

Works on a stream, one chunk at a time, and gives the same events as if it had
seen the whole stream (tests check both ways). In chunk units, with a chunk of
``d`` seconds:

* contiguous triggered chunks form a **run**; runs separated by at most
  ``merge_gap_s`` of untriggered chunks are **merged** into one;
* a run whose triggered span (first to last triggered chunk) is shorter than
  ``min_duration_s`` is **dropped** (a click, a cough of noise);
* a kept run becomes an **event** padded by ``pre_roll_s`` before and
  ``post_roll_s`` after, clipped to the stream; the post-roll stops where the
  next run starts and the pre-roll where the previous event ended (data is
  never sent twice).

Seconds are converted to whole chunks by rounding up.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

__all__ = ["Event", "SegmentConfig", "Segmenter"]


@dataclass(frozen=True)
class SegmentConfig:
    pre_roll_s: float = 0.3
    """Padding kept before the first triggered chunk (a word's onset, a machine's wind-up)."""
    post_roll_s: float = 0.3
    """Padding kept after the last triggered chunk."""
    min_duration_s: float = 0.1
    """Triggered spans shorter than this are dropped."""
    merge_gap_s: float = 0.5
    """Runs separated by at most this much quiet become one event."""

    def __post_init__(self) -> None:
        for name in ("pre_roll_s", "post_roll_s", "min_duration_s", "merge_gap_s"):
            if getattr(self, name) < 0 or not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number ≥ 0, got {getattr(self, name)}")

    def in_chunks(self, chunk_s: float) -> tuple[int, int, int, int]:
        """(pre, post, min duration, merge gap) in whole chunks."""

        def up(seconds: float) -> int:
            return math.ceil(seconds / chunk_s - 1e-9)

        return (
            up(self.pre_roll_s),
            up(self.post_roll_s),
            up(self.min_duration_s),
            up(self.merge_gap_s),
        )


@dataclass
class Event:
    """One forwarded segment of the stream."""

    index: int
    start_chunk: int
    end_chunk: int
    """Exclusive."""
    trigger_start_chunk: int
    trigger_end_chunk: int
    """Exclusive: the triggered span, without padding."""
    chunk_s: float
    peak_score: float
    data: np.ndarray = field(repr=False)
    bytes_sent: int = 0
    bytes_suppressed_before: int = 0
    """Bytes of stream held back between the previous event and this one."""
    queued: bool = False
    """True when the remote side was unreachable and the event went to the outbox."""
    result: object = field(default=None, repr=False)
    """What ``inner`` answered (None when queued or there is no inner)."""

    @property
    def start_s(self) -> float:
        return self.start_chunk * self.chunk_s

    @property
    def end_s(self) -> float:
        return self.end_chunk * self.chunk_s

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class Segmenter:
    """Feed ``(chunk, triggered, score)``; get finished events back."""

    def __init__(self, config: SegmentConfig, chunk_s: float) -> None:
        if not (math.isfinite(chunk_s) and chunk_s > 0):
            raise ConfigError(f"chunk duration must be a finite number > 0 s, got {chunk_s}")
        self.config = config
        self.chunk_s = chunk_s
        self.pre, self.post, self.min_len, self.gap = config.in_chunks(chunk_s)
        self.position = 0
        """Index of the next chunk."""
        self._history: deque[np.ndarray] = deque(maxlen=max(self.pre, 0) or None)
        self._history_start = 0
        self._pending: list[np.ndarray] = []  # chunks from the open event's padded start
        self._pending_start = 0
        self._run_start: int | None = None
        self._run_end = -1  # last triggered chunk of the open run
        self._peak = 0.0
        self._last_end = 0  # exclusive end of the previous event
        self._events = 0

    def push(self, chunk: np.ndarray, triggered: bool, score: float = 0.0) -> list[Event]:
        i = self.position
        self.position += 1
        done: list[Event] = []
        if self._run_start is None:
            if triggered:
                self._open(i, chunk, score)
            else:
                self._remember(i, chunk)
            return done
        if triggered and i - self._run_end - 1 > self.gap:  # too far apart to merge
            done.extend(self._close(upto=min(self._run_end + 1 + self.post, i)))
            self._open(i, chunk, score)
            return done
        self._pending.append(chunk)
        if triggered:
            self._run_end = i
            self._peak = max(self._peak, score)
            return done
        quiet = i - self._run_end
        if quiet > max(self.gap, self.post):  # no merge possible any more, post-roll taken
            done.extend(self._close(upto=self._run_end + 1 + self.post))
        return done

    def flush(self) -> list[Event]:
        """The end of the stream: close the open event with what post-roll there is."""
        if self._run_start is None:
            return []
        return self._close(upto=min(self.position, self._run_end + 1 + self.post))

    # -- internals -----------------------------------------------------------------

    def _remember(self, i: int, chunk: np.ndarray) -> None:
        if self.pre == 0:
            return
        if len(self._history) == self._history.maxlen:
            self._history_start += 1
        elif not self._history:
            self._history_start = i
        self._history.append(chunk)

    def _open(self, i: int, chunk: np.ndarray, score: float) -> None:
        start = max(i - self.pre, self._last_end, 0)
        keep = [c for k, c in enumerate(self._history) if self._history_start + k >= start]
        self._pending = [*keep, chunk]
        self._pending_start = i - len(keep)
        self._history.clear()
        self._run_start = i
        self._run_end = i
        self._peak = score

    def _close(self, upto: int) -> list[Event]:
        assert self._run_start is not None
        run_start, run_end = self._run_start, self._run_end
        end = min(upto, self._pending_start + len(self._pending))
        used = end - self._pending_start
        chunks, rest = self._pending[:used], self._pending[used:]
        rest_start = end
        self._run_start = None
        self._pending = []
        out: list[Event] = []
        if run_end - run_start + 1 < self.min_len:  # dropped: all of it may be pre-roll later
            rest, rest_start = [*chunks, *rest], self._pending_start
        else:
            self._events += 1
            out.append(Event(
                self._events, self._pending_start, end, run_start, run_end + 1, self.chunk_s,
                self._peak, np.concatenate(chunks) if chunks else np.empty(0),
            ))  # fmt: skip
            self._last_end = end
        # chunks after the event's end go back to the pre-roll history
        self._history.clear()
        for k, c in enumerate(rest):
            self._remember(rest_start + k, c)
        return out
