"""Every front end and client of the wire, driven independently of edgecloud's codec.

Requests are built and responses read here by hand (stdlib json, struct,
numpy, the generated protobuf classes), so a bug in ``edgecloud.wire`` cannot
hide itself by being on both ends. Fronts:

- ``json`` / ``binary``: REST bodies to the server; ``gateway-json`` /
  ``gateway-binary``: the same bodies to ``edgecloud edge``;
- ``grpc-typed`` / ``grpc-raw``: ``ModelInferRequest`` with typed ``contents``
  or ``raw_input_contents``;
- ``local``: LocalBackend; ``remote-json``, ``remote-binary``, ``remote-grpc``:
  RemoteBackend over HTTP (JSON or binary tensors) and gRPC.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import yaml

from edgecloud import InferRequest, LocalBackend, ModelRepository, RemoteBackend
from edgecloud.proto import inference_pb2 as pb
from edgecloud.proto import inference_pb2_grpc as pb_grpc
from edgecloud.server.launch import ServerProcess, free_port, launch

from ..models import identity_name, make_wire_repo
from ..server.conftest import Server, start_server

WIRE_FRONTS = ["json", "binary", "grpc-typed", "grpc-raw", "gateway-json", "gateway-binary"]
CLIENT_FRONTS = ["local", "remote-json", "remote-binary", "remote-grpc"]
ALL_FRONTS = WIRE_FRONTS + CLIENT_FRONTS

DTYPE = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BYTES": np.object_,
}  # fmt: skip
TYPED_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


@dataclass
class Stack:
    """A server (HTTP + gRPC) and an edge gateway on the same wire repository."""

    repo: ModelRepository
    server: Server
    gateway: ServerProcess
    local: LocalBackend

    def url(self, front: str) -> str:
        return self.gateway.url if front.startswith("gateway") else self.server.url


def start_gateway(repo: ModelRepository, tmp: Path) -> ServerProcess:
    spec = tmp / "deployment.yaml"
    spec.write_text(yaml.safe_dump({"repository": str(repo.root), "root": "local"}))
    port = free_port()
    argv = [sys.executable, "-m", "edgecloud.cli", "edge", "-d", str(spec), "--port", str(port)]
    return launch(argv, f"http://127.0.0.1:{port}", log=tmp / "gateway.log")


def stack(tmp: Path, *extra: str) -> Iterator[Stack]:
    """Body of a module fixture: the stack, stopped afterwards."""
    repo = make_wire_repo(tmp)
    server = start_server(repo, tmp, *extra)
    gateway = start_gateway(repo, tmp)
    local = LocalBackend(repo)
    try:
        yield Stack(repo, server, gateway, local)
    finally:
        local.close()
        gateway.stop()
        server.stop()


# -- REST, by hand ----------------------------------------------------------------------


def json_entry(name: str, datatype: str, shape: list[int], data_text: str) -> str:
    """One input entry whose ``data`` is written verbatim (NaN literals, 1e400, ...)."""
    head = json.dumps({"name": name, "datatype": datatype, "shape": shape})
    return head[:-1] + f', "data": {data_text}}}'


def post_json(url: str, model: str, entries: list[str]) -> httpx.Response:
    body = '{"inputs": [' + ", ".join(entries) + "]}"
    return httpx.post(f"{url}/v2/models/{model}/infer", content=body.encode(), timeout=30)


def raw_of(array: np.ndarray) -> bytes:
    """Binary-extension bytes of ``array``, written independently of edgecloud."""
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def post_binary(
    url: str, model: str, tensors: list[tuple[str, str, list[int], bytes]], outputs_binary: bool
) -> httpx.Response:
    entries = [
        {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(r)}}
        for n, d, s, r in tensors
    ]
    header = json.dumps(
        {"inputs": entries, "parameters": {"binary_data_output": outputs_binary}}
    ).encode()
    return httpx.post(
        f"{url}/v2/models/{model}/infer",
        content=header + b"".join(r for *_, r in tensors),
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=30,
    )


def read_rest(response: httpx.Response) -> dict[str, np.ndarray]:
    """Outputs of a 200 REST response, read with the stdlib (NaN literals allowed)."""
    assert response.status_code == 200, response.text
    length = response.headers.get("inference-header-content-length")
    content = response.content
    header = json.loads(content[: int(length)] if length else content)
    rest, out = content[int(length) :] if length else b"", {}
    for entry in header["outputs"]:
        dtype = DTYPE[entry["datatype"]]
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[entry["name"]] = read_raw(rest[:size], entry["datatype"], entry["shape"])
            rest = rest[size:]
        elif entry["datatype"] == "BYTES":
            out[entry["name"]] = np.array([s.encode() for s in entry["data"]] or [], dtype=object)
        else:
            out[entry["name"]] = np.array(entry["data"], dtype=dtype).reshape(entry["shape"])
    return out


def read_raw(raw: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    if datatype != "BYTES":
        return np.frombuffer(raw, dtype=np.dtype(DTYPE[datatype]).newbyteorder("<")).reshape(shape)
    items, pos = [], 0
    while pos < len(raw):
        (size,) = struct.unpack_from("<I", raw, pos)
        items.append(raw[pos + 4 : pos + 4 + size])
        pos += 4 + size
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json().get("error", "")


# -- gRPC, by hand ----------------------------------------------------------------------


def grpc_call(address: str, request: Any) -> tuple[str, Any]:
    """(status code name, response or error details) of one ModelInfer call."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            return "OK", stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details()


