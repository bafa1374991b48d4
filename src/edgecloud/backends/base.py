"""The one seam for "where inference runs": a backend answers an InferRequest."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

import numpy as np

from ..errors import InferenceError
from ..tensors import InferRequest, InferResponse, Span, Trace

__all__ = ["Backend", "FunctionBackend", "check_rows"]


def check_rows(
    value: np.ndarray[Any, Any],
    rows: int,
    *,
    output: str,
    source: str,
    like: np.ndarray[Any, Any] | None = None,
    hint: str = "",
) -> None:
    """Check an answer before its rows are stitched into another: ``value`` must have
    ``rows`` rows along axis 0 and, when ``like`` is given, ``like``'s shape after it.

    Raises InferenceError naming ``source`` (the backend or model that answered) and the
    shapes: the answer is at fault, not the request, so a Fallback may try elsewhere.
    Without the check, numpy would broadcast one row over all of them (silently wrong).
    """
    shape = list(value.shape)
    if value.ndim == 0 or value.shape[0] != rows:
        raise InferenceError(
            f"{source}: output {output!r} has shape {shape} for {rows} input rows, "
            f"so it is not batched along axis 0{hint}"
        )
    if like is not None and value.shape[1:] != like.shape[1:]:
        raise InferenceError(
            f"{source}: output {output!r} has shape {shape}, but the rows it replaces "
            f"have shape {['*', *like.shape[1:]]}{hint}"
        )


class Backend(abc.ABC):
    """Anything that answers an :class:`InferRequest`.

    Leaves do the work (local onnxruntime, a remote server); combinators hold
    other backends and decide. Use as a context manager to release resources.
    """

    #: Short label used in traces, e.g. ``local`` or ``remote:http://host:8000``.
    name: str = "backend"

    @abc.abstractmethod
    def infer(self, request: InferRequest) -> InferResponse:
        """Answer one request, or raise an :class:`~edgecloud.errors.EdgecloudError`."""

    async def infer_async(self, request: InferRequest) -> InferResponse:
        """Answer without blocking the event loop (default: a worker thread)."""
        import asyncio  # here, not at import: asyncio loads ssl (+7 MB RSS on the edge)

        return await asyncio.to_thread(self.infer, request)

    def close(self) -> None:
        """Release sessions, connections and threads. Idempotent."""
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


Arrays = Mapping[str, np.ndarray[Any, Any]]


class FunctionBackend(Backend):
    """A real in-process backend built from a function: for tests and glue code.

    ``fn`` maps input arrays to output arrays; the response is traced like any
    other leaf's.
    """

    def __init__(self, fn: Callable[[Arrays], Arrays], *, name: str = "function") -> None:
        self._fn = fn
        self.name = name

    def infer(self, request: InferRequest) -> InferResponse:
        start = time.perf_counter()
        outputs = dict(self._fn(request.inputs))
        span = Span(self.name, "compute", time.perf_counter() - start)
        return InferResponse(
            model=request.model,
            version=request.version or "1",
            outputs=outputs,
            trace=Trace(served_by=self.name, spans=[span]),
            id=request.id,
        )
