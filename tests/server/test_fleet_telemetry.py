"""Fleet telemetry: stored once per event id, device state, 4xx naming the field."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.errors import IdempotencyKeyReuseError, InvalidRequestError
from edgecloud.server.fleet_telemetry import FleetStore, parse_events

from ..models import make_repo
from .conftest import TOKEN, Server, start_server


def event(device: str, seq: int, kind: str = "check", **over: Any) -> dict[str, Any]:
    base = {
        "id": f"{device}:{seq}", "device": device, "group": "lab", "model": "digits",
        "event": kind, "version": 1, "from_version": None, "ok": True, "detail": "",
        "bytes": 0, "at": 1000.0 + seq,
    }  # fmt: skip
    return base | over


def test_store_keeps_each_id_once_across_connections(tmp_path: Path) -> None:
    events = parse_events(json.dumps([event(f"d{i % 5}", i) for i in range(200)]).encode())
    stores = [FleetStore(tmp_path / "fleet.db") for _ in range(4)]
    barrier = threading.Barrier(8)

    def post(k: int) -> int:
        barrier.wait()
        return stores[k % 4].record(events[k * 10 :] + events[: k * 10])

    with ThreadPoolExecutor(8) as pool:
        accepted = list(pool.map(post, range(8)))
    assert sum(accepted) == 200
    assert stores[0].count("digits") == 200


def test_device_state_folds_events_in_device_time_order(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "fleet.db")
    late_first = [
        event("d1", 4, "rollback", version=1, from_version=2),
        event("d1", 1, "check", version=2, from_version=1),
        event("d1", 2, "swap", version=2, from_version=1),
        event("d1", 3, "health", version=2, ok=False, detail="accuracy 0.1 < 0.9"),
        event("d2", 1, "error", ok=False, detail="link down", group=None),
    ]
    store.record(parse_events(json.dumps(late_first).encode()), now=50.0)
    d1, d2 = store.devices("digits")
    assert (d1.device, d1.version, d1.rollbacks, d1.last_rollback_from) == ("d1", 1, 1, 2)
    assert (d1.last_health_ok, d1.last_health_version) == (False, 2)
    assert d1.last_contact == 50.0 and d1.group == "lab"
    assert (d2.version, d2.errors, d2.group) == (None, 1, None)
    assert store.devices("other") == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ok": "yes"}, "ok"),
        ({"version": 1.5}, "version"),
        ({"version": "2"}, "version"),
        ({"version": 2**64}, "version"),
        ({"detail": "x" * 70_000}, "detail"),
        ({"bytes": -1}, "bytes"),
        ({"at": float("nan")}, "at"),
        ({"event": "explode"}, "event"),
        ({"id": ""}, "id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_event_names_the_field(change: dict[str, Any], field: str) -> None:
    body = json.dumps([event("d", 1), event("d", 2) | change]).encode()
    with pytest.raises(InvalidRequestError, match=rf"event 1: {field}"):
        parse_events(body)


def test_missing_field_and_bad_shapes() -> None:
    doc = event("d", 1)
    del doc["model"]
    with pytest.raises(InvalidRequestError, match="event 0: model"):
        parse_events(json.dumps(doc).encode())
    for body in (b"", b"[1]", b"\xff", b"nope", json.dumps([doc] * 1001).encode()):
        with pytest.raises(InvalidRequestError):
            parse_events(body)


@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fleet-server")
    running = start_server(make_repo(tmp), tmp, token=TOKEN)
    yield running
    running.stop()


def test_server_concurrent_posts_store_once(fleet_server: Server) -> None:
    url, headers = fleet_server.url, fleet_server.headers()
    batch = {"events": [event(f"s{i % 3}", i, "swap", version=2) for i in range(60)]}

    def post(_: int) -> dict[str, int]:
        reply = httpx.post(f"{url}/fleet/telemetry", json=batch, headers=headers, timeout=30)
        assert reply.status_code == 200, reply.text
        result: dict[str, int] = reply.json()
        return result

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, range(6)))
    assert sum(r["accepted"] for r in results) == 60
    assert sum(r["duplicates"] for r in results) == 5 * 60
    status = httpx.get(f"{url}/fleet/status", params={"model": "digits"}, headers=headers)
    devices = status.json()["devices"]
    assert [(d["device"], d["version"]) for d in devices] == [("s0", 2), ("s1", 2), ("s2", 2)]


def test_server_answers_4xx_for_the_callers_mistakes(fleet_server: Server) -> None:
    url, headers = fleet_server.url, fleet_server.headers()
    bad = httpx.post(f"{url}/fleet/telemetry", json=event("x", 1, ok=3), headers=headers)
    assert bad.status_code == 400 and "ok" in bad.json()["error"]
    assert httpx.post(f"{url}/fleet/telemetry", content=b"{", headers=headers).status_code == 400
    assert httpx.get(f"{url}/fleet/telemetry", headers=headers).status_code == 405
    assert httpx.post(f"{url}/fleet/status", headers=headers).status_code == 405
    assert httpx.get(f"{url}/fleet/status?modle=x", headers=headers).status_code == 400
    assert httpx.get(f"{url}/fleet/status").status_code == 401
    nothing = httpx.get(f"{url}/fleet/status", params={"model": "x"}, headers=headers)
    assert nothing.json() == {"devices": []}


def test_fleet_status_reads_the_server(fleet_server: Server, tmp_path: Path) -> None:
    from edgecloud.errors import AuthenticationError, ConfigError
    from edgecloud.fleet.cli_rollout import telemetry_source

    headers = fleet_server.headers()
    one = event("reader", 1, "swap", version=4, from_version=3, model="reader-model")
    httpx.post(f"{fleet_server.url}/fleet/telemetry", json=one, headers=headers).raise_for_status()
    (tmp_path / "token").write_text(TOKEN + "\n")
    fetch = telemetry_source("reader-model", fleet_server.url, None, tmp_path / "token")
    assert fetch is not None
    assert [(d.device, d.version) for d in fetch()] == [("reader", 4)]
    anonymous = telemetry_source("reader-model", fleet_server.url, None, None)
    assert anonymous is not None
    with pytest.raises(AuthenticationError):
        anonymous()
    with pytest.raises(ConfigError, match="not both"):
        telemetry_source("m", fleet_server.url, tmp_path / "x.db", None)
    with pytest.raises(ConfigError, match="no such"):
        telemetry_source("m", None, tmp_path / "x.db", None)


def test_device_order_follows_sequence_numbers_not_a_jumping_clock(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "fleet.db")
    jumped = [
        event("d", 1, "swap", version=2, from_version=1, at=5000.0),
        event("d", 2, "rollback", version=1, from_version=2, at=10.0),  # clock set back
    ]
    store.record(parse_events(json.dumps(jumped).encode()))
    (d,) = store.devices("digits")
    assert (d.version, d.rollbacks) == (1, 1)


@pytest.mark.parametrize(
    "event_id",
    ["victim:1", "evil", "evil:", "evil:x", "evil:1:2", "evil:-1", "evil:1.0", "evil:\u0661", ":1",
     "evil:01", "evil:00", "evil:+1", "evil: 1", "evil:9223372036854775808",
     "evil:99999999999999999999999999"],
)  # fmt: skip
def test_an_id_must_be_the_posting_devices(event_id: str) -> None:
    body = json.dumps([event("evil", 1), event("evil", 2) | {"id": event_id}]).encode()
    with pytest.raises(InvalidRequestError, match=r"event 1: id: .*'<device>:<seq>'"):
        parse_events(body)
    # a device name may hold colons: the sequence number is after the last one
    assert parse_events(json.dumps(event("site:3", 7)).encode())[0].id == "site:3:7"


def test_each_sequence_number_has_one_spelling(tmp_path: Path) -> None:
    """``x:1`` and ``x:01`` would be two stored events of one sequence number."""
    for seq in ("0", "1", "1795989458759", str(2**63 - 1)):
        (parsed,) = parse_events(json.dumps(event("x", 1) | {"id": f"x:{seq}"}).encode())
        assert parsed.id == f"x:{seq}"
    store = FleetStore(tmp_path / "fleet.db")
    assert store.record(parse_events(json.dumps(event("x", 1)).encode())) == 1
    with pytest.raises(InvalidRequestError, match="without leading zeros"):
        parse_events(json.dumps(event("x", 1) | {"id": "x:01"}).encode())


@pytest.mark.parametrize("field", ["device", "model", "id"])
def test_an_empty_name_is_a_plain_line_naming_the_field(field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_events(json.dumps(event("d", 1) | {field: ""}).encode())
    assert caught.value.message == f"event 0: {field}: empty; give a non-empty string"


def test_a_reused_id_with_other_content_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "fleet.db")
    first = event("d", 1, "rollback", version=1, from_version=2)
    assert store.record(parse_events(json.dumps(first).encode())) == 1
    # the same content again (an outbox re-send): a duplicate, counted once
    assert store.record(parse_events(json.dumps([first, first]).encode())) == 0
    for change in ({"ok": False}, {"detail": "x"}, {"at": 1.5}, {"group": None}, {"bytes": 1}):
        post = [event("d", 9), first | change]  # the new event must not be stored either
        with pytest.raises(IdempotencyKeyReuseError, match="'d:1' is already stored"):
            store.record(parse_events(json.dumps(post).encode()))
    # two events of one post with one id and different content
    twice = [event("e", 1), event("e", 1, ok=False)]
    with pytest.raises(IdempotencyKeyReuseError):
        store.record(parse_events(json.dumps(twice).encode()))
    assert store.count() == 1
    (d,) = store.devices("digits")
    assert (d.device, d.rollbacks, d.version) == ("d", 1, 1)


def test_concurrent_posts_of_one_id_with_different_content(tmp_path: Path) -> None:
    stores = [FleetStore(tmp_path / "fleet.db") for _ in range(4)]
    barrier = threading.Barrier(8)

    def post(k: int) -> str:
        events = parse_events(json.dumps(event("d", 1, detail=f"writer {k % 2}")).encode())
        barrier.wait()
        try:
            return "new" if stores[k % 4].record(events) else "duplicate"
        except IdempotencyKeyReuseError:
            return "refused"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(post, range(8)))
    # one wins; the 3 others of its content are duplicates, the 4 of the other content refused
    assert sorted(outcomes) == ["duplicate"] * 3 + ["new"] + ["refused"] * 4
    assert stores[0].count() == 1


def test_one_device_cannot_hide_anothers_rollback(fleet_server: Server) -> None:
    """atk-fleet #3: "evil" posting "victim:1" first made the victim's rollback a silent
    duplicate and the victim vanished from the status."""
    url, headers = fleet_server.url, fleet_server.headers()
    squat = event("evil", 1, "check", model="squat") | {"id": "victim:1"}
    reply = httpx.post(f"{url}/fleet/telemetry", json=squat, headers=headers)
    assert reply.status_code == 400 and "'<device>:<seq>'" in reply.json()["error"]
    rollback = event("victim", 1, "rollback", model="squat", version=1, from_version=2)
    reply = httpx.post(f"{url}/fleet/telemetry", json=rollback, headers=headers)
    assert reply.json() == {"accepted": 1, "duplicates": 0}
    again = httpx.post(f"{url}/fleet/telemetry", json=rollback, headers=headers)
    assert again.json() == {"accepted": 0, "duplicates": 1}
    other = httpx.post(f"{url}/fleet/telemetry", json=rollback | {"ok": False}, headers=headers)
    assert other.status_code == 422 and "already stored" in other.json()["error"]
    status = httpx.get(f"{url}/fleet/status", params={"model": "squat"}, headers=headers)
    [(device, rollbacks)] = [(d["device"], d["rollbacks"]) for d in status.json()["devices"]]
    assert (device, rollbacks) == ("victim", 1)


def test_a_too_large_post_names_the_telemetry_limit(fleet_server: Server) -> None:
    url, headers = fleet_server.url, fleet_server.headers()
    huge = {"events": [event("big", i, detail="x" * 60_000) for i in range(400)]}
    reply = httpx.post(f"{url}/fleet/telemetry", json=huge, headers=headers, timeout=30)
    assert reply.status_code == 413
    message = reply.json()["error"]
    assert "telemetry" in message and "smaller batches" in message
    assert "binary" not in message
