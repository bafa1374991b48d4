"""The recommendation as a typed deployment (``edgecloud.load`` runs it as written),
and the settings of the server it sends to (``server.env``).

Every strategy :func:`~edgecloud.advisor.decide.decide` can recommend maps to
one tree of typed nodes (:mod:`edgecloud.deployment`), so every
recommendation — ``filter_then_forward`` included — is a runnable file:

============================  ===================================================
strategy                      root node
============================  ===================================================
``local``                     ``local`` (an outbox with periodic sync)
``remote``                    ``cloud``
``prefer_remote``             ``prefer_remote: {remote: cloud, local: local}``
``cascade``                   ``cascade: {small: local, large: cloud, ...}``
``split``                     ``fallback: {primary: guard(split), secondary: local}``
``filter_then_forward``       ``filter: {trigger: ..., inner: cloud, model: ...}``
============================  ===================================================

The deployment and the server settings are written together because they keep
one promise together: an outbox item re-sent at any point of its life
(``outbox.ttl_s``) must find the server's record of its key, so the server's
``idempotency_window_s`` is at least the outbox TTL.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..deployment import (
    BreakerSpec,
    CascadeNode,
    DeploymentSpec,
    FallbackNode,
    FilterNode,
    GuardNode,
    LinkSpec,
    LocalNode,
    Node,
    OutboxSpec,
    PreferRemoteNode,
    RemoteNode,
    RemoteSpec,
    SplitNode,
)
from ..server.settings import ENV_PREFIX, IDEMPOTENCY_WINDOW_S
from .decide import Candidate, Decision, Strategy

__all__ = ["ROOTS", "deployment_for", "deployment_yaml", "server_env", "server_settings_for"]

#: How long a queued item may wait for the link (the outbox's default TTL).
OUTBOX_TTL_S = 7 * 24 * 3600.0
#: The name the deployment gives the workload's server.
REMOTE = "cloud"
#: The JSON Schema written beside deployment.yaml (``edgecloud schema deployment``).
SCHEMA_FILE = "deployment.schema.json"


@dataclass(frozen=True)
class _Root:
    """A strategy's tree, and what it needs around it."""

    node: Node
    queues: bool
    """Something waits in an outbox (deferred escalations, events, periodic sync)."""
    remote: bool = True
    comments: tuple[str, ...] = ()
    """Steps the user takes before running it, for the file's header."""


REPOSITORY = "model-repo"
"""The repository a written deployment names unless told (relative: beside the file)."""


def _breaker() -> BreakerSpec:
    return BreakerSpec(failure_threshold=3, reset_after_s=5.0)


def _local(decision: Decision, c: Candidate) -> _Root:
    return _Root(LocalNode(), queues=bool(c.parameters.get("periodic_sync")), remote=False)


def _remote(decision: Decision, c: Candidate) -> _Root:
    return _Root(RemoteNode(name=REMOTE), queues=False)


def _prefer_remote(decision: Decision, c: Candidate) -> _Root:
    node = PreferRemoteNode(remote=RemoteNode(name=REMOTE), local=LocalNode(), breaker=_breaker())
    return _Root(node, queues=False)


def _cascade(decision: Decision, c: Candidate) -> _Root:
    node = CascadeNode(
        small=LocalNode(),
        large=RemoteNode(name=REMOTE),
        small_model=c.parameters["small_model"],
        large_model=c.parameters["large_model"],
        threshold=0.9,
        defer_failed_escalations=True,
    )
    hint = ("Calibrate the threshold: edgecloud calibrate -d deployment.yaml --data val.npz "
            "--target-accuracy 0.995")  # fmt: skip
    return _Root(node, queues=True, comments=(hint,))


def _split(decision: Decision, c: Candidate) -> _Root:
    net = decision.workload.network
    model = c.parameters["model"]
    split = SplitNode(
        model=model,
        remote=REMOTE,
        link=LinkSpec(rtt_ms=net.rtt_ms, bandwidth_mbps=net.uplink_mbps),
    )
    node = FallbackNode(  # personal data: only the activation may leave the device
        primary=GuardNode(rules={"personal": "features"}, inner=split),
        secondary=LocalNode(),
        breaker=_breaker(),
    )
    hint = (f"First: edgecloud split {model} (head/tail versions and the profile this node "
            "plans with); serve the tails")  # fmt: skip
    return _Root(node, queues=False, comments=(hint,))


