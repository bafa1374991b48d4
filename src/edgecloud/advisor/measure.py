"""``edgecloud advise --measure``: replace estimates with measurements and decide again.

The model is run with ``LocalBackend`` on this machine (the device), and a real
remote endpoint is probed: liveness round trips for RTT and jitter, inference
calls for the server's time (their median minus the round trip and the upload).

What the model runs on (:func:`measurement_inputs`), as Triton's
``perf_analyzer`` decides it: the ``--data FILE.npz`` given (``--small-data``
for the cascade's small model), else the version's ``samples.npz``, one row
per request, cycling through the rows; else, only for a model whose inputs
all have fixed shapes and no declared value domain, seeded random inputs
(timing does not depend on the values of a dense fixed-shape graph). A model
with a variable dimension (a token model, whose cost grows with the length)
or a value domain (token ids, a sample rate) needs real data: ConfigError
naming ``--data``. The inputs used are reported with every measurement.
"""

from __future__ import annotations

import itertools
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._timing import time_calls
from ..backends.local import LocalBackend
from ..errors import ConfigError, UnavailableError
from ..repository import ModelConfig, ModelRepository
from ..samples import DATA_OPTION, SAMPLES_FILE, data_for, finite, row_batches
from ..tensors import InferRequest
from .estimate import remote_plan
from .spec import Workload

__all__ = ["Measurement", "MeasurementInputs", "measure", "measurement_inputs"]

PURPOSE = "advise --measure"
SMALL_DATA_OPTION = "--small-data"


@dataclass(frozen=True)
class Measurement:
    quantity: str
    estimate: float
    measured: float
    unit: str
    inputs: str = ""
    """What the model ran on (a file and its rows, or seeded random inputs)."""


@dataclass(frozen=True)
class MeasurementInputs:
    """The requests one model is timed on, sent in turn (cycling), and where they came from."""

    requests: list[InferRequest]
    source: str

    def cycle(self) -> Callable[[], InferRequest]:
        """A function returning the next request on every call."""
        turn = itertools.cycle(self.requests)
        return lambda: next(turn)


def _median_ms(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    times = [seconds * 1000 for seconds in time_calls(fn, rounds)]
    return statistics.median(times), statistics.pstdev(times)


def _sending(
    infer: Callable[[InferRequest], object], feed: MeasurementInputs
) -> Callable[[], object]:
    """A call that sends the next of ``feed``'s requests."""
    following = feed.cycle()
    return lambda: infer(following())


def _random_ok(config: ModelConfig) -> bool:
    """Fixed shapes, floating-point inputs and no value domain: random values cost what
    real ones do. Integer inputs are ids or counts (token ids index an embedding: a random
    one is out of its vocabulary), so they need real rows."""
    return all(
        -1 not in spec.shape
        and spec.datatype in ("FP16", "FP32", "FP64")
        and spec.min_value is None
        and spec.max_value is None
        and spec.allowed_values is None
        for spec in config.inputs
    )


def measurement_inputs(
    repo: ModelRepository,
    model: str,
    data: str | os.PathLike[str] | None = None,
    *,
    flag: str = DATA_OPTION,
    limit: int = 100,
) -> MeasurementInputs:
    """Batch-1 requests (at most ``limit``) for timing ``model``'s newest served version.

    ``data`` if given, else the version's samples, else seeded random inputs
    when :func:`_random_ok`; otherwise ConfigError naming ``flag``. An
    unbatched model's file is one request.
    """
    version = repo.get(model)
    if data is None and SAMPLES_FILE not in version.files and _random_ok(version.config):
        from ..compress.evaluate import random_inputs

        return MeasurementInputs(
            [InferRequest(model, random_inputs(version.config, batch=1))],
            "random inputs (seed 0; fixed shapes)",
        )
    samples = finite(data_for(version, data, purpose=PURPOSE, flag=flag), PURPOSE)
    batches = row_batches(samples, version.config, 1, limit=limit)
    rows = f"{len(batches)} of {samples.rows} rows" if version.config.batched else "one request"
    return MeasurementInputs(
        [InferRequest(model, inputs) for inputs in batches], f"{samples.source} ({rows})"
    )


def measure(
    w: Workload,
    *,
    repo: str | Path | None = None,
    remote_url: str | None = None,
    token: str | None = None,
    threads: int | None = None,
    rounds: int = 100,
    data: str | os.PathLike[str] | None = None,
    small_data: str | os.PathLike[str] | None = None,
) -> tuple[Workload, list[Measurement]]:
    """The workload with measured figures in place of estimates, and what changed.

    ``data``: inputs of the workload's model; ``small_data``: of its small model
    (``--data``/``--small-data``; see :func:`measurement_inputs` for the default).
    Raises ConfigError when neither ``repo`` nor ``remote_url`` is given, or a
    model needs data and has none; UnavailableError when the server does not answer.
    """
    if repo is None and remote_url is None:
        raise ConfigError("--measure needs a model repository (--repo) or a server (--remote)")
    if repo is None and (data is not None or small_data is not None):
        raise ConfigError("--data and --small-data need the model repository (--repo) they feed")
    rows: list[Measurement] = []
    model = w.model
    device = w.device
    network = w.network
    prices = w.prices
    repository = ModelRepository(repo) if repo is not None else None
    inputs: MeasurementInputs | None = None
    if repository is not None:
        inputs = measurement_inputs(repository, model.name, data, limit=rounds)
        names = [("measured_local_ms", model.name, model.gflops, inputs)]
        if model.small_name:
            small = measurement_inputs(
                repository, model.small_name, small_data, flag=SMALL_DATA_OPTION, limit=rounds
            )
            names.append(("measured_small_local_ms", model.small_name, model.small_gflops, small))
        with LocalBackend(repository, intra_op_threads=threads) as local:
            updates = {}
            for field, name, gflops, feed in names:
                p50, _ = _median_ms(_sending(local.infer, feed), rounds)
                estimate = (gflops or 0.0) / device.gflops_per_s * 1000
                rows.append(
                    Measurement(f"device compute: {name}", estimate, p50, "ms", feed.source)
                )
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
            if inputs is not None:
                total, _ = _median_ms(_sending(remote.infer, inputs), rounds)
                upload = w.application.payload_kb * 8 / network.uplink_mbps
                server_ms = max(0.01, total - rtt)
                estimate = remote_plan(w, share=1.0).latency.parts_ms["server"]
                rows.append(Measurement(f"server compute: {model.name}", estimate, server_ms,
                                        "ms", inputs.source))  # fmt: skip
                rows.append(Measurement("remote call end to end", upload + rtt + estimate,
                                        total, "ms", inputs.source))  # fmt: skip
                prices = prices.model_copy(
                    update={"server_gflops_per_s": (model.gflops or 0.0) / (server_ms / 1000)}
                )
    measured = w.model_copy(
        update={"model": model, "device": device, "network": network, "prices": prices}
    )
    return measured, rows
