"""Server settings: one typed object, from CLI flags, environment, a settings file.

Every field can come from four sources; the first that gives it wins:

1. a flag of ``edgecloud serve`` / ``edgecloud edge`` (only flags given on
   the command line count; an option left out does not hide the sources below);
2. the environment variable ``EDGECLOUD_SERVER_<FIELD>`` (``EDGECLOUD_SERVER_HTTP_PORT``);
3. the settings file given with ``--config`` (YAML, a mapping of field names);
4. the default declared here.

Settings that come together resolve by *source*, not field by field
(:data:`GROUPS`): ``token`` / ``token_file`` are two ways of giving one token,
``tls_cert`` / ``tls_key`` one TLS identity. The highest-precedence source that
gives any member of a group gives the whole group; the members the lower
sources give are ignored (a ``--token-file`` flag replaces a ``token`` in the
file: the old token stops working). Two alternatives from one source
(``token`` and ``token_file`` both in the file) are a ConfigError naming both,
and so is half a pair (``--tls-cert`` on the command line, ``tls_key`` only in
the file).

A variable that starts with ``EDGECLOUD_SERVER_`` but names no setting (a
typo like ``EDGECLOUD_SERVER_HTTP_PROT``) is a ConfigError, as an unknown key
in the file is: the prefix is edgecloud's, so nothing else sets such variables.
"""

from __future__ import annotations

import difflib
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .._config_files import read_mapping
from ..errors import ConfigError

__all__ = ["ENV_PREFIX", "GROUPS", "IDEMPOTENCY_WINDOW_S", "ServerSettings"]

ENV_PREFIX = "EDGECLOUD_SERVER_"

#: Settings that resolve together, by the precedence of the source that gives
#: them: (members, alternatives). Alternatives are ways of giving one value
#: (at most one per source); otherwise the members are a pair given together.
GROUPS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("token", "token_file"), True),
    (("tls_cert", "tls_key"), False),
)

#: Default replay window of idempotency keys: 7 days, the default TTL of an
#: outbox item (``Outbox(ttl_s=...)``, ``OutboxSpec.ttl_s``).
IDEMPOTENCY_WINDOW_S = 7 * 24 * 3600.0