def typed_request(
    model: str, name: str, datatype: str, shape: list[int], values: list[Any], field: str = ""
) -> Any:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field or TYPED_FIELD[datatype]).extend(values)
    return request


def raw_request(model: str, tensors: list[tuple[str, str, list[int], bytes]]) -> Any:
    request = pb.ModelInferRequest(model_name=model)
    for name, datatype, shape, raw in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return request


def read_grpc(response: Any) -> dict[str, np.ndarray]:
    return {
        t.name: read_raw(raw, t.datatype, list(t.shape))
        for t, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


# -- one valid round trip over any front ----------------------------------------------


def _json_data(array: np.ndarray) -> str:
    values = [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]
    return json.dumps(values, allow_nan=True)


def roundtrip(stack: Stack, front: str, model: str, x: np.ndarray) -> np.ndarray:
    """Send ``x`` as input ``x`` of ``model`` over ``front``; the output ``y``."""
    datatype = next(k for k, v in DTYPE.items() if np.dtype(v) == x.dtype)
    shape = list(x.shape)
    if front in ("json", "gateway-json"):
        entry = json_entry("x", datatype, shape, _json_data(x))
        return read_rest(post_json(stack.url(front), model, [entry]))["y"]
    if front in ("binary", "gateway-binary"):
        tensors = [("x", datatype, shape, raw_of(x))]
        return read_rest(post_binary(stack.url(front), model, tensors, True))["y"]
    if front.startswith("grpc"):
        values = x.reshape(-1).tolist()
        request = (
            typed_request(model, "x", datatype, shape, values)
            if front == "grpc-typed"
            else raw_request(model, [("x", datatype, shape, raw_of(x))])
        )
        code, reply = grpc_call(stack.server.grpc_address, request)
        assert code == "OK", reply
        return read_grpc(reply)["y"]
    return client_infer(stack, front, InferRequest(model, {"x": x})).outputs["y"]


def client_infer(stack: Stack, front: str, request: InferRequest) -> Any:
    if front == "local":
        return stack.local.infer(request)
    url = {
        "remote-json": stack.server.url,
        "remote-binary": stack.server.url,
        "remote-grpc": f"grpc://{stack.server.grpc_address}",
    }[front]
    with RemoteBackend(url, binary=front != "remote-json") as remote:
        return remote.infer(request)


__all__ = [
    "ALL_FRONTS",
    "CLIENT_FRONTS",
    "DTYPE",
    "WIRE_FRONTS",
    "Stack",
    "client_infer",
    "error_of",
    "grpc_call",
    "identity_name",
    "json_entry",
    "post_binary",
    "post_json",
    "raw_of",
    "raw_request",
    "read_grpc",
    "read_rest",
    "roundtrip",
    "stack",
    "typed_request",
]
