"""Idempotency keys the product makes itself: unique across objects, processes and devices.

A key names one request. Keys built from per-process facts (``id(obj)``, a
counter) collide — across objects whose memory is reused, across restarts of
the same program, across devices sending to one server — and a collision
either drops a queued item (the outbox keeps one per key) or, at the server,
replays another request's answer. So every key the product generates is
either random (:func:`new_key`: 122 random bits of a uuid4) or derived from
a caller's key *and* the fingerprint of the derived request
(:func:`derived_key`), so that the same caller request re-sent maps to the
same derived key and nothing else does.
"""

from __future__ import annotations

import hashlib
import uuid

from ..tensors import InferRequest
from ..wire.fingerprint import request_fingerprint

__all__ = ["derived_key", "new_key"]


def new_key(kind: str) -> str:
    """A fresh random key, ``<kind>-<32 hex digits>`` (uuid4)."""
    return f"{kind}-{uuid.uuid4().hex}"


def derived_key(parent: str, request: InferRequest, kind: str) -> str:
    """The key of ``request``, which the product derived from a request keyed ``parent``.

    ``<kind>-<sha256 hex of (parent, kind, request fingerprint)>``: a re-sent
    parent derives the same key for the same derived payload (so the server
    replays it), and a different payload — a cascade escalating other rows on
    a retry — gets a different key instead of a 422.
    """
    digest = hashlib.sha256()
    for part in (parent, kind, request_fingerprint(request)):
        digest.update(len(part).to_bytes(8, "little") + part.encode())
    return f"{kind}-{digest.hexdigest()}"
