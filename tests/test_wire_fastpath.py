"""The REST codec's shortcut (edgecloud.wire.fastpath) answers exactly as the general path.

Differential: the same body through ``decode_request`` with and without the
shortcut gives equal DecodedRequests (arrays equal bit for bit, dtype, shape
and flags) or equal exceptions (class and message); the same response through
``encode_response`` gives equal bytes or equal exceptions. Bodies are drawn
by hypothesis around the places where numpy casts silently and the general
path refuses (``1.5`` into INT64, ``300`` into UINT8, ``True`` into FP32,
``1e39`` into FP32, ``NaN`` literals, integers beyond 64 bits, nested data,
bad shapes, duplicate names, parameters), and the shortcut is shown to take
the bodies bench/server.py sends, so its speed cannot silently vanish.
"""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgecloud.tensors import DATATYPES, InferResponse, Trace
from edgecloud.wire import fastpath
from edgecloud.wire.rest import DecodedRequest, decode_request, encode_response

FP32_MAX = float(np.finfo(np.float32).max)
NAMES = st.one_of(st.text(min_size=1, max_size=3), st.sampled_from(["x", "x", "x", "", "é"]))
DATATYPE_NAMES = st.sampled_from([*DATATYPES, "FP8", "int64", 7])


def outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except Exception as exc:  # any exception is an outcome to compare
        return type(exc).__name__, str(exc)


def array_key(array: Any) -> tuple[Any, ...]:
    """Everything a caller could tell apart: dtype (with byte order), shape, bytes, flags."""
    assert type(array) is np.ndarray
    flags = (array.flags.writeable, array.flags.c_contiguous, array.flags.owndata)
    if array.dtype.kind == "O":
        return ("O", array.shape, array.tolist(), flags)
    return (array.dtype.str, array.shape, array.tobytes(), flags)


def decoded_key(decoded: DecodedRequest) -> tuple[Any, ...]:
    request = decoded.request
    inputs = [(name, array_key(array)) for name, array in request.inputs.items()]
    return (
        request.model,
        request.version,
        request.outputs,
        request.parameters,
        request.context,
        request.id,
        inputs,
        decoded.binary_outputs,
        decoded.all_binary,
        decoded.json_outputs,
    )


def same_decoding(body: bytes, header_length: int | None) -> tuple[str, Any]:
    fast = outcome(lambda: decode_request(body, header_length, "m", "1", shortcut=True))
    slow = outcome(lambda: decode_request(body, header_length, "m", "1", shortcut=False))
    if fast[0] == "ok" and slow[0] == "ok":
        assert decoded_key(fast[1]) == decoded_key(slow[1])
    else:
        assert fast == slow
    return slow


# -- values and bodies ------------------------------------------------------------

EDGE_INTS = [0, 1, -1, 127, 128, -129, 255, 256, 2**15, 2**31 - 1, 2**31, 2**32, 2**53 + 1]
EDGE_INTS += [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**30, 10**400]
EDGE_FLOATS = [0.0, -0.0, 0.5, 1.5, 1.0, 65504.0, 65520.0, FP32_MAX, 3.4028235677973366e38]
EDGE_FLOATS += [3.4028236e38, 1e39, -1e39, 1e308, 5e-324, float("nan"), float("inf")]
NUMBERS = st.one_of(
    st.floats(width=64),
    st.integers(),
    st.sampled_from(EDGE_INTS),
    st.sampled_from(EDGE_FLOATS),
    st.integers(-300, 300),
)
ODD = st.one_of(
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.just([1.0]),
    st.just({}),
)
ELEMENT = st.one_of(NUMBERS, NUMBERS, NUMBERS, ODD)


def rarely(draw: st.DrawFn, odds: int) -> bool:
    """True about once in ``odds + 1`` draws (shrinking towards False: the clean body)."""
    return bool(draw(st.sampled_from([False] * odds + [True])))


