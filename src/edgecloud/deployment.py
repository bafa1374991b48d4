"""Deployments: a whole backend tree declared in YAML and built with ``edgecloud.load``.

::

    repository: model-repo            # models for local leaves
    remotes:
      cloud: {url: "http://127.0.0.1:8000", timeout_s: 2.0, token_env: EDGECLOUD_TOKEN}
    audit_log: audit.jsonl            # every tensor sent to a remote is recorded
    outbox: {path: outbox.db, max_items: 10000, full_policy: drop_oldest}
    root:
      guard:
        rules: {personal: local}
        inner:
          cascade:
            small: local
            large: {prefer_remote: {remote: cloud, local: local}}
            small_model: digits-small
            large_model: digits-large
            threshold: 0.72

A node is ``local``, the name of a remote, or a one-key mapping naming a
combinator: ``local``, ``remote``, ``prefer_local``, ``prefer_remote``,
``fallback``, ``fastest``, ``cascade``, ``guard``, ``split``. Mistakes are a ConfigError naming the
file and the YAML path (``root.guard.inner.cascade.threshold: ...``).
Relative paths are relative to the deployment file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._config_files import read_mapping, validate
from .backends.base import Backend
from .backends.local import LocalBackend
from .backends.remote import RemoteBackend
from .errors import ConfigError, EdgecloudError
from .repository import ModelRepository
from .routing.cascade import Cascade
from .routing.fallback import Fallback
from .routing.fastest import Fastest
from .routing.outbox import DrainResult, Outbox
from .routing.privacy import AuditLog, Guard
from .routing.resilience import Backoff, CircuitBreaker
from .routing.transforms import InputAdapter, ModelInputs, check_against
from .tensors import InferRequest, InferResponse

__all__ = ["Deployment", "DeploymentSpec", "load"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RemoteSpec(_Strict):
    url: str
    """``http(s)://host:port`` or ``grpc(s)://host:port`` of a v2 server."""
    timeout_s: float = Field(default=5.0, gt=0)
    token_env: str | None = None
    """Environment variable holding the bearer token."""
    binary: bool = True


class OutboxSpec(_Strict):
    path: str = "outbox.db"
    max_items: int = Field(default=10_000, ge=1)
    ttl_s: float = Field(default=7 * 24 * 3600, gt=0)
    full_policy: Literal["reject", "drop_oldest"] = "reject"
    max_attempts: int = Field(default=8, ge=1)
    """Tries of an item the server keeps failing (5xx) before it is dead-lettered."""


