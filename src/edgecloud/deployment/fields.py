"""Field types the deployment file's nodes share: a name and a file path, never empty."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

__all__ = ["FILE_PATTERN", "FilePath", "Name"]

#: A path that can name a file: not ending in a separator, last part not ``.`` or ``..``.
#: (No look-around: pydantic's default regex engine, Rust's, has none.)
FILE_PATTERN = r"^(?:[\s\S]*[/\\])?(?:[^/\\.][^/\\]*|\.[^/\\.][^/\\]*|\.\.[^/\\]+)$"

Name = Annotated[str, Field(min_length=1)]
"""A model, output, input or remote name: an empty one would silently mean the default."""

FilePath = Annotated[str, Field(min_length=1, pattern=FILE_PATTERN)]
"""A file (relative to the deployment file); ``""``, ``.`` or ``dir/`` name a directory."""