@st.composite
def tensor_entries(draw: st.DrawFn, binary: list[bytes]) -> dict[str, Any]:
    """A tensor entry, mostly well-formed, each field sometimes wrong; binary chunks appended."""
    datatype = draw(st.one_of(st.sampled_from(["FP32", "INT64", "FP64"]), DATATYPE_NAMES))
    dims = st.one_of(st.integers(1, 4), st.integers(1, 4), st.integers(0, 4))
    shape: Any = draw(st.lists(dims, min_size=1, max_size=3))
    count = int(np.prod(shape))
    entry: dict[str, Any] = {"name": draw(NAMES), "datatype": datatype, "shape": shape}
    if rarely(draw, 9):
        entry["shape"] = draw(
            st.sampled_from([[1] * 65, [-1, 2], [True], [1.0], "2", None, [2**64], [0, 2**62]])
        )
    kind = draw(st.sampled_from(["json"] * 4 + ["binary"] * 3 + ["nested", "both", "neither"]))
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if kind in ("binary", "both") and dtype is not None:
        itemsize = dtype.itemsize if datatype != "BYTES" else 5
        size = count * itemsize + draw(st.sampled_from([0] * 6 + [-1, 1, 4]))
        chunk = draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))
        if datatype == "BOOL" and draw(st.booleans()):
            chunk = bytes(b & 1 for b in chunk)
        binary.append(chunk)
        entry["parameters"] = {"binary_data_size": draw(st.sampled_from([len(chunk)] * 3 + [size]))}
        if rarely(draw, 4):
            entry["parameters"]["other"] = 1
    if kind in ("json", "both"):
        size = count + draw(st.sampled_from([0] * 8 + [-1, 1]))
        entry["data"] = draw(_values(datatype, max(size, 0)))
    if kind == "nested" and isinstance(shape, list):
        flat = draw(_values(datatype, count))
        entry["data"] = np.array(flat, dtype=object).reshape(shape).tolist() if count else []
    if rarely(draw, 9):
        entry["parameters"] = draw(st.sampled_from([None, {}, 0, [], "x", {"a": 1}]))
    if rarely(draw, 12):
        del entry[draw(st.sampled_from(["name", "datatype", "shape"]))]
    return entry


@st.composite
def _values(draw: st.DrawFn, datatype: Any, size: int) -> list[Any]:
    """``size`` values of the datatype's own kind, some of them sometimes anything."""
    own = _own(datatype)
    values = draw(st.lists(own, min_size=size, max_size=size))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2])) if size else 0):
        values[draw(st.integers(0, size - 1))] = draw(ELEMENT)
    return values


def _own(datatype: Any) -> st.SearchStrategy[Any]:
    """Values of a datatype's kind: in range mostly, the edges of its range sometimes."""
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return st.text(max_size=4)
    if datatype in ("FP16", "FP32", "FP64"):
        width = {"FP16": 16, "FP32": 32, "FP64": 64}[datatype]
        finite = st.floats(width=width, allow_nan=False, allow_infinity=False)  # type: ignore[arg-type]
        edges = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from(EDGE_FLOATS))
        return st.one_of(*[finite] * 12, edges)
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None or dtype.kind not in "iu":
        return ELEMENT
    info = np.iinfo(dtype)
    own = st.integers(int(info.min), int(info.max))
    return st.one_of(*[own] * 12, st.sampled_from(EDGE_INTS))


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, int | None]:
    binary: list[bytes] = []
    entries = draw(st.lists(tensor_entries(binary), min_size=0, max_size=3))
    header: dict[str, Any] = {"inputs": entries}
    if rarely(draw, 12):
        header["inputs"] = draw(st.sampled_from([None, {}, "x", [1]]))
    if draw(st.booleans()):
        header["parameters"] = draw(
            st.sampled_from(
                [{}, None, {"binary_data_output": True}, {"binary_data_output": "yes"}, []]
            )
        )
    if rarely(draw, 4):
        header["id"] = draw(st.sampled_from(["r1", 7, ""]))
    if rarely(draw, 4):
        header["outputs"] = [{"name": "y", "parameters": {"binary_data": draw(st.booleans())}}]
    # the stdlib writes NaN / Infinity literals and integers beyond 64 bits (read back by
    # the stdlib parser); orjson refuses them, so most bodies take the orjson parse
    text = json.dumps(header).encode()
    if binary and not rarely(draw, 7):
        return text + b"".join(binary) + draw(st.sampled_from([b"", b"", b"\x00"])), len(text)
    return text, None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
@example((b'{"inputs":[{"name":"x","datatype":"INT64","shape":[1],"data":[1.5]}]}', None))
@example((b'{"inputs":[{"name":"x","datatype":"UINT8","shape":[1],"data":[300]}]}', None))
@example((b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[true]}]}', None))
@example((b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1e39]}]}', None))
@example((b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[NaN,1]}]}', None))
def test_decoding_with_and_without_the_shortcut_agrees(body: tuple[bytes, int | None]) -> None:
    same_decoding(*body)


COMMON = ["FP32", "FP64", "INT64", "INT32", "INT8", "UINT8", "UINT64", "BOOL"]
#: Values numpy casts silently into some datatype where the general path refuses.
SILENT = [True, False, 1.5, 1.0, 300, -1, 2**63, 2**64 - 1, 1e39, -1e39, 3.4028235677973366e38]
SILENT += [None, "1", [1], {}, 10**30, float("nan")]