class LocalSpec(_Strict):
    threads: int | None = Field(default=None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "cpu"


class BreakerSpec(_Strict):
    failure_threshold: int = Field(default=3, ge=1)
    reset_after_s: float = Field(default=5.0, gt=0)


class CascadeSpec(_Strict):
    small: Any
    large: Any
    threshold: float = Field(ge=0, le=1)
    confidence: Literal["max_prob", "margin", "entropy"] = "max_prob"
    output: str = "probabilities"
    small_model: str | None = None
    large_model: str | None = None
    audit_rate: float = Field(default=0.0, ge=0, le=1)
    min_interval_s: float = Field(default=0.0, ge=0)
    defer_failed_escalations: bool = False
    """Queue escalations that could not be sent in the outbox, for later."""


class GuardSpec(_Strict):
    inner: Any
    rules: dict[
        Literal["public", "personal", "restricted"], Literal["local", "features", "any"]
    ] = Field(default_factory=dict)


class FastestSpec(_Strict):
    paths: list[Any] = Field(min_length=2)
    hedge: bool = False
    explore: float = Field(default=0.05, ge=0, le=1)


class LinkSpec(_Strict):
    rtt_ms: float = Field(ge=0)
    bandwidth_mbps: float = Field(gt=0)


class SplitSpec(_Strict):
    model: str
    """The model to split; its profile comes from ``edgecloud split``."""
    remote: str
    """The remote that serves the tails (``<model>.tail.<cut>``)."""
    profile: str | None = None
    """Profile file (default: ``<repository>/<model>/split-profile.json``)."""
    threads: int | None = Field(default=None, ge=1)
    """Device threads for the head (default: the profile's)."""
    objective: Literal["latency", "energy"] = "latency"
    min_cosine: float = Field(default=0.99, ge=0, le=1)
    hysteresis: float = Field(default=0.2, ge=0, lt=1)
    explore: float = Field(default=0.02, ge=0, le=1)
    fixed: str | None = None
    """Always use this split (``cut17`` or ``cut17/int8``) instead of planning."""
    link: LinkSpec | None = None
    """Initial link estimate; without it the server is pinged at start."""


class DeploymentSpec(_Strict):
    """The validated deployment file."""

    repository: str = "model-repo"
    remotes: dict[str, RemoteSpec] = Field(default_factory=dict)
    audit_log: str | None = None
    outbox: OutboxSpec | None = None
    models: dict[str, ModelInputs] = Field(default_factory=dict)
    """Per-model input derivations (``edgecloud.routing.transforms``): applied at every leaf."""
    root: Any


class Deployment(Backend):
    """A built deployment: its root backend plus the resources it owns."""

    def __init__(
        self,
        root: Backend,
        spec: DeploymentSpec,
        *,
        repository: ModelRepository,
        remotes: dict[str, RemoteBackend],
        outbox: Outbox | None,
        source: Path | None,
    ) -> None:
        self.root = root
        self.spec = spec
        self.repository = repository
        self.remotes = remotes
        """The remotes the tree uses, by name (one client each, shared by every node)."""
        self.outbox = outbox
        self.source = source
        self.name = f"deployment:{source.name if source else 'inline'}"
        self.local_models: dict[str, tuple[str, LocalBackend]] = {}
        """Models the file names for a local node: model -> (YAML path, the node)."""
        self.uses_local = False
        """Whether any node runs models on this device (then the repository must exist)."""
        self.cascades: list[tuple[str | None, str | None]] = []
        """(small_model, large_model) of every cascade: the sources of derived inputs."""

    @property
    def where(self) -> str:
        return str(self.source) if self.source else "deployment"

    def check_ready(self) -> None:
        """Load every model the file names for a local node, its files checked by sha256.

        Ready means every model this deployment will run on the device loads
        now: a repository that does not exist, a named model that is not in it,
        or one whose files are missing or corrupt fails here, not on the first
        request.

        Raises:
            ConfigError: ``<file>: <YAML path>: <what is missing>``, one line.
        """
        root = self.repository.root
        if self.uses_local and not root.is_dir():
            raise ConfigError(f"{self.where}: repository: {root} does not exist")
        names = self.repository.model_names()
        for model, (at, local) in self.local_models.items():
            if model not in names:
                raise ConfigError(
                    f"{self.where}: {at}: model {model!r} is not in {root} "
                    f"(models: {', '.join(names) or 'none'})"
                )
            try:
                local.load(model)
            except EdgecloudError as exc:
                raise ConfigError(f"{self.where}: {at}: {exc.message}") from exc
        check_against(self.spec.models, self.repository, pairs=self.cascades, where=self.where)

    def infer(self, request: InferRequest) -> InferResponse:
        return self.root.infer(request)

    async def infer_async(self, request: InferRequest) -> InferResponse:
        return await self.root.infer_async(request)

    def drain_outbox(self, backoff: Backoff | None = None) -> DrainResult | None:
        """Send what the outbox holds to the first remote the tree uses.

        The same client as the tree's (token, TLS, audit log included); None
        when there is no outbox or no remote.
        """
        if self.outbox is None or not self.remotes:
            return None
        remote = next(iter(self.remotes.values()))
        return self.outbox.drain(InputAdapter(remote, self.spec.models).infer, backoff=backoff)

    def close(self) -> None:
        self.root.close()
        if self.outbox is not None:
            self.outbox.close()


def load(source: str | os.PathLike[str] | dict[str, Any], *, ready: bool = False) -> Deployment:
    """Build the backend tree of a deployment file (or an already-parsed mapping).

    Models are loaded lazily, so a file can be checked where its models are
    not (``edgecloud advise`` output, say). ``ready=True`` (what ``edgecloud
    edge`` does) also runs :meth:`Deployment.check_ready` before returning:
    every model the file names for a local node is loaded now, its files
    checked by sha256, and a missing one is a ConfigError naming its YAML path.
    """
    path = None if isinstance(source, dict) else Path(source)
    raw = source if isinstance(source, dict) else _read(Path(source))
    where = str(path) if path else "deployment"
    spec = _validate(DeploymentSpec, raw, "", where)
    base = path.parent if path else Path.cwd()
    builder = _Builder(spec, base, where)
    root = builder.node(spec.root, "root")
    deployment = Deployment(
        root,
        spec,
        repository=builder.repository,
        remotes=builder.remotes,
        outbox=builder.outbox,
        source=path,
    )
    deployment.local_models = builder.local_models
    deployment.uses_local = bool(builder._locals)
    deployment.cascades = builder.cascades
    if ready:
        try:
            deployment.check_ready()
        except ConfigError:
            deployment.close()
            raise
    return deployment


def _read(path: Path) -> dict[str, Any]:
    return read_mapping(path, "deployment", "at least 'root'")


_validate = validate


class _Builder:
    def __init__(self, spec: DeploymentSpec, base: Path, where: str) -> None:
        self.spec = spec
        self.base = base
        self.where = where
        self.repository = ModelRepository(self._path(spec.repository))
        self.audit = AuditLog(self._path(spec.audit_log)) if spec.audit_log else None
        self.outbox = (
            Outbox(
                self._path(spec.outbox.path),
                max_items=spec.outbox.max_items,
                ttl_s=spec.outbox.ttl_s,
                full_policy=spec.outbox.full_policy,
                max_attempts=spec.outbox.max_attempts,
            )
            if spec.outbox
            else None
        )
        self._locals: dict[str, LocalBackend] = {}
        self._serving: list[str | None] = [None]
        """The model the node being built will be asked for (a cascade names them)."""
        self.local_models: dict[str, tuple[str, LocalBackend]] = {}
        self.remotes: dict[str, RemoteBackend] = {}
        self.cascades: list[tuple[str | None, str | None]] = []
        self.kinds: dict[str, Callable[[Any, str], Backend]] = {
            "local": self._local,
            "remote": self._remote_node,
            "prefer_local": self._prefer_local,
            "prefer_remote": self._prefer_remote,
            "fallback": self._fallback,
            "cascade": self._cascade,
            "fastest": self._fastest,
            "guard": self._guard,
            "split": self._split,
        }

    def _path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.base / path

    def node(self, raw: Any, at: str) -> Backend:
        if isinstance(raw, str):
            if raw == "local":
                return self._adapt(self._local({}, at))
            return self._adapt(self._remote(raw, at))
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ConfigError(
                f"{self.where}: {at}: a node is 'local', a remote's name, or one of "
                f"{{{', '.join(self.kinds)}: ...}}"
            )
        ((kind, params),) = raw.items()
        if kind not in self.kinds:
            raise ConfigError(
                f"{self.where}: {at}: unknown node {kind!r}; use one of {', '.join(self.kinds)}"
            )
        built = self.kinds[kind](params if params is not None else {}, f"{at}.{kind}")
        return self._adapt(built) if kind in ("local", "remote", "split") else built

    def _adapt(self, backend: Backend) -> Backend:
        """Every leaf: its requests' inputs derived per model (``models:``), when declared."""
        return InputAdapter(backend, self.spec.models) if self.spec.models else backend

    def _local(self, params: Any, at: str) -> Backend:
        spec = _validate(LocalSpec, params, at, self.where)
        key = f"{spec.threads}/{spec.device}"
        if key not in self._locals:  # one session cache per configuration
            self._locals[key] = LocalBackend(
                self.repository, intra_op_threads=spec.threads, device=spec.device
            )
        model = self._serving[-1]
        if model is not None:
            self.local_models.setdefault(model, (at, self._locals[key]))
        return self._locals[key]

    def _node_for(self, model: str | None, raw: Any, at: str) -> Backend:
        """Build ``raw`` knowing the requests it gets ask for ``model`` (None: the caller's)."""
        self._serving.append(model or self._serving[-1])
        try:
            return self.node(raw, at)
        finally:
            self._serving.pop()

    def _remote(self, name: str, at: str) -> Backend:
        if name in self.remotes:
            return self.remotes[name]
        spec = self.spec.remotes.get(name)
        if spec is None:
            known = ", ".join(self.spec.remotes) or "none declared"
            raise ConfigError(f"{self.where}: {at}: unknown remote {name!r} (remotes: {known})")
        token = os.environ.get(spec.token_env) if spec.token_env else None
        if spec.token_env and token is None:
            raise ConfigError(
                f"{self.where}: remotes.{name}.token_env: ${spec.token_env} is not set"
            )
        remote = RemoteBackend(
            spec.url, token=token, timeout=spec.timeout_s, binary=spec.binary, audit=self.audit
        )
        self.remotes[name] = remote
        return remote

    def _remote_node(self, params: Any, at: str) -> Backend:
        if not isinstance(params, str):
            raise ConfigError(f"{self.where}: {at}: give the name of a remote")
        return self._remote(params, at)

    def _pair(self, params: Any, at: str, first: str, second: str) -> tuple[Backend, Backend]:
        if not isinstance(params, dict) or set(params) - {first, second, "breaker"}:
            raise ConfigError(
                f"{self.where}: {at}: needs {first} and {second} (and optionally breaker)"
            )
        for key in (first, second):
            if key not in params:
                raise ConfigError(f"{self.where}: {at}.{key}: missing")
        return self.node(params[first], f"{at}.{first}"), self.node(
            params[second], f"{at}.{second}"
        )

    def _breaker(self, params: Any, at: str) -> CircuitBreaker:
        spec = _validate(BreakerSpec, params.get("breaker") or {}, f"{at}.breaker", self.where)
        return CircuitBreaker(
            failure_threshold=spec.failure_threshold, reset_after_s=spec.reset_after_s
        )

    def _prefer_local(self, params: Any, at: str) -> Backend:
        local, remote = self._pair(params, at, "local", "remote")
        return Fallback(local, remote, name="prefer_local")

    def _prefer_remote(self, params: Any, at: str) -> Backend:
        remote, local = self._pair(params, at, "remote", "local")
        return Fallback(remote, local, breaker=self._breaker(params, at), name="prefer_remote")

    def _fallback(self, params: Any, at: str) -> Backend:
        primary, secondary = self._pair(params, at, "primary", "secondary")
        return Fallback(primary, secondary, breaker=self._breaker(params, at))

    def _cascade(self, params: Any, at: str) -> Backend:
        spec = _validate(CascadeSpec, params, at, self.where)
        self.cascades.append((spec.small_model, spec.large_model))
        defer: Callable[[InferRequest, InferResponse, str], None] | None = None
        if spec.defer_failed_escalations:
            if self.outbox is None:
                raise ConfigError(
                    f"{self.where}: {at}.defer_failed_escalations: declare an outbox first"
                )
            outbox = self.outbox

            def defer(request: InferRequest, _response: InferResponse, why: str) -> None:
                outbox.put(request, kind="escalation", why=why)  # "privacy": never sent

        return Cascade(
            self._node_for(spec.small_model, spec.small, f"{at}.small"),
            self._node_for(spec.large_model, spec.large, f"{at}.large"),
            threshold=spec.threshold,
            output=spec.output,
            confidence_measure=spec.confidence,
            small_model=spec.small_model,
            large_model=spec.large_model,
            audit_rate=spec.audit_rate,
            min_interval_s=spec.min_interval_s,
            on_escalation_failure=defer,
        )

    def _fastest(self, params: Any, at: str) -> Backend:
        spec = _validate(FastestSpec, params, at, self.where)
        paths = [self.node(p, f"{at}.paths.{i}") for i, p in enumerate(spec.paths)]
        return Fastest(paths, hedge=spec.hedge, explore=spec.explore)

    def _guard(self, params: Any, at: str) -> Backend:
        spec = _validate(GuardSpec, params, at, self.where)
        return Guard(
            self.node(spec.inner, f"{at}.inner"), rules={str(k): v for k, v in spec.rules.items()}
        )

    def _split(self, params: Any, at: str) -> Backend:
        from .split import SplitBackend, SplitProfile, default_profile_path
        from .split.planner import Link

        spec = _validate(SplitSpec, params, at, self.where)
        path = self._path(spec.profile) if spec.profile else None
        try:
            profile = SplitProfile.load(path or default_profile_path(self.repository, spec.model))
        except ConfigError as exc:
            raise ConfigError(f"{self.where}: {at}.profile: {exc.message}") from exc
        if profile.model != spec.model:
            raise ConfigError(
                f"{self.where}: {at}.profile: the profile is of {profile.model!r}, "
                f"not {spec.model!r}"
            )
        threads = spec.threads or profile.device_threads
        self._serving.append(spec.model)
        try:
            device = self._local({"threads": threads}, f"{at}.device")
        finally:
            self._serving.pop()
        assert isinstance(device, LocalBackend)
        link = Link(spec.link.rtt_ms / 1e3, spec.link.bandwidth_mbps * 1e6) if spec.link else None
        return SplitBackend(
            device,
            self._remote(spec.remote, f"{at}.remote"),
            profile,
            link=link,
            objective=spec.objective,
            min_cosine=spec.min_cosine,
            hysteresis=spec.hysteresis,
            explore=spec.explore,
            fixed=spec.fixed,
        )
