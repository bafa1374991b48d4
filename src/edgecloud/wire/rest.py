"""Open Inference Protocol (KServe v2) REST bodies <-> InferRequest / InferResponse.

Both directions of both sides live here, so the server and the RemoteBackend
client cannot drift apart: JSON tensors, and the binary tensor data extension
(JSON header, then raw little-endian row-major tensors, the header's length in
the ``Inference-Header-Content-Length`` HTTP header). Every malformed body is
an :class:`~edgecloud.errors.InvalidRequestError` saying what is wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import (
    InferenceError,
    InvalidRequestError,
    TensorValueError,
    UnsupportedDatatypeError,
    clip,
)
from ..tensors import (
    InferRequest,
    InferResponse,
    Span,
    Trace,
    datatype_of,
    numpy_dtype,
)
from . import fastpath
from .context import context_parameters, decode_context
from .values import (
    HugeNumber,
    bytes_error,
    check_bool,
    element_count,
    flatten,
    from_raw,
    from_values,
    raw_bytes,
    requested_outputs,
    utf8_error,
)

try:  # orjson is several times faster; the stdlib keeps the core dependency-free
    import orjson

    def loads(data: bytes) -> Any:
        """Parse JSON; the ``NaN`` / ``Infinity`` / ``-Infinity`` literals are values."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:  # orjson refuses those literals (and 1e400)
            return _stdlib_loads(data)

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

    def _literal(value: float) -> Any:
        return orjson.Fragment(_LITERALS[value != value, value > 0])

except ImportError:  # pragma: no cover - exercised only without the server extra

    def loads(data: bytes) -> Any:
        return _stdlib_loads(data)

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), default=_json_default).encode()

    def _literal(value: float) -> Any:
        return value  # json.dumps writes NaN, Infinity, -Infinity


def _stdlib_loads(data: bytes) -> Any:
    """The stdlib parser: reads the non-finite literals; 1e400 becomes a HugeNumber."""
    try:
        return json.loads(data, parse_float=_parse_float)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def _parse_float(text: str) -> float | HugeNumber:
    value = float(text)
    return HugeNumber(text) if value in (math.inf, -math.inf) else value


#: (is NaN, is positive) -> the JSON literal Triton writes (its PR 3870).
_LITERALS = {(True, False): b"NaN", (False, True): b"Infinity", (False, False): b"-Infinity"}

__all__ = [
    "HEADER_LENGTH",
    "DecodedRequest",
    "decode_request",
    "decode_response",
    "dumps",
    "encode_request",
    "encode_response",
    "loads",
]

HEADER_LENGTH = "inference-header-content-length"
Arrays = dict[str, np.ndarray[Any, Any]]


def _json_default(obj: Any) -> Any:  # pragma: no cover - stdlib json fallback only
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


@dataclass(slots=True)
class DecodedRequest:
    """A parsed infer body and how the caller wants its outputs encoded."""

    request: InferRequest
    binary_outputs: set[str] = field(default_factory=set)
    """Outputs to send as binary tensors (the rest as JSON)."""
    all_binary: bool = False
    """``binary_data_output: true``: every output binary unless it says otherwise."""
    json_outputs: set[str] = field(default_factory=set)


# -- tensors -------------------------------------------------------------------


def tensor_bytes(array: np.ndarray[Any, Any], name: str = "") -> bytes:
    """Raw bytes of a tensor: little-endian, row-major; BYTES length-prefixed."""
    return raw_bytes(array, name)


def tensor_from_bytes(raw: bytes | memoryview, datatype: str, shape: list[int], name: str) -> Any:
    """A tensor from the binary extension's bytes (rules: :mod:`.values`)."""
    return from_raw(name, datatype, raw, shape)


def tensor_from_json(data: Any, datatype: str, shape: list[int], name: str) -> Any:
    """A tensor from JSON ``data``, flat or nested (rules: :mod:`.values`)."""
    values = flatten(name, data, shape)
    return from_values(name, datatype, values, shape, text=True)


