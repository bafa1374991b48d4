"""The deployment file's top level: where models live, the remotes, the outbox, the tree."""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..backends.remote_url import MAX_TIMEOUT_S, URL_PATTERN, check_url
from ..errors import ConfigError
from ..routing.transforms import ModelInputs
from .fields import FilePath, Name
from .nodes import AnyNode

__all__ = ["DeploymentSpec", "OutboxSpec", "RemoteSpec", "UpdatesSpec"]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class RemoteSpec(_Strict):
    url: str = Field(json_schema_extra={"pattern": URL_PATTERN})
    """``http(s)://host[:port]`` or ``grpc(s)://host[:port]`` of a v2 server: port 1-65535,
    no path, query, fragment or credentials (``edgecloud.backends.remote_url``)."""
    timeout_s: float = Field(default=5.0, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)
    """Seconds before a request to this server is given up (a fallback can still answer);
    at most 3600."""
    token_env: Name | None = None
    """Environment variable holding the bearer token."""
    binary: bool = True
    """Send tensors in the binary-data extension (HTTP) rather than JSON lists."""

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        try:
            check_url(url)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return url


class OutboxSpec(_Strict):
    path: FilePath = "outbox.db"
    """SQLite file of the queue (relative to the deployment file)."""
    max_items: int = Field(default=10_000, ge=1)
    ttl_s: float = Field(default=7 * 24 * 3600, gt=0)
    """Seconds an item may wait for the link before it expires."""
    full_policy: Literal["reject", "drop_oldest"] = "reject"
    max_attempts: int = Field(default=8, ge=1)
    """Tries of an item the server keeps failing (5xx) before it is dead-lettered."""


class UpdatesSpec(_Strict):
    """Fleet updates of this device's models (``edgecloud.fleet.agent.UpdateAgent``)."""

    server: str = Field(json_schema_extra={"pattern": URL_PATTERN})
    """``http(s)://host[:port]`` of the fleet server (``edgecloud serve --fleet``): TUF
    metadata under ``/fleet/metadata/``, targets under ``/fleet/targets/``, telemetry to
    ``/fleet/telemetry``."""
    root: FilePath
    """The fleet's trusted ``root.json`` (from ``edgecloud fleet keys``), relative to the
    deployment file: the device installs only what keys it names signed."""
    models: list[Name] = Field(min_length=1)
    """Models of the repository the agent keeps current."""
    device_id: Name | None = None
    """This device's id in telemetry and canary selection; default ``EDGECLOUD_DEVICE_ID``,
    else the host name."""
    group: Name | None = None
    """Rollout group (``edgecloud fleet rollout --group``)."""
    token_file: FilePath | None = None
    """File holding the fleet server's bearer token (``edgecloud serve --token``), relative
    to the deployment file; sent on every metadata, target and telemetry request.
    ``EDGECLOUD_FLEET_TOKEN`` (or ``fleet agent --token-file``) overrides it."""
    state_dir: FilePath = "fleet-state"
    """The agent's state, TUF metadata, staging files and telemetry outbox."""
    interval_s: float = Field(default=300.0, gt=0, le=7 * 24 * 3600)
    """Seconds between checks (``edgecloud fleet check`` checks at once)."""
    bandwidth_bytes_s: float | None = Field(default=None, gt=0)
    """Average download rate cap, bytes/s (token bucket); unset: unlimited."""
    min_rate_bytes_s: float | None = Field(default=1024.0, gt=0, allow_inf_nan=False)
    """Slowest average rate a transfer may keep after ``rate_allowance_s`` before it is
    cut (a mirror dripping bytes holds the device otherwise); null: no floor. With
    ``bandwidth_bytes_s`` the floor is at most half of it."""
    rate_allowance_s: float = Field(default=30.0, ge=0, le=24 * 3600)
    """Seconds any transfer may take before ``min_rate_bytes_s`` applies."""
    metered_ok: bool = True
    """Download on a metered link; the link type is read from ``EDGECLOUD_LINK``
    (``cellular``, ``metered``, ``satellite`` are metered)."""
    first_check_s: float = Field(default=60.0, ge=0, le=24 * 3600)
    """``edgecloud edge`` on a device without a version of a managed model: seconds it keeps
    trying to install one before the readiness check (then it serves the models it has,
    or exits naming the fleet server's answer when it has none)."""
    watch_requests: int = Field(default=20, ge=0, le=1_000_000)
    """Requests after a swap whose error rate decides a rollback (0: none)."""
    max_error_rate: float = Field(default=0.1, ge=0, le=1)
    """Failed fraction of the watched requests above which the previous version returns."""
    min_accuracy: float = Field(default=0.0, ge=0, le=1)
    """Lowest accuracy on a version's labelled samples."""
    max_accuracy_drop: float = Field(default=0.02, ge=0, le=1)
    """Largest accuracy loss against the previous version on the same samples."""
    min_cosine: float = Field(default=0.99, ge=-1, le=1)
    """Lowest per-row cosine to the previous version's outputs (unlabelled samples)."""
    min_agreement: float = Field(default=0.9, ge=0, le=1)
    """Lowest share of samples on which a version serves the previous version's class names."""

    @field_validator("server")
    @classmethod
    def _url(cls, url: str) -> str:
        try:
            check_url(url)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if not url.startswith(("http://", "https://")):
            raise ValueError("the fleet server is reached over http(s)")
        return url


class DeploymentSpec(_Strict):
    """An edgecloud deployment file: a backend tree (``root``) and what it uses."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        defer_build=True,
        use_attribute_docstrings=True,
        title="edgecloud deployment",
    )

    repository: Name = "model-repo"
    """Model repository for local leaves (relative to the deployment file)."""
    remotes: dict[str, RemoteSpec] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"not": {"const": "local"}}}
    )
    """v2 servers by name; a node names one (``cloud`` or ``{remote: cloud}``)."""
    audit_log: FilePath | None = None
    """JSON-lines file recording every tensor sent to a remote."""
    outbox: OutboxSpec | None = None
    """Durable queue for what could not be sent (deferred escalations, filter events)."""
    models: dict[str, ModelInputs] = Field(default_factory=dict)
    """Per model, how its inputs are derived from the request (``edgecloud.routing.transforms``):
    applied at every leaf, so a cascade's small model may take fewer features, a smaller
    image or a shorter token window than the request carries."""
    updates: UpdatesSpec | None = None
    """Keep models current from a fleet server: signed updates, health check, rollback."""
    root: AnyNode
    """The tree: ``local``, a remote's name, or ``{kind: params}``."""

    @field_validator("remotes")
    @classmethod
    def _no_remote_named_local(cls, remotes: dict[str, RemoteSpec]) -> dict[str, RemoteSpec]:
        if "local" in remotes:
            raise ValueError("'local' names the device: give this remote another name")
        return remotes

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping of this spec: what was set, in the file's form and order."""
        out: dict[str, Any] = self.model_dump(mode="json", exclude_unset=True, exclude={"root"})
        out["root"] = self.root.dump()
        return out

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema (draft 2020-12) of the file, for editors (yaml-language-server)."""
        schema = cls.model_json_schema()
        return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}

    def to_yaml(self) -> str:
        """The deployment file (``edgecloud.load`` reads it back to an equal spec)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
