"""``edgecloud advise --measure``: replace estimates with measurements and decide again.

The model is run with ``LocalBackend`` on this machine (the device), and a real
remote endpoint is probed: liveness round trips for RTT and jitter, inference
calls for the server's time (their median minus the round trip and the upload).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .._timing import time_calls
from ..backends.local import LocalBackend
from ..errors import ConfigError, UnavailableError
from ..repository import ModelRepository
from ..tensors import InferRequest
from .estimate import remote_plan
from .spec import Workload

__all__ = ["Measurement", "measure"]


@dataclass(frozen=True)
class Measurement:
    quantity: str
    estimate: float
    measured: float
    unit: str


def _median_ms(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    times = [seconds * 1000 for seconds in time_calls(fn, rounds)]
    return statistics.median(times), statistics.pstdev(times)


def _request(repo: ModelRepository, model: str) -> InferRequest:
    """One batch-1 request of the model's declared inputs."""
    from ..compress.evaluate import random_inputs

    return InferRequest(model, random_inputs(repo.get(model).config, batch=1))


def measure(
    w: Workload,
    *,
    repo: str | Path | None = None,
    remote_url: str | None = None,
    token: str | None = None,
    threads: int | None = None,
    rounds: int = 100,
) -> tuple[Workload, list[Measurement]]:
    """The workload with measured figures in place of estimates, and what changed."""
    if repo is None and remote_url is None:
        raise ConfigError("--measure needs a model repository (--repo) or a server (--remote)")
    rows: list[Measurement] = []
    model = w.model
    device = w.device
    network = w.network
    prices = w.prices
    repository = ModelRepository(repo) if repo is not None else None
    if repository is not None:
        with LocalBackend(repository, intra_op_threads=threads) as local:
            names = [("measured_local_ms", model.name, model.gflops)]
            if model.small_name:
                names.append(("measured_small_local_ms", model.small_name, model.small_gflops))
            updates = {}
            for field, name, gflops in names:
                request = _request(repository, name)
                p50, _ = _median_ms(partial(local.infer, request), rounds)
                estimate = (gflops or 0.0) / device.gflops_per_s * 1000
                rows.append(Measurement(f"device compute: {name}", estimate, p50, "ms"))
                updates[field] = p50
            model = model.model_copy(update=updates)
    if remote_url is not None:
        from ..backends.remote import RemoteBackend

        with RemoteBackend(remote_url, token=token, timeout=10.0) as remote:
            if remote.ping() is None:
                raise UnavailableError(f"{remote_url} does not answer /v2/health/live")
            rtt, jitter = _median_ms(remote.ping, rounds)
            rows.append(Measurement("network RTT", network.rtt_ms, rtt, "ms"))
            rows.append(Measurement("network jitter (σ)", network.jitter_ms, jitter, "ms"))
            network = network.model_copy(update={"rtt_ms": rtt, "jitter_ms": jitter})
            if repository is not None:
                request = _request(repository, model.name)
                total, _ = _median_ms(lambda: remote.infer(request), rounds)
                upload = w.application.payload_kb * 8 / network.uplink_mbps
                server_ms = max(0.01, total - rtt)
                estimate = remote_plan(w, share=1.0).latency.parts_ms["server"]
                rows.append(Measurement(f"server compute: {model.name}", estimate, server_ms, "ms"))
                rows.append(Measurement("remote call end to end", upload + rtt + estimate,
                                        total, "ms"))  # fmt: skip
                prices = prices.model_copy(
                    update={"server_gflops_per_s": (model.gflops or 0.0) / (server_ms / 1000)}
                )
    measured = w.model_copy(
        update={"model": model, "device": device, "network": network, "prices": prices}
    )
    return measured, rows
