"""Split computing: partition a model into a device head and a server tail, and plan the cut."""

from .artifacts import SplitPair, head_name, tail_name, write_split
from .backend import LinkTracker, SplitBackend
from .codec import CODECS, Codec
from .partition import CutPoint, cut_points, extract, find_cut, verify_split
from .planner import ALL_LOCAL, ALL_REMOTE, CutProfile, Link, PowerModel, SplitPlanner
from .profile import (
    LocalTailTimer,
    ProfileTailTimer,
    RemoteTailTimer,
    SplitProfile,
    default_profile_path,
)
from .workflow import SplitResult, sample_inputs, split_model

__all__ = [
    "ALL_LOCAL",
    "ALL_REMOTE",
    "CODECS",
    "Codec",
    "CutPoint",
    "CutProfile",
    "Link",
    "LinkTracker",
    "LocalTailTimer",
    "PowerModel",
    "ProfileTailTimer",
    "RemoteTailTimer",
    "SplitBackend",
    "SplitPair",
    "SplitPlanner",
    "SplitProfile",
    "SplitResult",
    "cut_points",
    "default_profile_path",
    "extract",
    "find_cut",
    "head_name",
    "sample_inputs",
    "split_model",
    "tail_name",
    "verify_split",
    "write_split",
]
