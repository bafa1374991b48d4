"""Split computing: partition a model into a device head and a server tail, and plan the cut."""

from .partition import CutPoint, cut_points, extract, find_cut, verify_split
from .planner import ALL_LOCAL, ALL_REMOTE, CutProfile, Link, SplitPlanner

__all__ = [
    "ALL_LOCAL",
    "ALL_REMOTE",
    "CutPoint",
    "CutProfile",
    "Link",
    "SplitPlanner",
    "cut_points",
    "extract",
    "find_cut",
    "verify_split",
]
