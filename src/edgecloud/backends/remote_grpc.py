"""The gRPC transport of RemoteBackend: ``inference.GRPCInferenceService`` clients.

Tensors travel as ``raw_input_contents`` (the protocol's fast path, required
for FP16); one channel per backend is reused by every call.
"""

from __future__ import annotations

import time
from typing import Any

from .._optional import require
from ..errors import (
    EdgecloudError,
    InferenceError,
    InvalidRequestError,
    error_for_grpc_code,
)
from ..tensors import InferRequest, InferResponse, Span, Trace, datatype_of
from ..wire.context import context_parameters
from ..wire.grpc import parameters, read_tensors, set_parameter
from ..wire.rest import tensor_bytes
from .remote_url import check_url

__all__ = ["GrpcTransport"]


class GrpcTransport:
    """Blocking gRPC calls to one server; thread-safe (gRPC channels are)."""

    def __init__(
        self, target: str, *, token: str | None, tls: bool, root_certificates: bytes | None
    ) -> None:
        target = check_url(f"{'grpcs' if tls else 'grpc'}://{target}").target
        self._grpc = require("grpc", extra="remote", feature="RemoteBackend over gRPC")
        feature = "RemoteBackend over gRPC"
        inference_pb2 = require("edgecloud.proto.inference_pb2", extra="remote", feature=feature)
        inference_pb2_grpc = require(
            "edgecloud.proto.inference_pb2_grpc", extra="remote", feature=feature
        )

        self._pb = inference_pb2
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        if tls:
            credentials = self._grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = self._grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = self._grpc.insecure_channel(target, options=options)
        self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self.target = target

    def infer(self, request: InferRequest, timeout: float, served_by: str) -> InferResponse:
        message = self._message(request)
        metadata = list(self._metadata)
        if request.context.idempotency_key:
            metadata.append(("idempotency-key", request.context.idempotency_key))
        started = time.perf_counter()
        try:
            reply = self._stub.ModelInfer(message, timeout=timeout, metadata=metadata)
        except self._grpc.RpcError as exc:
            raise self._error(exc) from exc
        elapsed = time.perf_counter() - started
        try:
            outputs = read_tensors(reply.outputs, reply.raw_output_contents)
        except InvalidRequestError as exc:  # the server's fault, not the caller's
            raise InferenceError(
                f"{self.target} sent a response that cannot be read: {exc}"
            ) from exc
        span = Span(
            served_by, "network", elapsed, f"ModelInfer {request.model}",
            message.ByteSize(), reply.ByteSize(),
        )  # fmt: skip
        return InferResponse(
            model=reply.model_name,
            version=reply.model_version,
            outputs=outputs,
            trace=Trace(served_by, [span]),
            id=reply.id,
            parameters=parameters(reply.parameters),
        )

    def ready(self, model: str | None) -> bool:
        try:
            if model is None:
                reply = self._stub.ServerReady(
                    self._pb.ServerReadyRequest(), timeout=5, metadata=self._metadata
                )
            else:
                reply = self._stub.ModelReady(
                    self._pb.ModelReadyRequest(name=model), timeout=5, metadata=self._metadata
                )
        except self._grpc.RpcError:
            return False
        return bool(reply.ready)

    def metadata(self, model: str) -> dict[str, Any]:
        try:
            reply = self._stub.ModelMetadata(
                self._pb.ModelMetadataRequest(name=model), timeout=10, metadata=self._metadata
            )
        except self._grpc.RpcError as exc:
            raise self._error(exc) from exc

        def tensors(items: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

        return {
            "name": reply.name,
            "versions": list(reply.versions),
            "platform": reply.platform,
            "inputs": tensors(reply.inputs),
            "outputs": tensors(reply.outputs),
        }

    def close(self) -> None:
        self._channel.close()

    def _message(self, request: InferRequest) -> Any:
        """The protobuf of ``request``; InvalidRequestError for a string protobuf
        cannot hold (a lone surrogate: protobuf strings are UTF-8)."""
        try:
            return self._build(request)
        except UnicodeEncodeError as exc:
            raise InvalidRequestError(
                f"the request holds a string protobuf cannot carry ({exc}): every name, "
                "id and parameter must be valid Unicode text"
            ) from None

    def _build(self, request: InferRequest) -> Any:
        message = self._pb.ModelInferRequest(
            model_name=request.model, model_version=request.version or "", id=request.id
        )
        for name, array in request.inputs.items():
            message.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
            message.raw_input_contents.append(tensor_bytes(array, name))
        for name in request.outputs or ():
            message.outputs.add(name=name)
        params = {**request.parameters, **context_parameters(request.context)}
        for key, value in params.items():
            set_parameter(message.parameters[key], value)
        return message

    def _error(self, exc: Any) -> EdgecloudError:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else exc
        return error_for_grpc_code(code, f"{self.target} answered {code}: {details}")
