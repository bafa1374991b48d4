from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from edgecloud import (
    ConfigError,
    IdempotencyKeyReuseError,
    InferRequest,
    InvalidRequestError,
    ModelRepository,
    RemoteBackend,
    RequestContext,
    Sensitivity,
    UnavailableError,
)
from edgecloud.routing import Backoff, Outbox, OutboxFullError

from ..server.conftest import Server, free_port
from .conftest import metric


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def item(i: int) -> InferRequest:
    return InferRequest("digits-large", {"pixels": np.full((1, 64), i / 100, np.float32)})


def test_items_survive_reopening_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    keys = [box.put(item(i)) for i in range(5)]
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert [i.key for i in again.items()] == keys
    sent: list[InferRequest] = []
    result = again.drain(sent.append)
    assert result.delivered == 5 and result.remaining == 0 and result.stopped_by is None
    assert [r.context.idempotency_key for r in sent] == keys
    np.testing.assert_array_equal(sent[3].inputs["pixels"], item(3).inputs["pixels"])
    assert again.stats()["delivered"] == 5 and len(again) == 0


def test_given_idempotency_keys_are_kept(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    key = box.put(
        InferRequest("m", {"x": np.ones(2)}, context=RequestContext(idempotency_key="k1"))
    )
    assert key == "k1"
    box.put(InferRequest("m", {"x": np.ones(2)}, context=RequestContext(idempotency_key="k1")))
    assert len(box) == 1  # the same work is queued once


def test_full_outbox_rejects_or_drops_oldest_and_counts_it(tmp_path: Path) -> None:
    reject = Outbox(tmp_path / "r.db", max_items=2)
    reject.put(item(0))
    reject.put(item(1))
    with pytest.raises(OutboxFullError, match="full"):
        reject.put(item(2))
    assert reject.stats()["rejected"] == 1 and len(reject) == 2
    drop = Outbox(tmp_path / "d.db", max_items=2, full_policy="drop_oldest")
    keys = [drop.put(item(i)) for i in range(3)]
    assert [i.key for i in drop.items()] == keys[1:]
    assert drop.stats()["dropped"] == 1


def test_expired_items_are_counted_not_sent(tmp_path: Path) -> None:
    wall, monotonic = Clock(), Clock()
    box = Outbox(tmp_path / "o.db", ttl_s=60, clock=wall, monotonic=monotonic)
    box.put(item(0))
    monotonic.now += 61  # items age by time the outbox saw pass, not by the wall clock
    wall.now += 61  # (a reading beyond max_clock_credit_s counts when the clocks agree)
    box.put(item(1))
    sent: list[InferRequest] = []
    box.drain(sent.append)
    assert len(sent) == 1 and box.stats()["expired"] == 1


def test_drain_stops_at_a_retryable_failure_and_keeps_the_item(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put(item(0))
    box.put(item(1))
    calls: list[int] = []

    def down(request: InferRequest) -> None:
        calls.append(1)
        raise UnavailableError("link down")

    slept: list[float] = []
    result = box.drain(down, backoff=Backoff(base_s=0.01, max_tries=3), sleep=slept.append)
    assert result.delivered == 0 and result.remaining == 2 and "link down" in str(result.stopped_by)
    # each pass tries the head and one more item (to tell a dead link from a bad item)
    assert len(calls) == 6 and len(slept) == 2
    (first, second) = box.items()
    assert first.attempts == second.attempts == 0  # offline costs no item an attempt
    assert first.last_error == second.last_error == "link down"


def test_rejected_items_go_to_dead_letters_not_nowhere(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put(item(0))
    box.put(item(1))
    sent: list[InferRequest] = []

    def picky(request: InferRequest) -> None:
        if not sent:
            sent.append(request)
            raise InvalidRequestError("server says no")
        sent.append(request)

    result = box.drain(picky)
    assert result.delivered == 1 and result.dead_lettered == 1
    assert box.stats()["dead_lettered"] == 1
    with sqlite3.connect(tmp_path / "o.db") as db:
        (error, reason) = db.execute("SELECT error, reason FROM dead_letters").fetchone()
    assert error == "server says no" and reason == "rejected"


def test_corrupt_database_is_quarantined_and_settings_are_checked(tmp_path: Path) -> None:
    (tmp_path / "bad.db").write_bytes(b"this is not sqlite" * 100)
    box = Outbox(tmp_path / "bad.db")
    assert box.quarantined is not None and box.quarantined.read_bytes().startswith(b"this is")
    assert box.stats()["quarantined"] == 1 and len(box) == 0
    for wrong, message in [
        ({"full_policy": "shrug"}, "full_policy"),
        ({"max_items": 0}, "max_items"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_clock_credit_s": -1}, "max_clock_credit_s"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Outbox(tmp_path / "x.db", **wrong)  # type: ignore[arg-type]


def test_drains_to_a_real_server_after_reconnect(
    zoo_repo: ModelRepository, zoo_server: Server, tmp_path: Path
) -> None:
    box = Outbox(tmp_path / "o.db")
    keys = [box.put(item(i)) for i in range(6)]
    with RemoteBackend(f"http://127.0.0.1:{free_port()}", timeout=1) as dead:
        assert box.drain(dead.infer).remaining == 6  # offline: nothing lost
    before = metric(zoo_server, "edgecloud_requests_total", "digits-large")
    with RemoteBackend(zoo_server.url) as remote:
        assert box.drain(remote.infer).delivered == 6
        assert box.drain(remote.infer).delivered == 0
        # a re-send (as after a crash) is answered from the idempotency cache
        remote.infer(InferRequest("digits-large", item(0).inputs,
                                  context=RequestContext(idempotency_key=keys[0])))  # fmt: skip
    assert metric(zoo_server, "edgecloud_requests_total", "digits-large") == before + 7
    assert metric(zoo_server, "edgecloud_idempotent_replays_total", "digits-large") >= 1


SCHEMA_1 = """
CREATE TABLE items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    model TEXT NOT NULL, version TEXT, header_length INTEGER NOT NULL, body BLOB NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE dead_letters (
    seq INTEGER PRIMARY KEY, key TEXT, kind TEXT, model TEXT, body BLOB, header_length INTEGER,
    error TEXT, failed_at REAL
);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters VALUES ('delivered', 7), ('dropped', 0), ('rejected', 0), ('expired', 0),
    ('dead_lettered', 1);
INSERT INTO dead_letters VALUES (1, 'old', 'request', 'm', x'00', 0, 'server says no', 0);
"""


def test_a_schema_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    from edgecloud.wire.rest import encode_request

    with sqlite3.connect(tmp_path / "o.db") as db:
        db.executescript(SCHEMA_1)
        for i, sensitivity in enumerate(["public", "restricted", "personal"]):
            context = RequestContext(Sensitivity(sensitivity), idempotency_key=f"k{i}")
            request = InferRequest("digits-large", item(i).inputs, context=context)
            body, length = encode_request(request, binary=True)
            db.execute(
                "INSERT INTO items(key, kind, model, header_length, body, created, expires) "
                "VALUES (?, 'request', 'digits-large', ?, ?, ?, ?)",
                (f"k{i}", length, body, time.time() - 60, time.time() + 3600),
            )
    box = Outbox(tmp_path / "o.db")
    items = box.items()
    assert [i.sensitivity.value for i in items] == ["public", "restricted", "personal"]
    assert all(len(i.fingerprint) == 64 for i in items)
    sent: list[InferRequest] = []
    result = box.drain(sent.append)
    assert [r.context.idempotency_key for r in sent] == ["k0", "k2"]
    assert sent[1].context.sensitivity is Sensitivity.PERSONAL
    assert "sensitivity" not in sent[1].parameters  # the context travels once, as context
    assert result.dead_lettered == 1  # the restricted one: never sent
    stats = box.stats()
    assert stats["delivered"] == 9 and stats["dead_lettered"] == 2 and stats["dead_letters"] == 2
    with pytest.raises(IdempotencyKeyReuseError):
        box.put(InferRequest("m", {"x": np.ones(2)}, context=RequestContext(idempotency_key="k1")))
