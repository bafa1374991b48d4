"""The wire: Open Inference Protocol encodings, both directions, one place.

One decoder and one encoder per wire format, shared by the server, the edge
gateway and both clients, so none of them can drift apart:

- :mod:`.rest` — REST bodies: JSON tensors and the binary tensor data
  extension (JSON header, then raw little-endian row-major tensors);
- :mod:`.grpc` — ``ModelInferRequest`` / ``ModelInferResponse`` tensors,
  typed ``contents`` and ``raw_*_contents``, and their parameters;
- :mod:`.values` — the one tensor decoder under both: untrusted values to
  numpy with no silent coercion (a :class:`~edgecloud.errors.TensorValueError`
  naming tensor, element, datatype and value), declared sizes checked against
  the bytes present before anything is allocated; the exact rules are in its
  docstring;
- :mod:`.context` — the request context (sensitivity, idempotency key)
  from parameters, HTTP headers or gRPC metadata.

Errors are the catalogue in :mod:`edgecloud.errors`: each class carries its
HTTP status and gRPC code.
"""
