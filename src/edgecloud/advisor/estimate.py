"""Latency and cost of each way to run a workload: the numbers behind the decision.

Models, all stated so they can be argued with:

* **Local compute** = GFLOPs / the device's sustained GFLOP/s (or a measured
  time), queueing as M/M/1 at the device's utilisation; p99 × ``local_p99_factor``.
* **Remote** = RTT + upload (payload / uplink, inflated by 1 / (1 − link
  utilisation)) + download + server compute + M/M/1 queueing per server at the
  utilisation the fleet is sized for (servers = ⌈peak load / (capacity × target
  utilisation)⌉); p99 adds 2.33 σ of jitter and the M/M/1 waiting-time tail.
* **Cost per month**: device hardware amortised over its lifetime, device
  energy at its utilisation, servers × hours (or a managed price per 1k
  requests), data over the metered link plus cloud ingress/egress, model
  updates pushed to every device, fixed operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .spec import HOURS_PER_MONTH, SECONDS_PER_MONTH, Workload

__all__ = ["Costs", "Latency", "LocalPlan", "RemotePlan", "local_plan", "remote_plan"]

INT8_SIZE = 0.26
"""Size of an int8-quantized model relative to FP32 (bench/compression.py: 0.254× on minilm)."""
INT8_LATENCY = 0.6
"""Batch-1 latency of int8 relative to FP32 assumed for planning (minilm measured 0.39×)."""
INT8_ACCURACY_DROP = 0.01
Z99 = 2.326


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    parts_ms: dict[str, float] = field(default_factory=dict)
    """Where the median goes: compute, rtt, upload, download, server, queue."""

    def describe(self) -> str:
        return " + ".join(f"{k} {v:.1f}" for k, v in self.parts_ms.items() if v >= 0.05) or "0"


@dataclass
class Costs:
    monthly_usd: dict[str, float] = field(default_factory=dict)
    """Running costs per month by item."""
    hardware_usd: float = 0.0
    """Hardware bought at month 0 and again at the end of each lifetime."""
    lifetime_months: float = 36.0

    @property
    def per_month(self) -> float:
        return sum(self.monthly_usd.values())

    def cumulative(self, months: int) -> list[float]:
        """Total spent by the end of each month 0..months (hardware paid up front)."""
        out = []
        for m in range(months + 1):
            purchases = math.floor(m / self.lifetime_months) + 1 if self.hardware_usd else 0
            out.append(purchases * self.hardware_usd + m * self.per_month)
        return out

    def average_monthly(self, months: int) -> float:
        return self.cumulative(months)[-1] / months

    def __add__(self, other: Costs) -> Costs:
        monthly = dict(self.monthly_usd)
        for key, value in other.monthly_usd.items():
            monthly[key] = monthly.get(key, 0.0) + value
        return Costs(
            monthly,
            self.hardware_usd + other.hardware_usd,
            min(self.lifetime_months, other.lifetime_months),
        )


@dataclass(frozen=True)
class LocalPlan:
    """Running one model on every device."""

    model: str
    memory_mb: float
    compute_ms: float
    utilization: float
    latency: Latency
    accuracy: float
    power_w: float
    costs: Costs
    compressed: bool = False
    problems: tuple[str, ...] = ()
    """Why it cannot run (memory, throughput); empty when it can."""


@dataclass(frozen=True)
class RemotePlan:
    """Sending a share of every device's requests to servers."""

    share: float
    servers: int
    utilization: float
    link_utilization: float
    latency: Latency
    costs: Costs
    uplink_gb_month: float
    availability: float
    problems: tuple[str, ...] = ()


def _mm1_wait(rho: float, service_s: float, quantile: float) -> float:
    """Waiting time (s) at a quantile of an M/M/1 queue: P(W > t) = ρ e^(−μ(1−ρ)t)."""
    if rho <= 0 or rho >= 1 or rho <= 1 - quantile:
        return 0.0 if rho < 1 else math.inf
    return math.log(rho / (1 - quantile)) * service_s / (1 - rho)


