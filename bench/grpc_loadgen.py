"""A closed-loop gRPC load generator: ``concurrency`` callers of ModelInfer on one channel.

Each caller sends the same prepared ``ModelInferRequest`` (the Open Inference
Protocol's gRPC form, the proto edgecloud and MLServer both serve), waits for
the answer and sends again for ``seconds`` after a warm-up. grpc.aio on the
bench's event loop: at high rates the generator itself is a limit, the same
for every server it measures.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from edgecloud.proto import inference_pb2 as pb
from edgecloud.proto import inference_pb2_grpc as pb_grpc
from edgecloud.tensors import datatype_of

#: ``contents`` field per numpy kind+size for the typed (non-raw) encoding.
_CONTENTS = {"FP32": "fp32_contents", "INT64": "int64_contents", "INT32": "int_contents"}


def infer_request(model: str, inputs: dict[str, np.ndarray[Any, Any]], *, raw: bool) -> Any:
    """A ModelInferRequest: tensors as ``raw_input_contents`` or typed ``contents``."""
    request = pb.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        datatype = datatype_of(array)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if raw:
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
        else:
            getattr(tensor.contents, _CONTENTS[datatype]).extend(array.ravel().tolist())
    return request


async def run_grpc_load(
    target: str, request: Any, *, concurrency: int, seconds: float, warmup: float = 1.0
) -> dict[str, Any]:
    """req/s (answers without error per second), p50/p99 ms and the error count."""
    import grpc

    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(request, timeout=30)
        start = time.perf_counter()
        warm_until, stop_at = start + warmup, start + warmup + seconds

        async def caller() -> None:
            nonlocal errors
            while (started := time.perf_counter()) < stop_at:
                try:
                    await stub.ModelInfer(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if started >= warm_until:
                    latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "req_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "errors": errors,
    }