def tensor_json(array: np.ndarray[Any, Any], name: str = "") -> Any:
    """JSON ``data`` of a tensor: flat; BYTES as UTF-8 text; NaN and ±Infinity as literals."""
    kind = array.dtype.kind
    if kind in ("O", "S", "U"):
        return [_text(name, i, x) for i, x in enumerate(array.reshape(-1))]
    flat = np.ascontiguousarray(array.reshape(-1))
    if kind == "b":
        check_bool(name, flat)  # a byte 2 would be written true: a silent coercion
    if kind == "f" and not np.isfinite(flat).all():
        return [x if math.isfinite(x) else _literal(x) for x in flat.tolist()]
    if flat.dtype.byteorder == ">":
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return flat


def _text(name: str, index: int, item: Any) -> str:
    if isinstance(item, str):
        if not item.isascii():  # O(1); a lone surrogate would fail in dumps, unnamed
            try:
                item.encode()
            except UnicodeEncodeError:
                raise utf8_error(name, index, item) from None
        return item
    if not isinstance(item, bytes):
        raise bytes_error(name, index, item)
    try:
        return item.decode()
    except UnicodeDecodeError:
        raise TensorValueError(
            f"tensor {clip(name)}: element {index} of BYTES data is {item[:40]!r}, which is not "
            "UTF-8 and cannot travel as a JSON string; send or request it as a binary tensor"
        ) from None


# -- parsing helpers -----------------------------------------------------------


_NO_BINARY = memoryview(b"")
"""The binary part of a body without one (read-only, empty: one for all)."""


