"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``.

Runs on the same event loop and ModelHost as the HTTP front end. Outputs are
always sent as ``raw_output_contents`` (the fast path every v2 client reads);
inputs are accepted raw or as typed ``contents``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import __version__
from .._optional import require
from ..errors import (
    AuthenticationError,
    ConfigError,
    EdgecloudError,
    ModelNotFoundError,
    clip,
)
from ..tensors import InferRequest, InferResponse, datatype_of
from ..wire.context import carried_key, decode_context
from ..wire.grpc import output_names, parameters, read_tensors, set_parameter
from ..wire.rest import tensor_bytes
from .host import ModelHost
from .http import EXTENSIONS, OFFLOAD_BYTES, REPOSITORY_EXTENSION, model_metadata
from .launch import address
from .metrics import UNKNOWN_MODEL, RequestMetrics, model_label
from .release import CLIENT_GONE, collect_soon, release
from .settings import ServerSettings

_FEATURE = "the server's gRPC endpoint"
if TYPE_CHECKING:
    import grpc

    from ..proto import inference_pb2 as pb
    from ..proto import inference_pb2_grpc as pb_grpc
else:
    grpc = require("grpc", extra="server", feature=_FEATURE)
    pb = require("edgecloud.proto.inference_pb2", extra="server", feature=_FEATURE)
    pb_grpc = require("edgecloud.proto.inference_pb2_grpc", extra="server", feature=_FEATURE)

__all__ = ["start_grpc"]


class _Undecodable:
    """A ModelInfer message protobuf could not parse (invalid UTF-8 in a string
    field, a truncated or garbled message): answered INVALID_ARGUMENT by the
    handler, and counted, instead of grpc's UNKNOWN naming a Python class."""

    __slots__ = ("reason", "size")

    def __init__(self, reason: str, size: int) -> None:
        self.reason, self.size = reason, size


def _parse_infer(raw: bytes) -> Any:
    """ModelInfer's deserializer: the message, or :class:`_Undecodable`."""
    try:
        return pb.ModelInferRequest.FromString(raw)
    except Exception as exc:  # protobuf's DecodeError (upb, python, cpp alike)
        return _Undecodable(" ".join(str(exc).split())[:200], len(raw))


class _Captured:
    """Stands in for the server while the generated code lists its method handlers."""

    handlers: dict[str, Any]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service, self.handlers = service, handlers


def _register(servicer: InferenceServicer, server: Any) -> None:
    """The generated registration, with ModelInfer's deserializer :func:`_parse_infer`."""
    captured = _Captured()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, captured)  # type: ignore[no-untyped-call]
    handlers = dict(captured.handlers)
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        servicer.ModelInfer,
        request_deserializer=_parse_infer,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(captured.service, handlers),)
    )
    server.add_registered_method_handlers(captured.service, handlers)


