"""The recommendation as a deployment file in the router's format (``edgecloud.load``),
and the settings of the server it sends to (``server.env``).

The two are written together because they keep one promise together: an
outbox item re-sent at any point of its life (``outbox.ttl_s``) must find the
server's record of its key, so the server's ``idempotency_window_s`` is at
least the outbox TTL.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from ..server.settings import ENV_PREFIX, IDEMPOTENCY_WINDOW_S
from .decide import Candidate, Decision

__all__ = ["deployment_for", "deployment_yaml", "server_env", "server_settings_for"]

#: How long a queued item may wait for the link (the outbox's default TTL).
OUTBOX_TTL_S = 7 * 24 * 3600.0


def _outbox(decision: Decision) -> dict[str, Any]:
    """An outbox big enough for ten typical outages at the mean request rate."""
    w = decision.workload
    per_outage = w.application.requests_per_s * w.network.typical_outage_min * 60
    return {
        "path": "outbox.db",
        "max_items": max(1000, math.ceil(per_outage * 10)),
        "ttl_s": OUTBOX_TTL_S,
        "full_policy": "reject",
    }


def deployment_for(decision: Decision, candidate: Candidate | None = None) -> dict[str, Any]:
    """A deployment mapping that runs ``candidate`` (default: the recommendation)."""
    c = candidate or decision.recommended
    if c is None:
        raise ValueError("no feasible option: there is nothing to deploy")
    w = decision.workload
    remote_spec = {"url": w.remote_url, "timeout_s": _timeout_s(decision)}
    out: dict[str, Any] = {"repository": "model-repo"}
    if c.strategy == "local":
        if c.parameters.get("periodic_sync"):
            out["outbox"] = _outbox(decision)
        out["root"] = "local"
        return out
    out["remotes"] = {"cloud": remote_spec}
    out["audit_log"] = "audit.jsonl"
    breaker = {"failure_threshold": 3, "reset_after_s": 5.0}
    if c.strategy == "remote":
        root: Any = "cloud"
    elif c.strategy == "prefer_remote":
        root = {"prefer_remote": {"remote": "cloud", "local": "local", "breaker": breaker}}
    elif c.strategy == "cascade":
        out["outbox"] = _outbox(decision)
        root = {
            "cascade": {
                "small": "local",
                "large": "cloud",
                "small_model": c.parameters["small_model"],
                "large_model": c.parameters["large_model"],
                "threshold": 0.9,
                "defer_failed_escalations": True,
            }
        }
    elif c.strategy == "split":
        link = {"rtt_ms": w.network.rtt_ms, "bandwidth_mbps": w.network.uplink_mbps}
        split = {"split": {"model": c.parameters["model"], "remote": "cloud", "link": link}}
        root = {
            "fallback": {  # personal data: only the activation may leave the device
                "primary": {"guard": {"rules": {"personal": "features"}, "inner": split}},
                "secondary": "local",
                "breaker": breaker,
            }
        }
    else:  # filter_then_forward: edgecloud.filter.Filter(trigger, deployment, outbox=...)
        out["outbox"] = _outbox(decision)  # events wait here while the link is down
        root = "cloud"
    out["root"] = root
    return out


def server_settings_for(
    decision: Decision, candidate: Candidate | None = None
) -> dict[str, Any] | None:
    """``ServerSettings`` fields for the server the deployment sends to (None: it sends
    nothing): an idempotency window no shorter than the outbox's TTL."""
    deployment = deployment_for(decision, candidate)
    if "remotes" not in deployment and "outbox" not in deployment:
        return None
    ttl_s = float(deployment.get("outbox", {}).get("ttl_s", 0.0))
    return {"idempotency_window_s": max(IDEMPOTENCY_WINDOW_S, ttl_s)}


def server_env(decision: Decision, candidate: Candidate | None = None) -> str | None:
    """``server.env``: the settings above as ``EDGECLOUD_SERVER_*`` lines (for
    ``env $(cat server.env) edgecloud serve``, systemd's EnvironmentFile, docker --env-file)."""
    settings = server_settings_for(decision, candidate)
    if settings is None:
        return None
    lines = [
        f"# Settings for `edgecloud serve` on {decision.workload.remote_url}, written by "
        "`edgecloud advise` with deployment.yaml:",
        "# answers stay replayable by idempotency key for at least the outbox's ttl_s.",
        *(f"{ENV_PREFIX}{name.upper()}={value:g}" for name, value in settings.items()),
    ]
    return "\n".join(lines) + "\n"


def _timeout_s(decision: Decision) -> float:
    """Give up on the server at the p99 target (so a fallback can still answer)."""
    return round(max(0.05, decision.workload.application.latency_p99_ms / 1000), 3)


def deployment_yaml(decision: Decision, candidate: Candidate | None = None) -> str:
    c = candidate or decision.recommended
    assert c is not None
    header = [
        f"# edgecloud deployment for workload {decision.workload.name!r}: {c.title}",
        f"# {c.summary}",
        "# Generated by `edgecloud advise`; load with edgecloud.load() or `edgecloud edge -d`.",
    ]
    if server_settings_for(decision, c) is not None:
        header.append("# Run the server with server.env (idempotency window >= outbox ttl_s).")
    if c.strategy == "cascade":
        header.append(
            "# Calibrate the threshold: edgecloud calibrate -d deployment.yaml "
            "--data val.npz --target-accuracy 0.995"
        )
    if c.strategy == "split":
        header.append(f"# First: edgecloud split {c.parameters['model']} (head/tail versions and "
                      "the profile this node plans with); serve the tails")  # fmt: skip
    if c.strategy == "filter_then_forward":
        header.append("# Events come from the on-device trigger: edgecloud.filter.Filter(trigger, "
                      "edgecloud.load(this), outbox=deployment.outbox)")  # fmt: skip
    body = yaml.safe_dump(deployment_for(decision, c), sort_keys=False)
    return "\n".join(header) + "\n" + body
