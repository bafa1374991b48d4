"""The workload spec: what ``edgecloud advise`` reasons about, validated by pydantic.

Every field has a unit in its name and a docstring; defaults are the figures a
practitioner would assume when nothing better is known, and every report
lists which of them were used. A typo is an error naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._config_files import read_mapping, validate
from ..deployment.filter_node import FrameDiffTriggerSpec, TriggerSpec

__all__ = [
    "Application",
    "Device",
    "Hybrid",
    "ModelSpec",
    "Network",
    "Operations",
    "Prices",
    "Privacy",
    "Weights",
    "Workload",
    "load_workload",
]

SECONDS_PER_MONTH = 30 * 24 * 3600
HOURS_PER_MONTH = 30 * 24


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Application(_Strict):
    latency_p50_ms: float = Field(gt=0)
    """Median end-to-end latency the application needs."""
    latency_p99_ms: float = Field(gt=0)
    """99th percentile end-to-end latency the application tolerates."""
    requests_per_s: float = Field(gt=0)
    """Mean inference requests per second from one device (frames per second for video)."""
    burstiness: float = Field(default=1.0, ge=1)
    """Peak rate / mean rate; servers are sized for the peak."""
    payload_kb: float = Field(gt=0)
    """Bytes sent up per request, in kB (1 kB = 1,000 bytes)."""
    response_kb: float = Field(default=1.0, ge=0)
    """Bytes returned per request, in kB."""
    availability: float = Field(default=0.99, gt=0, le=1)
    """Share of time the application must be able to answer."""
    min_accuracy: float | None = Field(default=None, gt=0, le=1)
    """Lowest acceptable task accuracy; options below it are infeasible."""
    time_sensitive: bool = True
    """False for work that may wait (analytics, reports): then the latency targets only
    score options and never rule one out."""


class ModelSpec(_Strict):
    name: str = "model"
    """Name in the model repository (the large, most accurate variant)."""
    params_m: float | None = Field(default=None, gt=0)
    """Parameters in millions (read from `onnx` when given)."""
    memory_mb: float | None = Field(default=None, gt=0)
    """Memory the model needs at run time (default: 4 bytes per parameter × 1.2)."""
    gflops: float | None = Field(default=None, gt=0)
    """Compute per inference in GFLOPs (read from `onnx` when given)."""
    onnx: str | None = None
    """An ONNX file to read parameters, memory and FLOPs from."""
    accuracy: float = Field(default=0.95, gt=0, le=1)
    """Task accuracy of this model."""
    small_name: str | None = None
    """Name of a smaller variant for the device (enables the cascade pattern)."""
    small_memory_mb: float | None = Field(default=None, gt=0)
    small_gflops: float | None = Field(default=None, gt=0)
    small_accuracy: float | None = Field(default=None, gt=0, le=1)
    measured_local_ms: float | None = Field(default=None, gt=0)
    """Measured latency of the model on the device (``--measure`` fills it)."""
    measured_small_local_ms: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> ModelSpec:
        if self.onnx is None:
            if self.gflops is None:
                raise ValueError("give gflops (or an onnx file to read it from)")
            if self.memory_mb is None and self.params_m is None:
                raise ValueError("give memory_mb or params_m (or an onnx file)")
        small = [self.small_memory_mb, self.small_gflops, self.small_accuracy]
        if self.small_name is not None and any(v is None for v in small):
            raise ValueError("a small variant needs small_memory_mb, small_gflops, small_accuracy")
        return self

    @property
    def memory(self) -> float:
        if self.memory_mb is not None:
            return self.memory_mb
        assert self.params_m is not None
        return self.params_m * 4 * 1.2

    @property
    def has_small(self) -> bool:
        return self.small_name is not None


class Device(_Strict):
    memory_mb: float = Field(gt=0)
    """Memory available to inference on the device."""
    gflops_per_s: float = Field(gt=0)
    """Sustained throughput the device reaches on this kind of model (not the peak)."""
    power_w: float = Field(default=5.0, gt=0)
    """Extra power drawn while inferring."""
    power_budget_w: float | None = Field(default=None, gt=0)
    """Average power inference may use; options above it are infeasible."""
    count: int = Field(default=1, ge=1)
    """Devices in the fleet."""
    hardware_usd: float = Field(default=0.0, ge=0)
    """Extra hardware cost per device to run inference locally (0 when the device
    already exists, e.g. users' phones)."""
    lifetime_months: float = Field(default=36, gt=0)
    """Months before that hardware is replaced."""
    local_p99_factor: float = Field(default=1.3, ge=1)
    """p99 / p50 of local compute (thermal throttling, other apps)."""


class Network(_Strict):
    rtt_ms: float = Field(ge=0)
    """Round trip time to the server."""
    jitter_ms: float = Field(default=0.0, ge=0)
    """Standard deviation of the round trip time."""
    uplink_mbps: float = Field(gt=0)
    """Upload bandwidth per device, in megabits per second."""
    downlink_mbps: float | None = Field(default=None, gt=0)
    """Download bandwidth per device (default: the uplink's)."""
    availability: float = Field(default=0.999, gt=0, le=1)
    """Share of time the link to the server is up."""
    typical_outage_min: float = Field(default=5.0, ge=0)
    """How long a typical outage lasts (sizes the outbox)."""
    cost_per_gb: float = Field(default=0.0, ge=0)
    """Metered cost of data sent over the device's link (cellular, site uplink), USD/GB."""


class Privacy(_Strict):
    data_class: Literal["public", "personal", "regulated"] = "public"
    """Regulated data (health, financial) may not leave the device raw."""
    residency: Literal["none", "region", "device"] = "none"
    """Where data must stay: a region (the cloud must be in it) or the device."""


class Operations(_Strict):
    model_updates_per_year: float = Field(default=4, ge=0)
    """How often a new model version ships."""
    device_ops_usd_per_month: float = Field(default=0.0, ge=0)
    """Per-device cost of operating local inference (monitoring, support)."""
    server_ops_usd_per_month: float = Field(default=0.0, ge=0)
    """Fixed cost of operating the remote tier (on-call, monitoring)."""


class Prices(_Strict):
    server_usd_per_hour: float = Field(default=1.0, gt=0)
    """Price of one inference server (instance) per hour."""
    server_gflops_per_s: float = Field(default=20_000, gt=0)
    """Sustained throughput of one server on this model."""
    usd_per_1k_requests: float | None = Field(default=None, ge=0)
    """A managed endpoint's price instead of instances (overrides the two above)."""
    server_utilization: float = Field(default=0.6, gt=0, lt=1)
    """Target utilisation of servers at peak (queueing grows without bound near 1)."""
    server_availability: float = Field(default=0.999, gt=0, le=1)
    cloud_ingress_per_gb: float = Field(default=0.0, ge=0)
    """Cloud price of data received, USD/GB (usually 0)."""
    cloud_egress_per_gb: float = Field(default=0.09, ge=0)
    """Cloud price of data sent back (responses, model updates), USD/GB."""
    energy_usd_per_kwh: float = Field(default=0.20, ge=0)


class SplitCut(_Strict):
    """One way to split the model: the device runs the head, the server the tail."""

    name: str = "cut"
    head_share: float = Field(gt=0, lt=1)
    """Share of the model's compute before the cut (on the device)."""
    activation_kb: float = Field(gt=0)
    """What crosses the link per request at this cut (after activation compression)."""
    cosine: float = Field(default=1.0, gt=0, le=1)
    """Fidelity of the split model's outputs to the full model's."""


class Hybrid(_Strict):
    escalation_rate: float = Field(default=0.15, ge=0, le=1)
    """Cascade: share of requests the small model escalates (`edgecloud calibrate`
    measures it)."""
    event_fraction: float | None = Field(default=None, gt=0, le=1)
    """Filter-then-forward: share of the stream that holds events (enables the pattern)."""
    trigger_gflops: float = Field(default=0.01, gt=0)
    """Compute of the on-device trigger per request."""
    trigger_memory_mb: float = Field(default=5.0, gt=0)
    trigger: TriggerSpec = Field(default_factory=lambda: FrameDiffTriggerSpec(kind="frame-diff"))
    """Filter-then-forward: the on-device trigger the deployment runs (a filter node's
    ``trigger``: ``{kind: frame-diff}``, ``{kind: anomaly, fit: normal.npy}``, ``{kind: vad}``)."""
    event_recall: float = Field(default=0.99, gt=0, le=1)
    """Share of true events the trigger catches (scales the filter's accuracy)."""
    split_cuts: list[SplitCut] = Field(default_factory=list)
    """Model partitioning: candidate cuts (enables the split pattern)."""
    split_profile: str | None = None
    """A ``split-profile.json`` from ``edgecloud split`` to read the cuts from: head
    share = measured head time / whole-model time, activation = measured bytes."""


class Weights(_Strict):
    """How much each factor counts in the overall score (normalised)."""

    latency: float = Field(default=1.0, ge=0)
    compute: float = Field(default=1.0, ge=0)
    connectivity: float = Field(default=1.0, ge=0)
    privacy: float = Field(default=1.0, ge=0)
    operations: float = Field(default=1.0, ge=0)
    cost: float = Field(default=1.5, ge=0)


class Workload(_Strict):
    """A workload: everything the decision depends on."""

    name: str = "workload"
    description: str = ""
    horizon_months: int = Field(default=36, ge=1, le=240)
    """How far the cost comparison looks."""
    application: Application
    model: ModelSpec
    device: Device
    network: Network
    privacy: Privacy = Field(default_factory=Privacy)
    operations: Operations = Field(default_factory=Operations)
    prices: Prices = Field(default_factory=Prices)
    hybrid: Hybrid = Field(default_factory=Hybrid)
    weights: Weights = Field(default_factory=Weights)
    remote_url: str = "http://127.0.0.1:8000"
    """Server the generated deployment points at."""

    @model_validator(mode="after")
    def _targets(self) -> Workload:
        if self.application.latency_p99_ms < self.application.latency_p50_ms:
            raise ValueError("application.latency_p99_ms is below latency_p50_ms")
        return self


def load_workload(source: str | Path | dict[str, Any], *, base: Path | None = None) -> Workload:
    """Validate a workload from a YAML file or a mapping; ConfigError names the field."""
    if isinstance(source, dict):
        raw: Any = source
        where = "workload"
    else:
        path = Path(source)
        where, base = str(path), base or path.parent
        raw = read_mapping(path, "workload", "application, model, device and network")
    workload = validate(Workload, raw, "", where)
    if workload.model.onnx is not None:
        from .onnx_stats import fill_from_onnx

        workload = fill_from_onnx(workload, base or Path.cwd())
    if workload.hybrid.split_profile is not None:
        workload = _cuts_from_profile(workload, base or Path.cwd(), where)
    return workload


def _cuts_from_profile(workload: Workload, base: Path, where: str) -> Workload:
    from ..errors import ConfigError
    from ..split import SplitProfile

    assert workload.hybrid.split_profile is not None
    path = Path(workload.hybrid.split_profile)
    try:
        profile = SplitProfile.load(path if path.is_absolute() else base / path)
    except ConfigError as exc:
        raise ConfigError(f"{where}: hybrid.split_profile: {exc.message}") from exc
    whole = profile.candidate("all-local").head_s
    cuts = [
        SplitCut(name=c.key, head_share=min(max(c.head_s / whole, 1e-3), 0.999),
                 activation_kb=max(c.bytes_up / 1000, 1e-3), cosine=max(c.cosine, 1e-6))
        for c in profile.candidates
        if not c.trivial and whole > 0
    ]  # fmt: skip
    hybrid = workload.hybrid.model_copy(update={"split_cuts": [*workload.hybrid.split_cuts, *cuts]})
    return workload.model_copy(update={"hybrid": hybrid})
