"""The update agent of a deployment file's ``updates:`` section, on the deployment's sessions."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends.local import LocalBackend
from ..errors import ConfigError
from .agent import AgentSettings, UpdateAgent
from .download import LinkPolicy
from .health import HealthPolicy
from .http_auth import resolve_token

if TYPE_CHECKING:
    from ..deployment import Deployment
    from ..deployment.spec import UpdatesSpec

__all__ = ["agent_for", "device_id"]


def device_id(configured: str | None) -> str:
    """The device's id: ``configured``, else ``EDGECLOUD_DEVICE_ID``, else the host name."""
    return configured or os.environ.get("EDGECLOUD_DEVICE_ID") or socket.gethostname()


def settings_of(spec: UpdatesSpec, token: str | None = None) -> AgentSettings:
    return AgentSettings(
        server=spec.server,
        models=tuple(spec.models),
        device_id=device_id(spec.device_id),
        group=spec.group,
        interval_s=spec.interval_s,
        bandwidth_bytes_s=spec.bandwidth_bytes_s,
        min_rate_bytes_s=spec.min_rate_bytes_s,
        rate_allowance_s=spec.rate_allowance_s,
        links=LinkPolicy(metered_ok=spec.metered_ok),
        health=HealthPolicy(
            min_accuracy=spec.min_accuracy,
            max_accuracy_drop=spec.max_accuracy_drop,
            min_cosine=spec.min_cosine,
            min_agreement=spec.min_agreement,
        ),
        watch_requests=spec.watch_requests,
        max_error_rate=spec.max_error_rate,
        token=token,
    )


def agent_for(deployment: Deployment, *, token_file: Path | None = None) -> UpdateAgent | None:
    """The agent the deployment's ``updates:`` asks for (None without one), serving through
    the deployment's own local session cache so a swap reaches its requests.

    The bearer token: ``token_file`` (``--token-file``), else ``EDGECLOUD_FLEET_TOKEN``,
    else ``updates.token_file`` (:func:`.http_auth.resolve_token`).

    ConfigError naming the file when ``root`` or a token file is missing or unreadable.
    """
    spec = deployment.spec.updates
    if spec is None:
        return None
    base = deployment.source.parent if deployment.source else Path.cwd()
    root = base / spec.root
    try:
        trust = root.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"updates.root: cannot read the fleet's root.json {root}: {exc.strerror or exc}; "
            "copy it from the directory of edgecloud fleet keys"
        ) from exc
    spec_token = base / spec.token_file if spec.token_file is not None else None
    token = resolve_token(token_file, spec_token)
    caches = [local for _, local in deployment.local_models.values()]
    caches += [n for n in deployment.nodes.values() if isinstance(n, LocalBackend)]
    unique = list({id(c): c for c in caches}.values())
    backend = unique[0] if unique else LocalBackend(deployment.repository)
    return UpdateAgent(
        deployment.repository,
        backend,
        settings_of(spec, token),
        state_dir=base / spec.state_dir,
        trust_root=trust,
        also=unique[1:],
    )
