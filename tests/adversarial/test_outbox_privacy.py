"""Privacy survives the outbox (issue 14, item 3a).

Every way an item can enter the outbox — a direct ``put``, a cascade's
deferred escalation (guard outside or inside the cascade), a filter's event —
keeps its full context, and the drain to a real ``edgecloud serve`` through a
real ``RemoteBackend`` never sends what may not leave the device. What the
server received is read from its ``/metrics``; what the client sent, from its
egress audit log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import edgecloud
from edgecloud import (
    AuditLog,
    InferRequest,
    PrivacyError,
    RemoteBackend,
    RequestContext,
    Sensitivity,
)
from edgecloud.filter import Filter
from edgecloud.filter.segment import SegmentConfig
from edgecloud.filter.triggers import FrameDiffTrigger
from edgecloud.routing import Guard, Outbox

from ..routing.conftest import metric
from ..server.conftest import Server
from ._outbox_helpers import affine, outbox_server

__all__ = ["outbox_server"]  # the fixture, re-exported for pytest

PERSONAL, RESTRICTED = Sensitivity.PERSONAL, Sensitivity.RESTRICTED


def audited(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_deferred_items_keep_their_context_and_only_what_may_leave_is_sent(
    outbox_server: Server, tmp_path: Path
) -> None:
    box = Outbox(tmp_path / "o.db")
    contexts = {
        "public": RequestContext(),
        "personal": RequestContext(sensitivity=PERSONAL),
        "personal-local": RequestContext(sensitivity=PERSONAL, local_only=True),
        "personal-features": RequestContext(sensitivity=PERSONAL, features_only=True),
        "restricted": RequestContext(sensitivity=RESTRICTED),
    }
    for i, (name, context) in enumerate(contexts.items()):
        box.put(affine(float(i), replace_key(context, name)), kind="escalation")
    box.put(affine(9.0), why="privacy")  # public, but a guard refused it: local from now on
    pending = {item.key: item for item in box.items()}
    assert set(pending) == {"public", "personal"}
    assert pending["personal"].sensitivity is PERSONAL  # stored, not lost
    refused = box.dead_letters()
    assert sorted(d.sensitivity.value for d in refused) == [
        "personal", "personal", "public", "restricted"
    ]  # fmt: skip
    assert all(d.reason == "privacy" and "may not leave" in d.error for d in refused)
    box.close()

    box = Outbox(tmp_path / "o.db")  # the context survives a restart
    before = metric(outbox_server, "edgecloud_requests_total", "affine")
    audit = AuditLog(tmp_path / "audit.jsonl")
    with RemoteBackend(outbox_server.url, audit=audit) as remote:
        result = box.drain(remote.infer)
    assert result.delivered == 2 and result.remaining == 0
    assert metric(outbox_server, "edgecloud_requests_total", "affine") - before == 2
    sent = sorted(record["sensitivity"] for record in audited(audit.path))
    assert sent == ["personal", "public"]  # logged as what it is, not as public
    stats = box.stats()
    assert stats["privacy_refused"] == stats["dead_lettered"] == 4 and stats["delivered"] == 2


def replace_key(context: RequestContext, key: str) -> RequestContext:
    return RequestContext(
        sensitivity=context.sensitivity, idempotency_key=key,
        local_only=context.local_only, features_only=context.features_only,
    )  # fmt: skip


def test_the_drain_rechecks_the_context_and_a_refusal_blocks_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    x = affine(1.0).inputs
    box.put(InferRequest("affine", x, context=RequestContext(idempotency_key="k")))
    # the same request again, now known to be restricted: the stored item is tightened
    box.put(InferRequest("affine", x, context=RequestContext(RESTRICTED, idempotency_key="k")))
    box.put(affine(2.0))
    box.put(affine(3.0))
    sent: list[InferRequest] = []

    def refuses_the_second(request: InferRequest) -> None:
        if len(sent) == 1 and request.model == "affine":
            sent.append(request)
            raise PrivacyError("this destination may not receive it")  # e.g. a tier rule
        sent.append(request)

    result = box.drain(refuses_the_second)
    assert all(r.context.sensitivity is not RESTRICTED for r in sent)  # never handed to send
    assert result.delivered == 1 and result.dead_lettered == 2 and result.remaining == 0
    assert [d.reason for d in box.dead_letters()] == ["privacy", "privacy"]


def deployment(tmp_path: Path, server: Server, root: dict[str, Any]) -> Path:
    spec = {
        "repository": str(server.repo.root),
        "remotes": {"cloud": {"url": server.url, "timeout_s": 5}},
        "audit_log": "audit.jsonl",
        "outbox": {"path": "outbox.db"},
        "root": root,
    }
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cascade(large: Any) -> dict[str, Any]:
    return {"cascade": {
        "small": "local", "large": large, "small_model": "affine", "large_model": "affine",
        "output": "z", "threshold": 1.0, "defer_failed_escalations": True,
    }}  # fmt: skip


def test_escalations_refused_for_privacy_are_deferred_as_such_and_never_drained(
    outbox_server: Server, tmp_path: Path
) -> None:
    rules = {"personal": "local"}
    layouts = {
        "guard-outside": {"guard": {"rules": rules, "inner": cascade("cloud")}},
        "guard-inside": cascade({"guard": {"rules": rules, "inner": "cloud"}}),
    }
    for name, root in layouts.items():
        where = tmp_path / name
        where.mkdir()
        with edgecloud.load(deployment(where, outbox_server, root)) as tree:
            assert tree.outbox is not None
            before = metric(outbox_server, "edgecloud_requests_total", "affine")
            for sensitivity in (PERSONAL, RESTRICTED):
                response = tree.infer(affine(0.5, RequestContext(sensitivity=sensitivity)))
                reasons = [s.reason for s in response.trace.spans if s.kind == "decision"]
                assert any("escalation-failed:privacy" in r for r in reasons), reasons
            assert len(tree.outbox) == 0, name  # nothing queued to be sent
            result = tree.drain_outbox()
            assert result is not None and result.delivered == 0
            tree.outbox.put(affine(0.25))  # control: the drain does reach the server
            assert tree.drain_outbox() == type(result)(1, 0, None)
            after = metric(outbox_server, "edgecloud_requests_total", "affine")
            refused = tree.outbox.dead_letters()
        assert after - before == 1, name  # only the public control item got there
        assert sorted(d.sensitivity.value for d in refused) == ["personal", "restricted"]
        assert [r["sensitivity"] for r in audited(where / "audit.jsonl")] == ["public"]


def test_a_filter_event_a_guard_refused_is_never_drained(
    outbox_server: Server, tmp_path: Path
) -> None:
    box = Outbox(tmp_path / "o.db")
    with RemoteBackend(outbox_server.url) as remote:
        guarded = Guard(remote, rules={"public": "local"})  # this stream stays on the device
        stream = Filter(
            FrameDiffTrigger(threshold=0.1), inner=guarded, model="events", outbox=box,
            segment=SegmentConfig(0, 0, 0, 0),
        )  # fmt: skip
        frames = [np.zeros((4, 4), np.float32)] * 3 + [np.ones((4, 4), np.float32)] * 2
        events = stream.feed_all(frames)
        assert events and all(e.queued for e in events)
        before = metric(outbox_server, "edgecloud_requests_total", "events")
        assert box.drain(remote.infer).delivered == 0
    assert metric(outbox_server, "edgecloud_requests_total", "events") == before
    assert len(box) == 0 and box.stats()["privacy_refused"] == len(events)
