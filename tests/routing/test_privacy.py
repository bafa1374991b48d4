"""Restricted data never reaches the server; everything that does is in the audit log."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np
import pytest

from edgecloud import (
    ConfigError,
    InferRequest,
    LocalBackend,
    ModelRepository,
    PrivacyError,
    RemoteBackend,
    RequestContext,
    Sensitivity,
)
from edgecloud.routing import AuditLog, Guard, prefer_remote
from edgecloud.routing.privacy import withheld
from edgecloud.server.launch import free_port
from edgecloud.zoo import datasets

from ..server.conftest import Server
from .conftest import metric


def request(sensitivity: Sensitivity) -> InferRequest:
    pixels = datasets.digits("test").x[:3]
    return InferRequest(
        "digits-large", {"pixels": pixels}, context=RequestContext(sensitivity=sensitivity)
    )


def test_guarded_hybrid_keeps_restricted_and_personal_local(
    zoo_repo: ModelRepository, zoo_server: Server, tmp_path: Path
) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    remote = RemoteBackend(zoo_server.url, audit=audit)
    tree = Guard(prefer_remote(remote, LocalBackend(zoo_repo)), rules={"personal": "local"})
    before = metric(zoo_server, "edgecloud_requests_total", "digits-large")
    for level in (Sensitivity.RESTRICTED, Sensitivity.PERSONAL):
        response = tree.infer(request(level))
        assert response.trace.served_by.startswith("local:digits-large")
        reasons = [s.reason for s in response.trace.spans if s.kind == "decision"]
        assert reasons[0] == f"guard:{level.value} → stays on the device"
        assert reasons[1].startswith("fallback:privacy")
    assert metric(zoo_server, "edgecloud_requests_total", "digits-large") == before
    assert list(audit) == []

    public = tree.infer(request(Sensitivity.PUBLIC))
    assert public.trace.served_by.startswith("remote:")
    assert metric(zoo_server, "edgecloud_requests_total", "digits-large") == before + 1
    (record,) = list(audit)
    pixels = datasets.digits("test").x[:3]
    assert record["sha256"] == hashlib.sha256(pixels.tobytes()).hexdigest()
    assert record["bytes"] == pixels.nbytes and record["destination"] == zoo_server.url
    assert record["sensitivity"] == "public" and record["model"] == "digits-large"
    tree.close()


def test_restricted_with_only_a_remote_fails_clearly(zoo_server: Server) -> None:
    with (
        RemoteBackend(zoo_server.url) as remote,
        pytest.raises(
            PrivacyError, match="restricted data of this request may not leave the device"
        ),
    ):
        remote.infer(request(Sensitivity.RESTRICTED))


PUBLIC, PERSONAL, RESTRICTED = Sensitivity.PUBLIC, Sensitivity.PERSONAL, Sensitivity.RESTRICTED


@pytest.mark.parametrize(
    "context,kept",
    [
        (RequestContext(), []),
        (RequestContext(sensitivity=PERSONAL), []),
        (RequestContext(sensitivity=RESTRICTED), ["a", "x"]),
        (RequestContext(sensitivity=RESTRICTED, features=frozenset({"a"})), ["a", "x"]),
        (RequestContext(sensitivity=PERSONAL, local_only=True), ["a", "x"]),
        (RequestContext(sensitivity=PERSONAL, features_only=True), ["a", "x"]),
        (RequestContext(features_only=True, features=frozenset({"a"})), ["x"]),
        (RequestContext(features_only=True, features=frozenset({"a", "x"})), []),
        (RequestContext(local_only=True, features_only=True, features=frozenset("ax")), ["a", "x"]),
        (RequestContext(features=frozenset({"a"})), []),  # no features rule: all may leave
    ],
)
def test_one_rule_says_which_tensors_stay(context: RequestContext, kept: list[str]) -> None:
    assert withheld(context, ["x", "a"]) == kept


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_refused_before_any_connection_on_every_transport(scheme: str) -> None:
    """Nothing listens at the URL: a privacy error (not unreachable) proves no byte was sent."""
    url = f"{scheme}://127.0.0.1:{free_port()}"
    smuggled = InferRequest(
        "m",
        {"a": np.ones((1, 2), np.float32), "x": np.ones((1, 2), np.float32)},
        context=RequestContext(sensitivity=PERSONAL, features_only=True, features=frozenset("a")),
    )
    with RemoteBackend(url, timeout=1.0) as remote:
        with pytest.raises(PrivacyError, match="'x' is raw input"):
            remote.infer(smuggled)
        with pytest.raises(PrivacyError, match="restricted data"):
            asyncio.run(remote.infer_async(request(RESTRICTED)))


def test_guard_rules_are_checked() -> None:
    inner = LocalBackend(Path("."))
    with pytest.raises(ConfigError, match="unknown sensitivity"):
        Guard(inner, rules={"secret": "local"})
    with pytest.raises(ConfigError, match="restricted data never leaves"):
        Guard(inner, rules={"restricted": "any"})
    with pytest.raises(ConfigError, match="must be 'local', 'features' or 'any'"):
        Guard(inner, rules={"personal": "cloud"})  # type: ignore[dict-item]


def test_audit_log_is_append_only_lines(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.jsonl", fsync=False)
    req = InferRequest("m", {"a": np.ones(2, np.float32), "b": np.zeros(3, np.int64)})
    audit.record(req, "http://x")
    audit.record(req, "http://y")
    records = list(audit)
    assert [r["tensor"] for r in records] == ["a", "b", "a", "b"]
    assert [r["destination"] for r in records] == ["http://x"] * 2 + ["http://y"] * 2
