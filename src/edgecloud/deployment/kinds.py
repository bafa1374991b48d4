"""The node kinds of the deployment language: leaves (local, remote, split) and the
combinators of :mod:`edgecloud.routing`. Each kind is registered once, here or in
its own module (:mod:`.filter_node`), with :func:`~.nodes.node_kind`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaValue

from .fields import FilePath, Name
from .nodes import AnyNode, BuildContext, Node, node_kind

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..routing.resilience import CircuitBreaker
    from ..tensors import InferRequest, InferResponse

__all__ = [
    "BreakerSpec",
    "CascadeNode",
    "FallbackNode",
    "FastestNode",
    "GuardNode",
    "LinkSpec",
    "LocalNode",
    "PreferLocalNode",
    "PreferRemoteNode",
    "RemoteNode",
    "SplitNode",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)


@node_kind("local")
class LocalNode(Node):
    """Run the model on this device with onnxruntime (``local`` or ``{local: {threads: 2}}``)."""

    leaf = True
    threads: int | None = Field(default=None, ge=1)
    """Intra-op threads (default: onnxruntime's)."""
    device: Literal["auto", "cpu", "cuda"] = "cpu"

    def build(self, ctx: BuildContext, at: str) -> Backend:
        return ctx.local(at, threads=self.threads, device=self.device)

    def short_form(self) -> str | None:
        return "local" if not self.model_fields_set else None

    @classmethod
    def _from_string(cls, value: str) -> dict[str, Any]:
        return {}

    @classmethod
    def _string_schema(cls) -> list[JsonSchemaValue]:
        return [{"const": "local"}]


@node_kind("remote")
class RemoteNode(Node):
    """A v2 server declared under ``remotes`` (its name, or ``{remote: name}``)."""

    leaf = True
    scalar = "name"
    name: str = Field(min_length=1)
    """A key of the file's ``remotes``."""

    def build(self, ctx: BuildContext, at: str) -> Backend:
        return ctx.remote(self.name, at)

    def short_form(self) -> str | None:
        return self.name if self.name != "local" else None

    @classmethod
    def _from_string(cls, value: str) -> dict[str, Any]:
        return {"name": value}

    @classmethod
    def _string_schema(cls) -> list[JsonSchemaValue]:
        return [{"type": "string", "minLength": 1, "not": {"const": "local"}}]


class BreakerSpec(_Strict):
    failure_threshold: int = Field(default=3, ge=1)
    """Consecutive failures that open the circuit (the primary is skipped)."""
    reset_after_s: float = Field(default=5.0, gt=0)
    """Seconds before a half-open probe of the primary."""

    def make(self) -> CircuitBreaker:
        from ..routing.resilience import CircuitBreaker

        return CircuitBreaker(
            failure_threshold=self.failure_threshold, reset_after_s=self.reset_after_s
        )


class _Fallback(Node):
    """Two children tried in ``order``: the first answers, the second when it cannot."""

    order: ClassVar[tuple[str, str]]
    """The two fields holding the children, in the order they are tried."""

    def build(self, ctx: BuildContext, at: str) -> Backend:
        from ..routing.fallback import Fallback

        first, second = (ctx.node(getattr(self, name), f"{at}.{name}") for name in self.order)
        spec: BreakerSpec | None = getattr(self, "breaker", None)
        breaker = spec.make() if spec else None
        return Fallback(first, second, breaker=breaker, name=self.kind)


@node_kind("prefer_local")
class PreferLocalNode(_Fallback):
    """``local`` answers; ``remote`` when the device cannot (not loaded, failed)."""

    order = ("local", "remote")
    local: AnyNode
    remote: AnyNode
    breaker: BreakerSpec | None = None


@node_kind("prefer_remote")
class PreferRemoteNode(_Fallback):
    """``remote`` answers; ``local`` while the link is down (a circuit breaker skips it)."""

    order = ("remote", "local")
    remote: AnyNode
    local: AnyNode
    breaker: BreakerSpec | None = Field(default_factory=BreakerSpec)


@node_kind("fallback")
class FallbackNode(_Fallback):
    """``primary`` answers; ``secondary`` when it fails with a retryable error."""

    order = ("primary", "secondary")
    primary: AnyNode
    secondary: AnyNode
    breaker: BreakerSpec | None = Field(default_factory=BreakerSpec)


@node_kind("cascade")
class CascadeNode(Node):
    """``small`` answers confident requests; the rest escalate to ``large``."""

    small: AnyNode
    large: AnyNode
    threshold: float = Field(ge=0, le=1)
    """Confidence at or above which the small model's answer stands (``edgecloud calibrate``)."""
    confidence: Literal["max_prob", "margin", "entropy"] = "max_prob"
    output: Name = "probabilities"
    """The output holding class probabilities [batch, classes]."""
    small_model: Name | None = None
    large_model: Name | None = None
    audit_rate: float = Field(default=0.0, ge=0, le=1)
    min_interval_s: float = Field(default=0.0, ge=0)
    defer_failed_escalations: bool = False
    """Queue escalations that could not be sent in the outbox, for later."""

    def build(self, ctx: BuildContext, at: str) -> Backend:
        from ..routing.cascade import Cascade

        defer: Callable[[InferRequest, InferResponse, str], None] | None = None
        if self.defer_failed_escalations:
            if ctx.outbox is None:
                raise ctx.error(f"{at}.defer_failed_escalations", "declare an outbox first")
            outbox = ctx.outbox

            def defer(request: InferRequest, _response: InferResponse, why: str) -> None:
                outbox.put(request, kind="escalation", why=why)  # "privacy": never sent

        return Cascade(
            ctx.node_for(self.small_model, self.small, f"{at}.small"),
            ctx.node_for(self.large_model, self.large, f"{at}.large"),
            threshold=self.threshold,
            output=self.output,
            confidence_measure=self.confidence,
            small_model=self.small_model,
            large_model=self.large_model,
            audit_rate=self.audit_rate,
            min_interval_s=self.min_interval_s,
            on_escalation_failure=defer,
        )

    def entry_models(self) -> frozenset[str] | None:
        """Asked by ``small_model`` (its answers are that model's or its escalation's)."""
        return frozenset({self.small_model}) if self.small_model else self.small.entry_models()


@node_kind("fastest")
class FastestNode(Node):
    """The path answering fastest now (latency estimates per path, optional hedging)."""

    paths: list[AnyNode] = Field(min_length=2)
    hedge: bool = False
    explore: float = Field(default=0.05, ge=0, le=1)

    def build(self, ctx: BuildContext, at: str) -> Backend:
        from ..routing.fastest import Fastest

        paths = [ctx.node(p, f"{at}.paths.{i}") for i, p in enumerate(self.paths)]
        return Fastest(paths, hedge=self.hedge, explore=self.explore)


@node_kind("guard")
class GuardNode(Node):
    """Privacy rules (sensitivity -> where data may go) applied before ``inner`` routes."""

    inner: AnyNode
    rules: dict[
        Literal["public", "personal", "restricted"], Literal["local", "features", "any"]
    ] = Field(default_factory=dict)

    def build(self, ctx: BuildContext, at: str) -> Backend:
        from ..routing.privacy import Guard

        rules = {str(k): v for k, v in self.rules.items()}
        return Guard(ctx.node(self.inner, f"{at}.inner"), rules=rules)


class LinkSpec(_Strict):
    rtt_ms: float = Field(ge=0)
    bandwidth_mbps: float = Field(gt=0)


@node_kind("split")
class SplitNode(Node):
    """The head of a partitioned model here, its activation to the tail on a remote."""

    leaf = True
    model: Name
    """The model to split; its profile comes from ``edgecloud split``."""
    remote: Name
    """The remote that serves the tails (``<model>.tail.<cut>``)."""
    profile: FilePath | None = None
    """Profile file (default: ``<repository>/<model>/split-profile.json``)."""
    threads: int | None = Field(default=None, ge=1)
    """Device threads for the head (default: the profile's)."""
    objective: Literal["latency", "energy"] = "latency"
    min_cosine: float = Field(default=0.99, ge=0, le=1)
    hysteresis: float = Field(default=0.2, ge=0, lt=1)
    explore: float = Field(default=0.02, ge=0, le=1)
    fixed: Name | None = None
    """Always use this split (``cut17`` or ``cut17/int8``) instead of planning."""
    link: LinkSpec | None = None
    """Initial link estimate; without it the server is pinged at start."""

    def build(self, ctx: BuildContext, at: str) -> Backend:
        from ..errors import ConfigError
        from ..split import SplitBackend, SplitProfile, default_profile_path
        from ..split.planner import Link

        path = ctx.path(self.profile) if self.profile else None
        try:
            profile = SplitProfile.load(path or default_profile_path(ctx.repository, self.model))
        except ConfigError as exc:
            raise ctx.error(f"{at}.profile", exc.message) from exc
        if profile.model != self.model:
            raise ctx.error(
                f"{at}.profile", f"the profile is of {profile.model!r}, not {self.model!r}"
            )
        threads = self.threads or profile.device_threads
        device = ctx.local(f"{at}.device", threads=threads, model=self.model)
        link = Link(self.link.rtt_ms / 1e3, self.link.bandwidth_mbps * 1e6) if self.link else None
        return SplitBackend(
            device,
            ctx.remote(self.remote, f"{at}.remote"),
            profile,
            link=link,
            objective=self.objective,
            min_cosine=self.min_cosine,
            hysteresis=self.hysteresis,
            explore=self.explore,
            fixed=self.fixed,
        )

    def entry_models(self) -> frozenset[str] | None:
        return frozenset({self.model})
