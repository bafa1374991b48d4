"""Edge filtering: screen a stream on the device and send only its events.

::

    from edgecloud.filter import Filter, VadTrigger, read_wav, chunks

    f = Filter(VadTrigger("model-repo"), inner=remote, model="asr", outbox=outbox)
    for event in f.feed_all(chunks(read_wav("meeting.wav"))):
        print(event.start_s, event.end_s, event.bytes_sent)
    print(f"{f.stats.bytes_saved:.1%} of the uplink saved")
"""

from __future__ import annotations

from .audio import chunks, read_wav, validate_audio, write_wav
from .evaluate import EventScore, score_events
from .segment import Event, SegmentConfig, Segmenter
from .stream import Filter, FilterStats
from .triggers import (
    AnomalyTrigger,
    FrameDiffTrigger,
    Trigger,
    VadTrigger,
    calibrate_threshold,
    make_trigger,
)

__all__ = [
    "AnomalyTrigger",
    "Event",
    "EventScore",
    "Filter",
    "FilterStats",
    "FrameDiffTrigger",
    "SegmentConfig",
    "Segmenter",
    "Trigger",
    "VadTrigger",
    "calibrate_threshold",
    "chunks",
    "make_trigger",
    "read_wav",
    "score_events",
    "validate_audio",
    "write_wav",
]
