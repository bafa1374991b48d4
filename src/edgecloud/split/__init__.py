"""Split computing: partition a model into a device head and a server tail."""

from .partition import CutPoint, cut_points, extract, find_cut, verify_split

__all__ = ["CutPoint", "cut_points", "extract", "find_cut", "verify_split"]