class ServerSettings(BaseModel):
    """How ``edgecloud serve`` listens, authenticates, limits and batches.

    Precedence, highest first: CLI flag > ``EDGECLOUD_SERVER_<FIELD>``
    environment variable > settings file (``--config``) > default; see
    :meth:`resolve`.
    """

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    """Interface to bind; loopback by default, so nothing is exposed by accident."""
    http_port: int = Field(default=8000, ge=0, le=65535)
    """HTTP/REST port (0 picks a free one)."""
    grpc_port: int | None = Field(default=8001, ge=0, le=65535)
    """gRPC port; None (or any negative number, as ``--grpc-port -1``) disables gRPC."""
    token: str | None = None
    """Bearer token every request except health checks must carry (or ``token_file``:
    the two resolve together, by the precedence of the source that gives one)."""
    token_file: Path | None = None
    """File holding the bearer token (first line), instead of ``token``."""
    tls_cert: Path | None = None
    """PEM certificate: serve HTTPS (and gRPC over TLS) when given with ``tls_key``."""
    tls_key: Path | None = None
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger ones get 413."""
    max_json_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest JSON part of an infer request: the whole body of a JSON request,
    the JSON header of a binary-extension one (its binary tensors count only
    against ``max_request_bytes``); larger gets 413 suggesting the binary tensor
    data extension. Parsed JSON costs up to ~36x its size in Python objects (a
    list per ``[]``, an int per ``0,``): the worst case measured, an 8 MiB body of
    ``[[]],[[]],...``, raises the server's peak RSS by 287 MiB (``[],`` 31x,
    ``0,`` 15x); so the worst case is about 36 x this limit, per concurrent
    request. tests/adversarial/test_decode_cost.py holds it under 48x. Checked
    from Content-Length before reading and while reading."""
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
    """Batch concurrent requests for every model with ``max_batch_size > 0`` (whose
    rows must then be independent: see ``ModelConfig.max_batch_size``)."""
    runners_per_model: int = Field(default=2, ge=1)
    """Batches of one model that may run at once in the whole server: with
    ``workers`` N each worker is guaranteed ``runners_per_model // N`` (at least
    1: with fewer runners than workers, each worker still runs one), so N
    workers under load run no more batches at once than one process would
    (``workers.worker_share``); a worker runs more, up to this number (and
    ``worker_threads``), only while the other workers leave a core free
    (``cores``)."""
    worker_threads: int = Field(default=4, ge=1)
    """Threads running onnxruntime calls."""
    intra_op_threads: int = Field(default=1, ge=0)
    """onnxruntime intra-op threads per call in each worker; 0 means all available
    cores, split among the workers (``cores // workers`` each, at least 1; one
    worker: onnxruntime's own default, all cores). One suits small models with
    several calls in flight; large models want more."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where models run: ``auto`` uses CUDA through torch for versions carrying
    ``model.pt`` when a GPU is visible, onnxruntime on the CPU otherwise."""
    access_log: bool = False
    """One JSON line per request on the ``edgecloud.access`` logger."""
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    """On SIGTERM, how long in-flight requests may take to finish."""
    fleet: Path | None = None
    """Update repository (``edgecloud fleet keys``) served read-only at
    ``/fleet/metadata/`` and ``/fleet/targets/`` with HTTP Range; None: not served."""
    fleet_keys: Path | None = None
    """Keys directory whose ``timestamp.pem`` (the online key) re-signs the served
    repository's timestamp when half its validity has passed; needs ``fleet``."""
    model_control: Literal["none", "poll", "explicit"] = "none"
    """Triton's model control modes (``--model-control-mode``): ``none`` loads every
    model at start and never changes them; ``poll`` rescans the repository every
    ``poll_interval_s`` and loads new, changed (sha256) and removed versions;
    ``explicit`` loads only ``load_models`` at start and others when a client asks
    (``POST /v2/repository/models/{m}/load``). See :mod:`.model_control`."""
    poll_interval_s: float = Field(default=5.0, gt=0, le=86400)
    """Seconds between repository scans in ``poll`` mode (Triton's
    ``--repository-poll-secs``); given in another mode, the server refuses to
    start (nothing is scanned). In ``explicit`` mode with several workers they
    apply each other's loads and unloads within ``model_control.CONTROL_TICK_S``,
    whatever this is."""
    load_models: list[str] = Field(default_factory=list)
    """Models to load at start in ``explicit`` mode (Triton's ``--load-model``;
    ``*`` loads all)."""
    workers: int | None = Field(default=None, ge=1)
    """Server processes sharing the listening ports (``edgecloud serve`` only; the
    edge gateway is one process). None: one per core this process may run on
    (``os.sched_getaffinity``). 1 is a single process with no supervisor; more
    start a supervisor that restarts a worker that dies (:mod:`.workers`)."""

    @field_validator("grpc_port", mode="before")
    @classmethod
    def _negative_disables(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        try:
            return None if int(value) < 0 else value
        except (TypeError, ValueError):
            return value  # pydantic reports it

    @field_validator("load_models", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """``EDGECLOUD_SERVER_LOAD_MODELS=a,b`` (the environment gives one string)."""
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("token and token_file are two ways of giving the token: give one")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.fleet_keys is not None and self.fleet is None:
            raise ValueError("fleet_keys re-signs the timestamp of fleet: give fleet too")
        if self.grpc_port is not None and self.grpc_port == self.http_port != 0:
            raise ValueError(f"http_port and grpc_port are both {self.http_port}; give two ports")
        return self

    def bearer_token(self) -> str | None:
        """The token from ``token`` or ``token_file`` (never both: the model refuses
        that); ConfigError if the file is unreadable."""
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
    def resolve(
        cls,
        *,
        file: Path | None = None,
        cli: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> ServerSettings:
        """Settings from every source: ``cli`` > ``environ`` > ``file`` > ``defaults``
        > the field defaults.

        ``cli`` holds the flags given (None means "not given" and is skipped);
        ``environ`` defaults to ``os.environ``, read for ``EDGECLOUD_SERVER_<FIELD>``;
        ``defaults`` are a command's own (the gateway's port 8080). The
        members of each of :data:`GROUPS` come from one source: the highest
        that gives any of them.

        Raises:
            ConfigError: a bad value (naming the field and where it came from),
                two alternatives from one source, half a pair above the other
                half, or an ``EDGECLOUD_SERVER_*`` variable that names no field.
        """
        layers: list[_Layer] = [_Layer.of("defaults", defaults or {})]
        if file is not None:
            raw = read_mapping(file, "server settings", "server setting names as keys")
            layers.append(_Layer.of(f"settings file {file}", raw))
        layers.append(cls._environment(os.environ if environ is None else environ))
        given = {name: value for name, value in (cli or {}).items() if value is not None}
        layers.append(_Layer.of("command line", given))
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for layer in _by_group(layers):
            values.update(layer.values)
            origin.update(layer.sources)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            if not first["loc"]:  # a check of several fields: where each came from
                named = [f"{n} from the {origin[n]}" for n in origin if n in str(first["msg"])]
                detail = f" ({'; '.join(named)})" if named else ""
                raise ConfigError(f"server settings: {first['msg']}{detail}") from exc
            where = ".".join(str(p) for p in first["loc"])
            source = origin.get(str(first["loc"][0]))
            detail = f" (from the {source})" if source else ""
            raise ConfigError(f"server setting {where}{detail}: {first['msg']}") from exc

    @classmethod
    def _environment(cls, environ: Mapping[str, str]) -> _Layer:
        """The ``EDGECLOUD_SERVER_<FIELD>`` variables as one source.

        ConfigError for a variable with the prefix that names no field (the
        nearest field's variable suggested), as the file's unknown keys are.
        """
        layer = _Layer("environment", {}, {})
        for variable in sorted(environ):
            if not variable.startswith(ENV_PREFIX):
                continue
            suffix = variable[len(ENV_PREFIX) :]
            name = suffix.lower()
            if name not in cls.model_fields or suffix != name.upper():
                near = difflib.get_close_matches(name, list(cls.model_fields), n=1)
                hint = f"did you mean {ENV_PREFIX}{near[0].upper()}? " if near else ""
                raise ConfigError(
                    f"environment variable {variable} names no server setting; {hint}"
                    f"unset it or fix its name (settings: {', '.join(cls.model_fields)})"
                )
            layer.values[name] = environ[variable]
            layer.sources[name] = f"environment variable {variable}"
        return layer

    @classmethod
    def from_env(cls, **overrides: Any) -> ServerSettings:
        """Settings from ``EDGECLOUD_SERVER_<FIELD>`` variables, then ``overrides``
        (None values skipped): :meth:`resolve` without a settings file."""
        return cls.resolve(cli=overrides)

    def check_tls(self) -> None:
        """ConfigError unless ``tls_cert`` and ``tls_key`` (when given) load as a PEM pair.

        Checked before anything listens, so a missing or mismatched file is one
        clear line rather than a failure inside uvicorn or grpc.
        """
        if self.tls_cert is None or self.tls_key is None:
            return
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot serve TLS with certificate {self.tls_cert} and key {self.tls_key}: "
                f"{exc.strerror or exc}; give a readable PEM certificate and its private key"
            ) from None

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON-ready values, the bearer token masked (``--print-config``)."""
        values = self.model_dump(mode="json")
        if values.get("token"):
            values["token"] = "***"
        return values


@dataclass
class _Layer:
    """One source of settings: its name, the values it gives, where each came from."""

    name: str
    values: dict[str, Any]
    sources: dict[str, str]

    @classmethod
    def of(cls, name: str, values: Mapping[str, Any]) -> _Layer:
        return cls(name, dict(values), dict.fromkeys(values, name))

    def without(self, names: tuple[str, ...]) -> _Layer:
        keep = {k: v for k, v in self.values.items() if k not in names}
        return _Layer(self.name, keep, {k: self.sources[k] for k in keep})


def _by_group(layers: list[_Layer]) -> list[_Layer]:
    """``layers`` (lowest precedence first) with each :data:`GROUPS` member kept
    only in the highest layer that gives any member of its group.

    Raises:
        ConfigError: one source gives two alternatives (``token`` and ``token_file``).
    """
    for members, alternatives in GROUPS:
        winner = next((layer for layer in reversed(layers) if _gives(layer, members)), None)
        if winner is None:
            continue
        both = _gives(winner, members)
        if alternatives and len(both) > 1:
            named = " and ".join(f"{m} (from the {winner.sources[m]})" for m in both)
            raise ConfigError(
                f"server settings {named} are two ways of giving one value: give one of them"
            )
        if not alternatives and len(both) < len(members):
            missing = [m for m in members if m not in winner.values]
            lower = [layer.name for layer in layers if _gives(layer, tuple(missing))]
            if lower:
                raise ConfigError(
                    f"server setting {both[0]} comes from the {winner.sources[both[0]]} but "
                    f"{' and '.join(missing)} only from the {lower[-1]}; "
                    f"{' and '.join(members)} go together: give them from one source"
                )
        layers = [layer if layer is winner else layer.without(members) for layer in layers]
    return layers


def _gives(layer: _Layer, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` ``layer`` gives a value for (a YAML ``null`` gives none)."""
    return [name for name in names if layer.values.get(name) is not None]