def _filter_then_forward(decision: Decision, c: Candidate) -> _Root:
    w = decision.workload
    node = FilterNode(trigger=w.hybrid.trigger, inner=RemoteNode(name=REMOTE), model=w.model.name)
    hint = (f"Each request is one chunk of the stream; its events go to {w.model.name} on the "
            "server (queued in the outbox while the link is down)")  # fmt: skip
    return _Root(node, queues=True, comments=(hint,))


#: The tree of every strategy ``decide`` may recommend (one entry per ``Strategy``).
ROOTS: dict[Strategy, Callable[[Decision, Candidate], _Root]] = {
    "local": _local,
    "remote": _remote,
    "prefer_remote": _prefer_remote,
    "cascade": _cascade,
    "split": _split,
    "filter_then_forward": _filter_then_forward,
}


def _outbox(decision: Decision) -> OutboxSpec:
    """An outbox big enough for ten typical outages at the mean request rate."""
    w = decision.workload
    per_outage = w.application.requests_per_s * w.network.typical_outage_min * 60
    return OutboxSpec(
        path="outbox.db",
        max_items=max(1000, math.ceil(per_outage * 10)),
        ttl_s=OUTBOX_TTL_S,
        full_policy="reject",
    )


def _chosen(decision: Decision, candidate: Candidate | None) -> Candidate:
    c = candidate or decision.recommended
    if c is None:
        raise ValueError("no feasible option: there is nothing to deploy")
    return c


def _plan(
    decision: Decision, candidate: Candidate | None, repository: str = REPOSITORY
) -> tuple[DeploymentSpec, _Root]:
    c = _chosen(decision, candidate)
    root = ROOTS[c.strategy](decision, c)
    fields: dict[str, Any] = {"repository": repository}
    if root.remote:
        url = decision.workload.remote_url
        fields["remotes"] = {REMOTE: RemoteSpec(url=url, timeout_s=_timeout_s(decision))}
        fields["audit_log"] = "audit.jsonl"
    if root.queues:
        fields["outbox"] = _outbox(decision)
    return DeploymentSpec(**fields, root=root.node), root


def deployment_for(
    decision: Decision, candidate: Candidate | None = None, *, repository: str = REPOSITORY
) -> DeploymentSpec:
    """The typed deployment that runs ``candidate`` (default: the recommendation).

    ``repository``: the model repository as the file will name it (relative
    paths are relative to the file's directory). ``edgecloud.load(spec)``
    builds it; ``spec.to_yaml()`` writes it. Raises ValueError when nothing is
    feasible.
    """
    return _plan(decision, candidate, repository)[0]


def server_settings_for(
    decision: Decision, candidate: Candidate | None = None
) -> dict[str, Any] | None:
    """``ServerSettings`` fields for the server the deployment sends to (None: it sends
    nothing): an idempotency window no shorter than the outbox's TTL."""
    deployment = deployment_for(decision, candidate)
    if not deployment.remotes and deployment.outbox is None:
        return None
    ttl_s = deployment.outbox.ttl_s if deployment.outbox else 0.0
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


def deployment_yaml(
    decision: Decision, candidate: Candidate | None = None, *, repository: str = REPOSITORY
) -> str:
    """The deployment file: a header saying what it runs and what to do first, then the
    typed spec as YAML (``edgecloud.load`` reads it back to the same spec).
    ``repository`` as in :func:`deployment_for`."""
    c = _chosen(decision, candidate)
    spec, root = _plan(decision, c, repository)
    header = [
        f"# yaml-language-server: $schema={SCHEMA_FILE}",
        f"# edgecloud deployment for workload {decision.workload.name!r}: {c.title}",
        f"# {c.summary}",
        "# Generated by `edgecloud advise`; load with edgecloud.load() or `edgecloud edge -d`.",
        f"# Editors check it against {SCHEMA_FILE} (`edgecloud schema deployment`).",
    ]
    if server_settings_for(decision, c) is not None:
        header.append("# Run the server with server.env (idempotency window >= outbox ttl_s).")
    header += [f"# {line}" for line in root.comments]
    return "\n".join(header) + "\n" + spec.to_yaml()