def to_infer_request(request: Any, key: str | None) -> InferRequest:
    """``request`` (a ModelInferRequest) with ``key``, the one ``idempotency-key``
    of its metadata (:func:`~edgecloud.wire.context.carried_key`), or None."""
    params = parameters(request.parameters)
    context = decode_context(params, key, carrier="the idempotency-key metadata")
    return InferRequest(
        request.model_name,
        read_tensors(request.inputs, request.raw_input_contents),
        version=request.model_version or None,
        outputs=output_names(request.outputs),
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
        message.raw_output_contents.append(tensor_bytes(array, name))
    for key, value in response.parameters.items():
        set_parameter(message.parameters[key], value)
    return message


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six calls of the protocol, backed by a ModelHost."""

    def __init__(self, host: ModelHost, token: str | None, ready: Any) -> None:
        self.host = host
        self._requests = RequestMetrics(host.metrics, "grpc")
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
        """Ready as REST computes it (:meth:`ModelState.serves`); an unknown model
        is not ready (REST: 404; Triton's gRPC client reads a flag, not an error)."""
        await self._guard(context)
        return pb.ModelReadyResponse(ready=self.host.ready(request.name, request.version or None))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        await self._guard(context)
        return pb.ServerMetadataResponse(
            name="edgecloud", version=__version__, extensions=[*EXTENSIONS, REPOSITORY_EXTENSION]
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        await self._guard(context)
        try:  # the REST answer's computation and error class (404 / NOT_FOUND)
            config = self.host.config(request.name)
            state = self.host.states.get(request.name)
            if state is None:  # unloaded since config() found it
                raise ModelNotFoundError(f"no model {clip(request.name)} on this server")
            versions = state.metadata_versions(request.version or None)
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
        """One infer call, counted once with the status it is answered with under the
        model label it had when it arrived; an error is answered with ``abort``
        outside the handler that caught it, its traceback dropped (:mod:`.release`)."""
        await self._guard(context)
        if isinstance(request, _Undecodable):
            count, _ = self._requests.labelled(UNKNOWN_MODEL, 400)
            count.inc()
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the message is not a ModelInferRequest protobuf can parse ({request.reason}); "
                "every string field must be valid UTF-8",
            )
        started = time.perf_counter()
        label = model_label(request.model_name, self.host.states)
        code, size, failure = 500, 0, None
        infer_request: InferRequest | None = None
        response: InferResponse | None = None
        try:
            size = request.ByteSize()
            key = carried_key(
                (v for k, v in context.invocation_metadata() if k.lower() == "idempotency-key"),
                "the idempotency-key metadata",
            )
            if size > OFFLOAD_BYTES:  # decode large messages off the loop
                infer_request = await asyncio.to_thread(to_infer_request, request, key)
            else:
                infer_request = to_infer_request(request, key)
            response = await self.host.infer(infer_request)
            reply = to_grpc_response(response)
            code = 200
        except EdgecloudError as exc:
            code, failure = exc.status_code, exc
        except asyncio.CancelledError:
            code = CLIENT_GONE  # the caller went away (deadline, cancel): not a server error
            raise
        finally:
            if not label:  # not served at arrival: its label now (HttpApp._count's rule)
                label = model_label(request.model_name, self.host.states)
            count, latency = self._requests.labelled(label, code)
            count.inc()
            latency.observe(time.perf_counter() - started)
        if failure is not None:
            request = infer_request = response = None  # not kept by abort's traceback
            release(failure)
            collect_soon(size)
            await _abort(context, failure)
        return reply

    # -- Triton's model repository extension -----------------------------------------

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        await self._guard(context)
        response = pb.RepositoryIndexResponse()
        for entry in self.host.control.index(request.ready):
            response.models.add(**entry)
        return response

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await self._guard(context)
        try:
            await self.host.control.load(request.model_name, _repository_parameters(request))
        except EdgecloudError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._guard(context)
        try:
            await self.host.control.unload(request.model_name, _repository_parameters(request))
        except EdgecloudError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelUnloadResponse()


def _repository_parameters(request: Any) -> dict[str, Any]:
    """A load/unload request's ``ModelRepositoryParameter`` map as plain values."""
    out: dict[str, Any] = {}
    for key, value in request.parameters.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice else None
    return out


async def _abort(context: Any, exc: EdgecloudError) -> None:
    await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)


async def start_grpc(
    host: ModelHost,
    settings: ServerSettings,
    token: str | None,
    ready: Callable[[], bool] = lambda: True,
    reuse_port: bool = False,
) -> tuple[Any, int]:
    """Start the gRPC server on the running loop; returns it (``await server.stop()``)
    and the port it bound (``grpc_port`` 0 picks a free one).

    ``ready`` answers ServerReady (the HTTP front end's readiness, so both agree).

    The port is bound exclusively (``grpc.so_reuseport`` 0: grpc's default lets
    a second server share it); ConfigError naming the port when it cannot be had.
    ``reuse_port``: one worker of several (:mod:`.workers`) shares the port
    with the others and with the supervisor's reservation of it.
    """
    options = [
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    server = grpc.aio.server(options=options)
    servicer = InferenceServicer(host, token, ready)
    _register(servicer, server)
    target = address(settings.host, settings.grpc_port or 0)  # [::1]:port for IPv6
    try:
        if settings.tls_cert and settings.tls_key:
            credentials = grpc.ssl_server_credentials(
                [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
            )
            bound = server.add_secure_port(target, credentials)
        else:
            bound = server.add_insecure_port(target)
    except RuntimeError:  # grpc's "Failed to bind to address"
        bound = 0
    if not bound:
        raise ConfigError(
            f"cannot listen for gRPC on {target}: the port is in use or the address is not "
            "this machine's; choose another --grpc-port (or -1 to turn gRPC off)"
        )
    await server.start()
    return server, int(bound)