def _split_body(body: bytes, header_length: int | None) -> tuple[Any, memoryview]:
    if header_length is None:
        header_bytes, rest = body, _NO_BINARY
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidRequestError(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"({len(body)} bytes)"
            )
        view = memoryview(body)
        header_bytes, rest = bytes(view[:header_length]), view[header_length:]
    try:
        header = loads(header_bytes)
    except ValueError as exc:
        raise InvalidRequestError(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidRequestError("the JSON body must be an object")
    # an escape may spell a lone one; most bodies hold no backslash at all (memchr)
    if header_bytes.find(b"\\") >= 0 and (b"\\ud" in header_bytes or b"\\uD" in header_bytes):
        where = _lone_surrogate(header, "")
        if where is not None:
            raise InvalidRequestError(
                f"the JSON body's {where or 'text'} holds a lone surrogate (a \\ud800-\\udfff "
                "escape without its pair): every string must be valid Unicode text"
            )
    return header, rest


def _lone_surrogate(value: Any, where: str) -> str | None:
    """Where in ``value`` (``inputs[0].name``) a string or key first holds a lone
    surrogate, which JSON's ``\\uXXXX`` escapes can spell and no UTF-8 encoder takes:
    echoed or forwarded (a response's id, an error quoting a name, a remote
    tier's request), such a string would fail after the work was done."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "data" and where.startswith("inputs["):
                continue  # a tensor's elements: its decoder names the tensor and element
            found = _lone_surrogate(key, f"{where or 'object'} key") or _lone_surrogate(item, here)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


def _tensors(entries: Any, binary: memoryview, kind: str, plain: bool | None = False) -> Arrays:
    """The named tensors of ``entries``; try :func:`.fastpath.tensor` first unless
    ``plain`` is None (else it is :func:`.fastpath.without_booleans` of the body)."""
    if not isinstance(entries, list):
        raise InvalidRequestError(f"'{kind}' must be a list of tensors")
    out: Arrays = {}
    pos = 0
    for entry in entries:
        fast = None if plain is None else fastpath.tensor(entry, binary, pos, plain)
        if fast is None:
            pos = _tensor(entry, binary, pos, kind, out)
            continue
        name, array, used = fast
        _unique(name, out, kind)
        out[name] = array
        pos += used
    if pos != len(binary):
        raise InvalidRequestError(
            f"{len(binary) - pos} bytes of binary data follow the tensors they were meant for"
        )
    return out


def _unique(name: str, out: Arrays, kind: str) -> None:
    if name in out:
        raise InvalidRequestError(f"tensor {clip(name)} appears twice in '{kind}'")


def _tensor(entry: Any, binary: memoryview, pos: int, kind: str, out: Arrays) -> int:
    """Decode one entry into ``out`` (the general path); the binary offset after it."""
    name, datatype, shape, params = _tensor_header(entry, kind)
    _unique(name, out, kind)
    size = params.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0 or pos + size > len(binary):
            raise InvalidRequestError(
                f"tensor {clip(name)}: binary_data_size {clip(size)} exceeds the "
                f"{len(binary) - pos} binary bytes left in the body"
            )
        if "data" in entry:
            raise InvalidRequestError(
                f"tensor {clip(name)} has both 'data' and binary_data_size; send one"
            )
        out[name] = tensor_from_bytes(binary[pos : pos + size], datatype, shape, name)
        return pos + size
    if "data" not in entry:
        raise InvalidRequestError(f"tensor {clip(name)} has neither 'data' nor binary_data_size")
    out[name] = tensor_from_json(entry["data"], datatype, shape, name)
    return pos


def _tensor_header(entry: Any, kind: str) -> tuple[str, str, list[int], dict[str, Any]]:
    if not isinstance(entry, dict):
        raise InvalidRequestError(f"each entry of '{kind}' must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"an entry of '{kind}' has no 'name'")
    datatype = entry.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidRequestError(f"tensor {clip(name)} has no 'datatype'")
    try:
        numpy_dtype(datatype)
    except UnsupportedDatatypeError as exc:
        raise InvalidRequestError(f"tensor {clip(name)}: {exc.message}") from exc
    shape: Any = entry.get("shape")
    element_count(name, shape)
    params = entry.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidRequestError(f"tensor {clip(name)}: 'parameters' must be an object")
    return name, datatype, list(shape), params


def _parameters(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequestError("'parameters' must be an object")
    return value


# -- server side ---------------------------------------------------------------


def decode_request(
    body: bytes,
    header_length: int | None,
    model: str,
    version: str | None,
    idempotency_key: str | None = None,
    *,
    shortcut: bool = True,
) -> DecodedRequest:
    """Parse an infer request body (JSON or binary extension).

    ``shortcut=False`` skips :mod:`.fastpath` (the same result, slower: for
    tests that compare the two).
    """
    header, binary = _split_body(body, header_length)
    params = _parameters(header.get("parameters"))
    plain = fastpath.without_booleans(body, header_length) if shortcut else None
    inputs = _tensors(header.get("inputs"), binary, "inputs", plain)
    decoded = DecodedRequest(
        InferRequest(model, inputs, version=version, parameters=params, id=_request_id(header))
    )
    decoded.all_binary = bool(_flag(params.get("binary_data_output"), "binary_data_output"))
    requested = header.get("outputs")
    if requested is not None:
        decoded.request.outputs = _requested_outputs(requested, decoded)
    decoded.request.context = decode_context(params, idempotency_key)
    return decoded


def _requested_outputs(requested: Any, decoded: DecodedRequest) -> list[str] | None:
    if not isinstance(requested, list):
        raise InvalidRequestError("'outputs' must be a list")
    names, params = [], []
    for entry in requested:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidRequestError("each entry of 'outputs' needs a 'name'")
        names.append(entry["name"])
        params.append(_parameters(entry.get("parameters")))
        binary = _flag(params[-1].get("binary_data"), "binary_data")
        if binary is True:
            decoded.binary_outputs.add(entry["name"])
        elif binary is False:
            decoded.json_outputs.add(entry["name"])
    return requested_outputs(names, params)


def _request_id(header: dict[str, Any]) -> str:
    """The request's ``id``, echoed in the response: it must be text the response can
    carry (JSON's ``\\ud800`` escape decodes to a lone surrogate, which no UTF-8
    encoder takes: the answer would fail after its computation)."""
    value = header.get("id", "")
    if not isinstance(value, str):
        raise InvalidRequestError(f"'id' must be a string, got {value!r:.40}")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise InvalidRequestError(
                f"'id' must be valid Unicode text: it holds a lone surrogate "
                f"({value[exc.start]!r} at character {exc.start})"
            ) from None
    return value


def _flag(value: Any, name: str) -> Any:
    """A boolean parameter: true, false or absent — never ``bool("false")``."""
    if value is not None and not isinstance(value, bool):
        raise InvalidRequestError(
            f"parameter {clip(name)} must be true or false, got {value!r:.40}"
        )
    return value


def _tensor_entries(
    tensors: Mapping[str, np.ndarray[Any, Any]], binary: Callable[[str], bool]
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Header entries of named tensors, and the raw chunks of those sent as binary."""
    entries, chunks = [], []
    for name, array in tensors.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if binary(name):
            raw = tensor_bytes(array, name)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensor_json(array, name)
        entries.append(entry)
    return entries, chunks


def encode_response(
    response: InferResponse, decoded: DecodedRequest | None = None, *, shortcut: bool = True
) -> tuple[bytes, int | None]:
    """Body and header length (None when all-JSON) of an infer response.

    ``shortcut=False`` skips :mod:`.fastpath` (the same bytes, slower: for
    tests that compare the two).
    """
    if shortcut:
        binary = _uniform_binary(decoded)
        if binary is not None:
            fast = fastpath.response(
                response.model,
                response.version,
                response.id,
                response.parameters,
                response.outputs,
                binary,
            )
            if fast is not None:
                return fast
    outputs, chunks = _tensor_entries(
        response.outputs, lambda name: decoded is not None and _wants_binary(decoded, name)
    )
    header = dumps(
        {
            "model_name": response.model,
            "model_version": response.version,
            "id": response.id,
            "parameters": response.parameters,
            "outputs": outputs,
        }
    )
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _uniform_binary(decoded: DecodedRequest | None) -> bool | None:
    """True when every output goes binary, False when every one goes JSON, None if mixed."""
    if decoded is None or not (decoded.all_binary or decoded.binary_outputs):
        return False
    if decoded.all_binary and not decoded.json_outputs:
        return True
    return None


def _wants_binary(decoded: DecodedRequest, name: str) -> bool:
    if name in decoded.binary_outputs:
        return True
    return decoded.all_binary and name not in decoded.json_outputs


# -- client side ---------------------------------------------------------------


def encode_request(request: InferRequest, *, binary: bool) -> tuple[bytes, int | None]:
    """Body and header length (None for JSON) for sending ``request``."""
    params: dict[str, Any] = {**request.parameters, **context_parameters(request.context)}
    inputs, chunks = _tensor_entries(request.inputs, lambda name: binary)
    if binary:
        params["binary_data_output"] = True
    body: dict[str, Any] = {"inputs": inputs, "parameters": params}
    if request.id:
        body["id"] = request.id
    if request.outputs is not None:
        body["outputs"] = [
            {"name": n, "parameters": {"binary_data": binary}} for n in request.outputs
        ]
    try:
        header = dumps(body)
    except TypeError:  # orjson refuses a lone surrogate (and nothing else built here)
        where = _lone_surrogate(body, "")
        if where is None:
            raise
        raise InvalidRequestError(
            f"the request's {where or 'text'} holds a lone surrogate (\\ud800-\\udfff without "
            "its pair), which no UTF-8 encoder takes: every string must be valid Unicode text"
        ) from None
    if not binary:
        return header, None
    return header + b"".join(chunks), len(header)


def decode_response(body: bytes, header_length: int | None, served_by: str) -> InferResponse:
    """Parse an infer response body into an InferResponse (trace filled by the caller).

    A response that breaks the decoding rules is the server's fault, not the
    caller's: an InferenceError (a Fallback may try elsewhere).
    """
    try:
        header, binary = _split_body(body, header_length)
        outputs = _tensors(header.get("outputs"), binary, "outputs")
    except InvalidRequestError as exc:
        raise InferenceError(f"{served_by} sent a response that cannot be read: {exc}") from exc
    return InferResponse(
        model=str(header.get("model_name", "")),
        version=str(header.get("model_version", "")),
        outputs=outputs,
        trace=Trace(served_by, [Span(served_by, "network")]),
        id=str(header.get("id", "")),
        parameters=_parameters(header.get("parameters")),
    )