@st.composite
def clean_bodies(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """Well-formed JSON bodies of the common datatypes, one value sometimes replaced by a
    value numpy would cast silently; names without ``r`` or ``f`` (so the boolean scan can
    answer "none") unless a ``parameters`` key is added."""
    entries = []
    for name in draw(st.lists(st.sampled_from(["x", "ids", "mask"]), min_size=1, max_size=2)):
        datatype = draw(st.sampled_from(COMMON))
        shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))
        data = draw(_values(datatype, int(np.prod(shape))))
        if draw(st.booleans()):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.sampled_from(SILENT))
        entries.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    header: dict[str, Any] = {"inputs": entries}
    if rarely(draw, 3):
        header["parameters"] = {}
    return json.dumps(header).encode(), None


@settings(max_examples=300, deadline=None)
@given(clean_bodies())
def test_clean_bodies_with_one_odd_value_agree(body: tuple[bytes, int | None]) -> None:
    same_decoding(*body)


# -- the cases the shortcut must refuse, one by one --------------------------------


def entry_body(datatype: str, data: Any, shape: Any = None) -> bytes:
    shape = [len(data)] if shape is None else shape
    tensor = {"name": "x", "datatype": datatype, "shape": shape, "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


@pytest.mark.parametrize(
    ("datatype", "data", "refusal"),
    [
        ("INT64", [1.5], "INT64 takes integers only"),
        ("INT64", [1.0], "INT64 takes integers only"),
        ("INT64", [2**63], "outside the INT64 range"),
        ("UINT8", [300], "outside the UINT8 range"),
        ("UINT64", [-1], "outside the UINT64 range"),
        ("INT8", [-129], "outside the INT8 range"),
        ("FP32", [True], "FP32 takes numbers"),
        ("FP32", [1e39], "beyond the range of FP32"),
        ("FP32", ["1.5"], "FP32 takes numbers"),
        ("FP32", [None], "FP32 takes numbers"),
        ("INT32", [True], "INT32 takes integers only"),
        ("BOOL", [1], "BOOL takes true or false only"),
        ("FP32", [0.5, False], "FP32 takes numbers"),  # no 'r' in the body: no "true"
        ("FP64", [0.5, True], "FP64 takes numbers"),  # no 'f' in the body: no "false"
        ("INT64", [1, False], "INT64 takes integers only"),
    ],
)
def test_values_numpy_would_cast_are_refused_with_the_general_message(
    datatype: str, data: list[Any], refusal: str
) -> None:
    kind, message = same_decoding(entry_body(datatype, data), None)
    assert kind == "TensorValueError"
    assert refusal in message


@pytest.mark.parametrize(
    "body",
    [
        entry_body("FP32", [[1.0, 2.0]], shape=[1, 2]),  # nested: the general path flattens
        entry_body("FP32", [1.0, 2.0], shape=[1, 0]),  # size mismatch with a 0 dimension
        entry_body("FP32", [], shape=[0]),  # zero-size
        entry_body("FP16", [1.0]),
        entry_body("BYTES", ["a"]),
        entry_body("FP32", [1e39]),
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1],"parameters":null}]}',
    ],
)
def test_the_shortcut_leaves_unusual_bodies_to_the_general_path(body: bytes) -> None:
    header = json.loads(body)
    assert fastpath.tensor(header["inputs"][0], memoryview(b""), 0, False) is None
    same_decoding(body, None)


def test_a_long_string_among_numbers_allocates_nothing_large() -> None:
    """numpy's type discovery would make a 2,000 x 2,000-character string array (16 MB)
    of this 12 kB body; the shortcut refuses the string before numpy sees it."""
    data: list[Any] = [0.5] * 1999 + ["x" * 2000]
    body = entry_body("FP32", data)
    tracemalloc.start()
    try:
        kind, _ = same_decoding(body, None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert kind == "TensorValueError"
    assert peak < 2_000_000


def test_duplicate_names_get_the_general_message() -> None:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}
    body = json.dumps({"inputs": [tensor, tensor]}).encode()
    assert same_decoding(body, None) == (
        "InvalidRequestError",
        "tensor 'x' appears twice in 'inputs'",
    )


# -- the bodies the bench sends take the shortcut ------------------------------------


