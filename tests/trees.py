"""The one fingerprint of a directory tree the tests compare before and after a command."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_sha256(root: Path, *, skip: frozenset[str] = frozenset()) -> str:
    """sha256 over every path under ``root`` (directories too) and every file's bytes.

    A path with any component in ``skip`` (a file name such as
    ``split-profile.json``, a directory such as ``.pending``) is left out, with
    everything below it; so is ``.locks``, the repository's empty writer-lock
    files (edgecloud.repository: a write takes them, and they stay).
    """
    skip = skip | {".locks"}
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if skip.intersection(rel.parts):
            continue
        digest.update(str(rel).encode() + b"\0")
        if path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
