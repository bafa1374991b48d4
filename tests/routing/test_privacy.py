"""Restricted data never reaches the server; everything that does is in the audit log."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecloud import (
    ConfigError,
    FunctionBackend,
    InferRequest,
    InferResponse,
    InvalidRequestError,
    LocalBackend,
    ModelRepository,
    PrivacyError,
    RemoteBackend,
    RequestContext,
    Sensitivity,
    UnavailableError,
)
from edgecloud.backends.base import Backend
from edgecloud.routing import AuditLog, Cascade, Fallback, Fastest, Guard, Outbox, prefer_remote
from edgecloud.routing.fallback import combined_error
from edgecloud.routing.privacy import check_egress, deferrable, withheld
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


# -- after the hostile review (issue 14, kind 3) ----------------------------------


def dead_remote(scheme: str = "http") -> RemoteBackend:
    """Nothing listens: a PrivacyError from it proves the refusal came before any byte."""
    return RemoteBackend(f"{scheme}://127.0.0.1:{free_port()}", timeout=1.0)


class Down(Backend):
    """An unreachable path (UnavailableError), as a remote whose link is gone."""

    def __init__(self, name: str = "down") -> None:
        self.name = name

    def infer(self, request: InferRequest) -> InferResponse:
        raise UnavailableError(f"{self.name}: the link is gone")

    def close(self) -> None:
        return None


def rows(sensitivity: Sensitivity | str = PERSONAL, **fields: Any) -> InferRequest:
    return InferRequest(
        "m", {"x": np.ones((2, 4), np.float32)},
        context=RequestContext(sensitivity=sensitivity), **fields,
    )  # fmt: skip


COMBINATIONS = {
    "fastest-two-refusals": lambda: Fastest([dead_remote(), dead_remote()], explore=0.0),
    "fastest-refusal-then-down": lambda: Fastest([dead_remote(), Down()], explore=0.0),
    "fastest-down-then-refusal": lambda: Fastest([Down(), dead_remote()], explore=0.0),
    "fallback-refusal-then-down": lambda: Fallback(dead_remote(), Down()),
    "fallback-down-then-refusal": lambda: Fallback(Down(), dead_remote()),
    "nested": lambda: Fallback(Fastest([Down(), dead_remote()], explore=0.0), Down("other")),
}


@pytest.mark.parametrize("make", list(COMBINATIONS.values()), ids=list(COMBINATIONS))
def test_a_privacy_refusal_survives_every_combination_of_errors(make: Any) -> None:
    """Every path failed and one refused for privacy: the combined error is a PrivacyError
    carrying the Guard's rules, never an 'unavailable' a cascade would defer as such."""
    guard = Guard(make(), rules={"personal": "local"})
    with pytest.raises(PrivacyError) as caught:
        guard.infer(rows())
    assert caught.value.context is not None and caught.value.context.local_only
    deferred, why = deferrable(rows(), caught.value)
    assert why == "privacy" and deferred.context.local_only
    guard.close()


def test_combined_error_is_unavailable_without_a_refusal() -> None:
    fastest = Fastest([Down("a"), Down("b")], explore=0.0)
    with pytest.raises(UnavailableError, match="every path failed: a: unavailable") as caught:
        fastest.infer(rows())
    assert not isinstance(caught.value, PrivacyError)
    mixed = combined_error([("a", "circuit open"), ("b", PrivacyError("no"))])
    assert isinstance(mixed, PrivacyError) and "a: circuit open" in mixed.message