def served_bodies() -> list[tuple[bytes, int | None]]:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30521, size=(1, 16), dtype=np.int64)
    cases = [
        {"pixels": rng.random((1, 64), dtype=np.float32)},
        {"input_ids": ids, "attention_mask": np.ones_like(ids)},
    ]
    out: list[tuple[bytes, int | None]] = []
    for inputs in cases:
        entries = {
            n: {"name": n, "datatype": "FP32" if x.dtype == np.float32 else "INT64"}
            | {"shape": list(x.shape)}
            for n, x in inputs.items()
        }
        data = [{**entries[n], "data": x.ravel().tolist()} for n, x in inputs.items()]
        out.append((json.dumps({"inputs": data}).encode(), None))
        sized = [
            {**entries[n], "parameters": {"binary_data_size": x.nbytes}} for n, x in inputs.items()
        ]
        header = json.dumps({"inputs": sized}).encode()
        out.append((header + b"".join(x.tobytes() for x in inputs.values()), len(header)))
    return out


@pytest.mark.parametrize("body", served_bodies())
def test_the_served_bodies_take_the_shortcut(body: tuple[bytes, int | None]) -> None:
    raw, length = body
    header = json.loads(raw[:length] if length else raw)
    binary = memoryview(raw)[length:] if length else memoryview(b"")
    plain = fastpath.without_booleans(raw, length)
    assert plain or length  # a JSON body of these names needs no scan of its values' types
    pos = 0
    for entry in header["inputs"]:
        fast = fastpath.tensor(entry, binary, pos, plain)
        assert fast is not None
        pos += fast[2]
        if length:  # binary tensors are views of the body, not copies
            assert not fast[1].flags.owndata
    same_decoding(raw, length)


# -- encoding ----------------------------------------------------------------------

OUTPUT_DTYPES = ["float32", "float64", "int64", "int32", "uint8", "bool", "float16", ">f4"]


@st.composite
def outputs(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    dtype = np.dtype(draw(st.sampled_from(OUTPUT_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=3)))
    count = int(np.prod(shape))
    if dtype.kind == "f":
        values = draw(
            st.lists(
                st.one_of(st.floats(width=16), st.sampled_from([np.nan, np.inf, -np.inf])),
                min_size=count,
                max_size=count,
            )
        )
        array = np.array(values, dtype=dtype).reshape(shape)
    elif dtype.kind == "b":
        array = np.frombuffer(
            draw(st.binary(min_size=count, max_size=count)), dtype=np.bool_
        ).reshape(shape)
    else:
        array = np.arange(count, dtype=dtype).reshape(shape)
    if array.ndim == 2 and draw(st.booleans()):
        array = array.T  # not C-contiguous
    if rarely(draw, 10):
        return np.array(["a", "b"], dtype=object)
    return array


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["y", "z", "null"]), outputs(), max_size=3),
    st.sampled_from([{}, {"k": 1}]),
    st.sampled_from(["", "r1"]),
    st.sampled_from(["none", "json", "all", "named", "all-but"]),
)
def test_encoding_with_and_without_the_shortcut_agrees(
    arrays: dict[str, np.ndarray[Any, Any]], parameters: dict[str, Any], rid: str, want: str
) -> None:
    response = InferResponse("m", "1", arrays, Trace("m"), id=rid, parameters=parameters)
    decoded = None if want == "none" else DecodedRequest(request=None)  # type: ignore[arg-type]
    if decoded is not None:
        decoded.all_binary = want in ("all", "all-but")
        if want == "named":
            decoded.binary_outputs = {"y"}
        if want == "all-but":
            decoded.json_outputs = {"z"}
    fast = outcome(lambda: encode_response(response, decoded, shortcut=True))
    slow = outcome(lambda: encode_response(response, decoded, shortcut=False))
    assert fast == slow


def test_non_finite_outputs_keep_their_literals() -> None:
    array = np.array([[np.nan, np.inf, -np.inf, 1.0]], dtype=np.float32)
    response = InferResponse("m", "1", {"y": array}, Trace("m"))
    body, length = encode_response(response)
    assert length is None
    assert b"[NaN,Infinity,-Infinity,1.0]" in body
    assert (body, length) == encode_response(response, shortcut=False)


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("FP32", [3e38, 3e38]),  # each within FP32, the magnitudes' sum beyond it
        ("FP32", [FP32_MAX, -FP32_MAX]),
        ("FP32", [3.4028235677973366e38]),  # above FP32's largest, rounds down to it
        ("FP32", [2**127, -(2**127)]),
        ("FP32", [2**128]),  # an int beyond FP32
        ("FP32", [1e-45, 5e-324, -0.0]),  # subnormal, below FP32's, negative zero
        ("FP64", [1e308, 1e308]),  # the sum overflows float64, each is finite
        ("FP64", [2**1023, 2**1024]),
        ("FP32", [1, 2.5, -3]),
    ],
)
def test_values_at_the_cast_bound_agree(datatype: str, data: list[Any]) -> None:
    """The shortcut casts without numpy's error state when the magnitudes' sum is within
    the datatype; at and past that bound it must still answer as the general path."""
    same_decoding(entry_body(datatype, data), None)
