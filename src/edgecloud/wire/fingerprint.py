"""Request fingerprints: what an idempotency key is bound to.

The IETF httpapi Idempotency-Key draft (draft-ietf-httpapi-idempotency-key-header,
section 2.4) has the server keep a fingerprint of the first request under a
key and answer a reuse of the key with another payload with 422. The server's
idempotency store, the outbox and the edge gateway bind keys with this one
function, so they agree on what "the same request" is.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import numpy as np

from ..tensors import InferRequest, datatype_of
from .values import raw_bytes

__all__ = ["request_fingerprint"]


def request_fingerprint(request: InferRequest) -> str:
    """sha256 (hex, 64 characters) of the model, version and canonical inputs.

    Canonical means independent of how the tensors travelled: inputs sorted
    by name; each as its datatype name, shape and little-endian row-major
    bytes (BYTES elements length-prefixed, as in the binary extension: the
    same :func:`~.values.raw_bytes`). The requested outputs, request id and
    other parameters are not part of it.

    Raises TensorValueError for a BYTES element that is neither ``bytes`` nor
    UTF-8-encodable ``str`` (e.g. a lone surrogate), naming tensor and element.
    """
    digest = hashlib.sha256()
    _field(digest, request.model.encode())
    _field(digest, (request.version or "").encode())
    for name in sorted(request.inputs):
        array = np.asarray(request.inputs[name])
        _field(digest, name.encode())
        _field(digest, datatype_of(array).encode())
        _field(digest, struct.pack(f"<{array.ndim}q", *array.shape))
        _field(digest, raw_bytes(array, name))
    return digest.hexdigest()


def _field(digest: Any, data: bytes) -> None:
    digest.update(struct.pack("<Q", len(data)))
    digest.update(data)