@pytest.mark.parametrize("rule", ["local", "features"])
def test_a_guard_decision_reaches_the_outbox_whatever_failed_below_it(
    rule: str, tmp_path: Path
) -> None:
    """Any failure passing a Guard carries its rule: deferred, the item keeps it, and the
    drain never sends it (here an unreachable split tail under ``features``)."""
    outbox = Outbox(tmp_path / "outbox.db")

    def defer(escalation: InferRequest, _: object, why: str) -> None:
        outbox.put(escalation, kind="escalation", why=why)

    def small(inputs: Any) -> dict[str, np.ndarray]:
        return {"probabilities": np.full((len(inputs["x"]), 3), 1 / 3, np.float32)}

    large = Guard(Down(), rules={"personal": rule})  # type: ignore[dict-item]
    cascade = Cascade(FunctionBackend(small, name="small"), large, threshold=0.9,
                      on_escalation_failure=defer)  # fmt: skip
    cascade.infer(rows())
    assert all(i.local_only or i.features_only for i in outbox.items())
    with dead_remote() as sender:
        result = outbox.drain(sender.infer)
    assert result.delivered == 0 and result.stopped_by is None  # refused, not unreachable
    assert outbox.items() == []
    [letter] = outbox.dead_letters()
    assert (letter.reason, letter.sensitivity) == ("privacy", "personal")
    outbox.close()


def test_a_caller_cannot_declare_its_raw_input_a_feature() -> None:
    guard = Guard(dead_remote(), rules={"personal": "features"})
    preset = rows()
    preset.context = dataclasses.replace(preset.context, features=frozenset({"x"}))
    with pytest.raises(PrivacyError, match="'x' is raw input"):
        guard.infer(preset)
    guard.close()


def test_features_only_requests_leave_without_the_callers_metadata(tmp_path: Path) -> None:
    context = RequestContext(sensitivity=PERSONAL, features_only=True, features=frozenset("x"))
    request = rows(id="patient-4711", parameters={"patient_name": "Jane Doe"})
    request.context = context
    outgoing, dropped = check_egress(request, "http://server")
    assert outgoing.id == "" and outgoing.parameters == {}
    assert dropped == ["id", "parameters.patient_name"]
    assert outgoing.inputs is request.inputs
    plain = rows(id="r1", parameters={"note": "kept"})  # no features rule: unchanged
    assert check_egress(plain, "http://server") == (plain, [])
    audit = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    audit.record(outgoing, "http://server", dropped)
    assert [r["dropped"] for r in audit] == [dropped]


@pytest.mark.parametrize("value", ["public", "personal", "restricted"])
def test_a_sensitivity_string_is_the_level_it_names(value: str, tmp_path: Path) -> None:
    context = RequestContext(sensitivity=value)  # type: ignore[arg-type]
    assert context.sensitivity is Sensitivity(value)
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.put(rows(value))
    stored = [*outbox.items(), *outbox.dead_letters()]  # restricted: a dead letter at once
    assert [i.sensitivity for i in stored] == [value]
    outbox.close()


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_restricted_as_a_string_is_refused_on_every_transport(scheme: str) -> None:
    with dead_remote(scheme) as remote, pytest.raises(PrivacyError, match="restricted data"):
        remote.infer(rows("restricted"))


@pytest.mark.parametrize(
    "fields,named",
    [
        ({"sensitivity": "RESTRICTED"}, "sensitivity"),
        ({"sensitivity": "secret"}, "sensitivity"),
        ({"sensitivity": 2}, "sensitivity"),
        ({"sensitivity": None}, "sensitivity"),
        ({"local_only": "false"}, "local_only"),
        ({"features_only": 1}, "features_only"),
        ({"features": "pixels"}, "features"),
        ({"features": {1, 2}}, "features"),
        ({"deadline": "soon"}, "deadline"),
        ({"deadline": True}, "deadline"),
        ({"idempotency_key": 42}, "idempotency_key"),
    ],
)
def test_a_malformed_context_is_refused_on_construction(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidRequestError, match=rf"RequestContext\.{named}"):
        RequestContext(**fields)


def test_privacy_properties_fail_closed_for_a_value_that_is_no_level() -> None:
    forged = RequestContext()
    object.__setattr__(forged, "sensitivity", "secret")  # bypassing validation on purpose
    assert not forged.features_may_leave and not forged.may_leave_device
    assert withheld(forged, ["x"]) == ["x"]
