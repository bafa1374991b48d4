"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``.

Runs on the same event loop and ModelHost as the HTTP front end. Outputs are
always sent as ``raw_output_contents`` (the fast path every v2 client reads);
inputs are accepted raw or as typed ``contents``.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import grpc
import numpy as np

from .. import __version__
from ..errors import AuthenticationError, EdgecloudError, InvalidRequestError
from ..protocol import tensor_bytes, tensor_from_bytes
from ..tensors import InferRequest, InferResponse, RequestContext, Sensitivity, datatype_of
from .host import ModelHost
from .http import EXTENSIONS, model_metadata
from .proto import inference_pb2 as pb
from .proto import inference_pb2_grpc as pb_grpc
from .settings import ServerSettings

__all__ = ["start_grpc"]

STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

#: Typed ``InferTensorContents`` field for each datatype.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _parameter(value: Any) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def _inputs(request: Any) -> dict[str, np.ndarray[Any, Any]]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    out = {}
    for i, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidRequestError(f"tensor {tensor.name!r}: shape {shape} has negative sizes")
        if raw:
            out[tensor.name] = tensor_from_bytes(raw[i], tensor.datatype, shape, tensor.name)
            continue
        field = CONTENTS_FIELD.get(tensor.datatype)
        if field is None:
            raise InvalidRequestError(
                f"tensor {tensor.name!r}: {tensor.datatype} must be sent in raw_input_contents"
            )
        from ..protocol import tensor_from_json

        values = list(getattr(tensor.contents, field))
        out[tensor.name] = tensor_from_json(values, tensor.datatype, shape, tensor.name)
    return out


def to_infer_request(request: Any, metadata: dict[str, str]) -> InferRequest:
    params = {k: _parameter(v) for k, v in request.parameters.items()}
    key = metadata.get("idempotency-key") or params.get("idempotency_key")
    sensitivity = params.get("sensitivity")
    context = RequestContext(
        sensitivity=Sensitivity(sensitivity)
        if sensitivity in {"personal", "restricted"}
        else Sensitivity.PUBLIC,
        idempotency_key=str(key) if key else None,
    )
    return InferRequest(
        request.model_name,
        _inputs(request),
        version=request.model_version or None,
        outputs=[o.name for o in request.outputs] or None,
        parameters=params,
        context=context,
        id=request.id,
    )


def to_grpc_response(response: InferResponse) -> Any:
    message = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id
    )
    for name, array in response.outputs.items():
        message.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        message.raw_output_contents.append(tensor_bytes(array))
    for key, value in response.parameters.items():
        _set_parameter(message.parameters[key], value)
    return message


def _set_parameter(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six calls of the protocol, backed by a ModelHost."""

    def __init__(self, host: ModelHost, token: str | None, ready: Any) -> None:
        self.host = host
        self._token = token
        self._ready = ready

    async def _guard(self, context: Any) -> dict[str, str]:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        if self._token is not None:
            scheme, _, token = metadata.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self._token.encode()
            ):
                await _abort(context, AuthenticationError("missing or wrong bearer token"))
        return metadata

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self._ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        await self._guard(context)
        return pb.ModelReadyResponse(ready=self.host.ready(request.name, request.version or None))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        await self._guard(context)
        return pb.ServerMetadataResponse(
            name="edgecloud", version=__version__, extensions=EXTENSIONS
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        await self._guard(context)
        try:
            config = self.host.config(request.name)
            versions = self.host.states[request.name].versions
            if request.version:
                if not request.version.isdigit() or int(request.version) not in versions:
                    raise InvalidRequestError(
                        f"model {request.name!r} has no version {request.version!r}"
                    )
                versions = [int(request.version)]
        except EdgecloudError as exc:
            await _abort(context, exc)
        meta = model_metadata(config, versions)
        response = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for kind in ("inputs", "outputs"):
            for tensor in meta[kind]:
                getattr(response, kind).add(**tensor)
        return response

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        metadata = await self._guard(context)
        started = time.perf_counter()
        code = 500
        try:
            response = await self.host.infer(to_infer_request(request, metadata))
            code = 200
        except EdgecloudError as exc:
            code = exc.status_code
            await _abort(context, exc)
        finally:
            metrics = self.host.metrics
            metrics.requests.labels(request.model_name, "grpc", str(code)).inc()
            metrics.latency.labels(request.model_name, "grpc").observe(
                time.perf_counter() - started
            )
        return to_grpc_response(response)


async def _abort(context: Any, exc: EdgecloudError) -> None:
    await context.abort(STATUS.get(exc.status_code, grpc.StatusCode.INTERNAL), exc.message)


async def start_grpc(host: ModelHost, settings: ServerSettings, token: str | None) -> Any:
    """Start the gRPC server on the running loop; returns it (``await server.stop()``)."""
    options = [
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_send_message_length", -1),
    ]
    server = grpc.aio.server(options=options)
    servicer = InferenceServicer(host, token, lambda: True)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    address = f"{settings.host}:{settings.grpc_port}"
    if settings.tls_cert and settings.tls_key:
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
        )
        server.add_secure_port(address, credentials)
    else:
        server.add_insecure_port(address)
    await server.start()
    return server