def local_plan(
    w: Workload,
    *,
    name: str,
    memory_mb: float,
    gflops: float,
    accuracy: float,
    measured_ms: float | None = None,
    share: float = 1.0,
    allow_compression: bool = True,
) -> LocalPlan:
    """Run ``name`` on each device for ``share`` of its requests (int8-quantized when only
    that fits and ``allow_compression``); ``problems`` say why it cannot run."""
    device = w.device
    compressed = False
    if (
        memory_mb > device.memory_mb
        and allow_compression
        and memory_mb * INT8_SIZE <= device.memory_mb
    ):
        compressed = True
        memory_mb *= INT8_SIZE
        accuracy -= INT8_ACCURACY_DROP
    compute_ms = measured_ms if measured_ms is not None else gflops / device.gflops_per_s * 1000
    if compressed:
        compute_ms *= INT8_LATENCY
    rate = w.application.requests_per_s * w.application.burstiness * share
    utilization = rate * compute_ms / 1000
    problems = []
    if memory_mb > device.memory_mb:
        problems.append(
            f"{name} needs {memory_mb:,.0f} MB and the device has {device.memory_mb:,.0f} MB "
            f"(even int8 quantization, ≈{memory_mb * INT8_SIZE:,.0f} MB, does not fit)"
        )
    if utilization >= 1:
        problems.append(
            f"the device cannot keep up: {rate:g} req/s × {compute_ms:.1f} ms = "
            f"{utilization:.0%} busy (needs ≥ {gflops * rate:,.1f} GFLOP/s sustained)"
        )
    service_s = compute_ms / 1000
    wait50 = _mm1_wait(min(utilization, 0.999), service_s, 0.5) * 1000
    wait99 = _mm1_wait(min(utilization, 0.999), service_s, 0.99) * 1000
    latency = Latency(
        compute_ms + wait50,
        compute_ms * device.local_p99_factor + wait99,
        {"local compute": compute_ms, "local queue": wait50},
    )
    power_w = device.power_w * min(1.0, w.application.requests_per_s * share * service_s)
    kwh = power_w * HOURS_PER_MONTH / 1000 * device.count
    updates_gb = memory_mb / 1000 * w.operations.model_updates_per_year / 12 * device.count
    costs = Costs(
        {
            "device energy": kwh * w.prices.energy_usd_per_kwh,
            "model updates": updates_gb * (w.network.cost_per_gb + w.prices.cloud_egress_per_gb),
            "device operations": w.operations.device_ops_usd_per_month * device.count,
        },
        hardware_usd=device.hardware_usd * device.count,
        lifetime_months=device.lifetime_months,
    )
    return LocalPlan(
        name, memory_mb, compute_ms, utilization, latency, accuracy, power_w, costs,
        compressed, tuple(problems),
    )  # fmt: skip


def remote_plan(
    w: Workload,
    *,
    share: float,
    payload_share: float | None = None,
    payload_kb: float | None = None,
    compute_share: float = 1.0,
) -> RemotePlan:
    """Send ``share`` of requests to servers running the large model.

    ``payload_share`` is the share of the raw payload bytes sent (default: ``share``); a
    filter forwards event segments, so bytes and requests differ. A split sends
    ``payload_kb`` (the activation) instead of the payload and leaves the server
    ``compute_share`` of the model.
    """
    app, net, prices = w.application, w.network, w.prices
    payload_share = share if payload_share is None else payload_share
    sent_kb = app.payload_kb if payload_kb is None else payload_kb
    n = w.device.count
    gflops = (w.model.gflops or 0.0) * compute_share
    service_s = gflops / prices.server_gflops_per_s
    peak = app.requests_per_s * app.burstiness * share * n
    if prices.usd_per_1k_requests is not None:
        servers, rho = 0, 0.0
        compute_usd = (
            app.requests_per_s * share * n * SECONDS_PER_MONTH / 1000 * (prices.usd_per_1k_requests)
        )
    else:
        capacity = 1 / service_s if service_s > 0 else math.inf
        servers = max(1, math.ceil(peak / (capacity * prices.server_utilization)))
        rho = peak / (servers * capacity) if capacity != math.inf else 0.0
        compute_usd = servers * prices.server_usd_per_hour * HOURS_PER_MONTH
    up_bits_per_s = sent_kb * 8000 * app.requests_per_s * app.burstiness * payload_share
    link_util = up_bits_per_s / (net.uplink_mbps * 1e6)
    downlink = net.downlink_mbps or net.uplink_mbps
    upload_ms = sent_kb * 8 / net.uplink_mbps / max(1e-3, 1 - link_util)
    download_ms = app.response_kb * 8 / downlink
    server_ms = service_s * 1000
    wait50 = _mm1_wait(rho, service_s, 0.5) * 1000
    wait99 = _mm1_wait(rho, service_s, 0.99) * 1000
    fixed = net.rtt_ms + upload_ms + download_ms + server_ms
    latency = Latency(
        fixed + wait50,
        fixed + Z99 * net.jitter_ms + wait99,
        {"rtt": net.rtt_ms, "upload": upload_ms, "download": download_ms,
         "server": server_ms, "server queue": wait50},
    )  # fmt: skip
    up_gb = sent_kb * app.requests_per_s * payload_share * SECONDS_PER_MONTH * n / 1e6
    down_gb = app.response_kb * app.requests_per_s * share * SECONDS_PER_MONTH * n / 1e6
    costs = Costs(
        {
            "cloud compute": compute_usd,
            "data transfer": up_gb * (net.cost_per_gb + prices.cloud_ingress_per_gb)
            + down_gb * (net.cost_per_gb + prices.cloud_egress_per_gb),
            "server operations": w.operations.server_ops_usd_per_month,
        }
    )
    problems = []
    if link_util >= 0.9:
        problems.append(
            f"the uplink is saturated: {up_bits_per_s / 1e6:,.2f} Mbps at peak on a "
            f"{net.uplink_mbps:g} Mbps link ({link_util:.0%})"
        )
    availability = net.availability * prices.server_availability
    return RemotePlan(
        share, servers, rho, link_util, latency, costs, up_gb, availability, tuple(problems)
    )
