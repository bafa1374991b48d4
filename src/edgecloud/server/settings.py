"""Server settings: one typed object, overridable by ``EDGECLOUD_SERVER_*`` env vars."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError

__all__ = ["IDEMPOTENCY_WINDOW_S", "ServerSettings"]

ENV_PREFIX = "EDGECLOUD_SERVER_"

#: Default replay window of idempotency keys: 7 days, the default TTL of an
#: outbox item (``Outbox(ttl_s=...)``, ``OutboxSpec.ttl_s``).
IDEMPOTENCY_WINDOW_S = 7 * 24 * 3600.0


class ServerSettings(BaseModel):
    """How ``edgecloud serve`` listens, authenticates, limits and batches."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    """Interface to bind; loopback by default, so nothing is exposed by accident."""
    http_port: int = Field(default=8000, ge=0, le=65535)
    """HTTP/REST port (0 picks a free one)."""
    grpc_port: int | None = Field(default=8001, ge=0, le=65535)
    """gRPC port; None disables gRPC."""
    token: str | None = None
    """Bearer token every request except health checks must carry."""
    token_file: Path | None = None
    """File holding the bearer token (first line), instead of ``token``."""
    tls_cert: Path | None = None
    """PEM certificate: serve HTTPS (and gRPC over TLS) when given with ``tls_key``."""
    tls_key: Path | None = None
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger ones get 413."""
    request_timeout_s: float = Field(default=30.0, gt=0)
    """Longest an inference may take before the request gets 504."""
    idempotency_window_s: float = Field(default=IDEMPOTENCY_WINDOW_S, ge=0)
    """Seconds an answer stays replayable by its idempotency key, across restarts
    (0 ignores keys). Default 7 days: the outbox's default item TTL, so an item
    re-sent at any point of its life is not computed twice; keep it >= the TTL of
    every outbox that sends here."""
    idempotency_max_entries: int = Field(default=100_000, ge=1)
    """Most answers stored; beyond it the oldest go (counted in
    ``edgecloud_idempotency_evictions_total``)."""
    idempotency_max_bytes: int = Field(default=1024**3, ge=1024)
    """Most bytes of stored (encoded) answers; beyond it the oldest go, as above."""
    idempotency_db: Path | None = None
    """SQLite file of the idempotency store. None: one per model repository
    (``edgecloud serve``) or deployment file (``edgecloud edge``) in the state
    directory (``$EDGECLOUD_STATE_DIR``, else ``$XDG_STATE_HOME/edgecloud``, else
    ``~/.local/state/edgecloud``), so a restart finds it; ``:memory:`` keeps
    answers for this process's life only."""
    idempotency_synchronous: Literal["full", "normal"] = "full"
    """SQLite ``synchronous`` of the store: ``full`` keeps answers through a power
    loss (an fsync per keyed answer, ~0.4 ms), ``normal`` through a killed process only."""
    dynamic_batching: bool = True
    """Batch concurrent requests for every model with ``max_batch_size > 0``."""
    runners_per_model: int = Field(default=2, ge=1)
    """Batches of one model that may run at once."""
    worker_threads: int = Field(default=4, ge=1)
    """Threads running onnxruntime calls."""
    intra_op_threads: int = Field(default=1, ge=0)
    """onnxruntime threads per call; 0 lets onnxruntime decide (all cores). One
    suits small models with several calls in flight; large models want more."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where models run: ``auto`` uses CUDA through torch for versions carrying
    ``model.pt`` when a GPU is visible, onnxruntime on the CPU otherwise."""
    access_log: bool = False
    """One JSON line per request on the ``edgecloud.access`` logger."""
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    """On SIGTERM, how long in-flight requests may take to finish."""

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        return self

    def bearer_token(self) -> str | None:
        """The token from ``token`` or ``token_file``; ConfigError if the file is unreadable."""
        if self.token:
            return self.token
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(f"cannot read a token from {self.token_file}: {exc}") from exc
        if not token:
            raise ConfigError(f"token file {self.token_file} is empty")
        return token

    @classmethod
    def from_env(cls, **overrides: Any) -> ServerSettings:
        """Settings from ``EDGECLOUD_SERVER_<FIELD>`` variables, then ``overrides``."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = os.environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "settings"
            raise ConfigError(f"server setting {where}: {first['msg']}") from exc
