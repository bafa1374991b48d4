"""The one seam for "where inference runs": a backend answers an InferRequest."""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

import numpy as np

from ..tensors import InferRequest, InferResponse, Span, Trace

__all__ = ["Backend", "FunctionBackend"]


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
