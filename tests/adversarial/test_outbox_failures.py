"""The outbox against the failure modes of durable queues (issue 14, item 5; item 1).

One test per member of the kind: a full disk (a real tiny filesystem, and
SQLite's own page limit), the wall clock jumping forward and back (while
open and across a restart), a poison item a real server fails forever, a
failure that only looks like one (the link is down, the credentials are
wrong), a corrupt file (not a database, damaged pages, truncated), and an
idempotency key reused with another payload or the same one.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edgecloud import (
    AuthenticationError,
    IdempotencyKeyReuseError,
    InferRequest,
    InferResponse,
    InvalidRequestError,
    RemoteBackend,
    RequestContext,
    Sensitivity,
    UnavailableError,
)
from edgecloud.routing import Backoff, Outbox, OutboxStorageError

from ..conftest import ROOT
from ..routing.conftest import metric
from ..server.conftest import Server
from ._outbox_helpers import Clock, affine, lookup, outbox_server

__all__ = ["outbox_server"]  # the fixture, re-exported for pytest

TTL = 3600.0
YEAR = 365 * 24 * 3600.0


def blob(i: int) -> InferRequest:
    """A distinct ~2 KiB request."""
    return InferRequest("blob", {"x": np.random.default_rng(i).random((1, 512), np.float32)})


def fill_until_full(box: Outbox) -> tuple[list[str], OutboxStorageError]:
    keys: list[str] = []
    for i in range(5000):
        try:
            keys.append(box.put(blob(i)))
        except OutboxStorageError as exc:
            return keys, exc
    pytest.fail("the outbox never filled up")


def assert_intact(box: Outbox, keys: list[str]) -> None:
    """Every stored item is there, in order, with its payload, and nothing else."""
    assert [item.key for item in box.items()] == keys
    sent: list[InferRequest] = []
    assert box.drain(sent.append).delivered == len(keys)
    assert [r.context.idempotency_key for r in sent] == keys
    for i, request in enumerate(sent):
        np.testing.assert_array_equal(request.inputs["x"], blob(i).inputs["x"])


# -- disk full -------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_full_filesystem_is_a_typed_error_that_loses_nothing_and_recovers(
    tiny_fs: Path,
) -> None:
    ballast = tiny_fs / "ballast"
    ballast.write_bytes(b"\0" * 160 * 1024)
    box = Outbox(tiny_fs / "outbox.db")
    keys, error = fill_until_full(box)
    assert len(keys) > 5
    assert "disk is full" in error.message or "I/O" in error.message, error.message
    assert error.status_code == 503  # an UnavailableError: retry later, not the caller's fault
    with pytest.raises(OutboxStorageError):
        box.put(blob(len(keys)))  # still full: still typed, still nothing half-written
    assert [item.key for item in box.items()] == keys
    box.close()
    box = Outbox(tiny_fs / "outbox.db")  # a restart on the full disk: opening writes nothing
    assert [item.key for item in box.items()] == keys and box.quarantined is None
    ballast.unlink()  # space returns
    keys.append(box.put(blob(len(keys))))
    box.close()
    again = Outbox(tiny_fs / "outbox.db")
    assert again.quarantined is None  # the file is sound: quick_check passed
    assert_intact(again, keys)
    again.close()


def test_sqlite_full_from_its_page_limit_rolls_back_and_recovers(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    (pages,) = box._db.execute("PRAGMA page_count").fetchone()  # SQLITE_FULL on demand
    box._db.execute(f"PRAGMA max_page_count = {pages + 60}")
    keys, error = fill_until_full(box)
    assert "disk is full" in error.message and len(keys) > 5
    stats = box.stats()
    assert stats["pending"] == len(keys) and stats["rejected"] == stats["dropped"] == 0
    box._db.execute("PRAGMA max_page_count = 1000000")
    keys.append(box.put(blob(len(keys))))
    assert_intact(box, keys)
    assert box.stats()["delivered"] == len(keys)


# -- clock jumps -------------------------------------------------------------------


def clocked(path: Path, wall: Clock, monotonic: Clock, boot: str = "boot-1") -> Outbox:
    return Outbox(path, ttl_s=TTL, clock=wall, monotonic=monotonic, boot=lambda: boot)


def test_a_forward_wall_clock_jump_expires_nothing(tmp_path: Path) -> None:
    wall, monotonic = Clock(), Clock()
    box = clocked(tmp_path / "o.db", wall, monotonic)
    keys = [box.put(blob(i)) for i in range(5)]
    wall.now += 10 * YEAR  # NTP fixes a device that booted in the past, while open
    monotonic.now += 60
    assert [item.key for item in box.items()] == keys and box.stats()["expired"] == 0
    box.close()
    wall.now += 10 * YEAR  # and again while the app restarted: downtime is measured
    monotonic.now += 30
    box = clocked(tmp_path / "o.db", wall, monotonic)
    assert len(box) == 5
    box.close()
    wall.now += 10 * YEAR  # a reboot into a wrong wall clock: credited at most TTL / 2
    rebooted = Clock(0.0)
    box = clocked(tmp_path / "o.db", wall, rebooted, boot="boot-2")
    rebooted.now += TTL / 2 - 100  # observed so far: 60 + 30 + TTL / 2 + TTL / 2 - 100
    assert len(box.items()) == 5 and box.stats()["expired"] == 0
    rebooted.now += 11  # they still expire after at most ttl_s of observed time
    assert box.drain(lambda request: None).delivered == 0
    assert box.stats()["expired"] == 5


def test_a_backward_wall_clock_jump_does_not_keep_items_forever(tmp_path: Path) -> None:
    wall, monotonic = Clock(), Clock()
    box = clocked(tmp_path / "o.db", wall, monotonic)
    box.put(blob(0))
    wall.now -= 10 * YEAR  # the device's clock is set back (and stays wrong)
    for _ in range(4):  # time observed in readings of a plausible size
        monotonic.now += TTL / 4 - 1
        assert len(box.items()) == 1
    monotonic.now += 5
    sent: list[InferRequest] = []
    box.drain(sent.append)
    assert sent == [] and box.stats()["expired"] == 1
    box.put(blob(1))  # the app is down longer than the TTL; the wall clock says no time passed
    box.close()
    monotonic.now += TTL + 1  # the clocks disagree: at most max_clock_credit_s is credited
    wall.now -= YEAR
    box = clocked(tmp_path / "o.db", wall, monotonic)
    assert len(box) == 1 and box.stats()["expired"] == 1
    monotonic.now += TTL / 2  # and time still passes
    box.drain(sent.append)
    assert sent == [] and box.stats()["expired"] == 2
    box.put(blob(2))  # across a reboot a gap < 0 credits nothing, and time still passes
    box.close()
    wall.now -= YEAR
    rebooted = Clock(0.0)
    box = clocked(tmp_path / "o.db", wall, rebooted, boot="boot-2")
    for _ in range(3):  # time still passes, observed in plausible readings
        rebooted.now += TTL / 3 + 1
        assert box.stats()["expired"] == 2
    box.drain(sent.append)
    assert sent == [] and box.stats()["expired"] == 3


def test_two_processes_on_one_file_do_not_count_time_twice(tmp_path: Path) -> None:
    wall, monotonic = Clock(), Clock()
    first = clocked(tmp_path / "o.db", wall, monotonic)
    second = clocked(tmp_path / "o.db", wall, monotonic)
    oldest = first.put(blob(0))
    for _ in range(4):  # both see the same 0.8 TTL pass: the item is 0.8 TTL old, not 1.6
        monotonic.now += TTL / 5
        wall.now += TTL / 5
        first.put(blob(1))
        second.put(blob(2))
    assert len(first) == 9 and first.stats()["expired"] == 0
    monotonic.now += TTL / 5 + 1
    second.put(blob(3))
    assert oldest not in [i.key for i in second.items()]
    assert second.stats()["expired"] == 1  # only the one a full TTL old


# -- poison items ------------------------------------------------------------------


def test_an_item_the_server_always_fails_is_dead_lettered_without_blocking(
    outbox_server: Server, tmp_path: Path
) -> None:
    monotonic = Clock()
    box = Outbox(
        tmp_path / "o.db", max_attempts=3, monotonic=monotonic,
        retry_backoff=Backoff(base_s=10, cap_s=10, max_tries=None),
    )  # fmt: skip
    before = metric(outbox_server, "edgecloud_requests_total", "lookup")
    before_broken = metric(outbox_server, "edgecloud_requests_total", "lookup-broken")
    box.put(lookup(0))
    box.put(lookup(0, model="lookup-broken"))  # the server answers it 503, always
    for index in (1, 2):
        box.put(lookup(index))
    with RemoteBackend(outbox_server.url, timeout=5) as remote:
        first = box.drain(remote.infer)
        assert (first.delivered, first.deferred, first.remaining) == (3, 1, 1)
        assert first.stopped_by is None  # the items behind the poison went through
        box.put(lookup(3))  # newer than the poison, and not held up by it
        assert box.drain(remote.infer).delivered == 1  # the poison is backing off
        (poison,) = box.items()
        assert poison.attempts == 1 and "503" in str(poison.last_error)
        results = []
        for i in range(2):
            monotonic.now += 11  # past its backoff
            # a 503 alone could be a dead link; a good item answered in the same
            # drain shows the 503 is the poison's own (see the module docstring)
            box.put(lookup(1 + i % 3))
            results.append(box.drain(remote.infer))
    assert [r.dead_lettered for r in results] == [0, 1]
    (dead,) = box.dead_letters()
    assert dead.reason == "poisoned" and "503" in dead.error and dead.model == "lookup-broken"
    stats = box.stats()
    assert stats["poisoned"] == stats["dead_lettered"] == 1 and stats["pending"] == 0
    assert stats["delivered"] == 6
    # 6 good items once each, the poison exactly max_attempts times
    assert metric(outbox_server, "edgecloud_requests_total", "lookup") - before == 6
    assert metric(outbox_server, "edgecloud_requests_total", "lookup-broken") - before_broken == 3


def recording(fail: Callable[[InferRequest], Exception | None]) -> tuple[list[str], Callable]:
    """A send function built from ``fail`` that records which items it was given."""
    seen: list[str] = []

    def send(request: InferRequest) -> None:
        seen.append(str(request.context.idempotency_key))
        error = fail(request)
        if error is not None:
            raise error

    return seen, send


def test_a_dead_link_stops_the_drain_and_costs_no_item_an_attempt(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_attempts=2)
    keys = [box.put(blob(i)) for i in range(5)]
    seen, down = recording(lambda r: UnavailableError("connection refused"))
    for _ in range(10):  # offline for ten drains
        result = box.drain(down)
        assert result.stopped_by == "connection refused" and result.remaining == 5
    assert len(seen) == 20  # the head and one probe per drain, not all five
    assert [i.attempts for i in box.items()] == [0] * 5 and box.stats()["dead_lettered"] == 0
    seen, refused = recording(lambda r: AuthenticationError("the bearer token is wrong"))
    result = box.drain(refused)  # the deployment's credentials, not the items
    assert "bearer" in str(result.stopped_by) and len(seen) == 1
    assert box.stats()["dead_lettered"] == 0
    seen, up = recording(lambda r: None)
    assert box.drain(up).delivered == 5 and seen == keys


def test_an_item_only_it_gets_unavailable_for_is_found_out_and_dead_lettered(
    tmp_path: Path,
) -> None:
    monotonic = Clock()
    box = Outbox(tmp_path / "o.db", max_attempts=2, monotonic=monotonic)
    bad = box.put(blob(0))
    good = [box.put(blob(i)) for i in range(1, 4)]
    _, send = recording(
        lambda r: UnavailableError("503") if r.context.idempotency_key == bad else None
    )
    first = box.drain(send)
    assert first.delivered == 3 and first.deferred == 1  # the next item answered: not the link
    monotonic.now += 600
    alone = box.drain(send)  # alone in the queue, a 503 cannot be told from a dead link
    assert alone.stopped_by == "503" and box.items()[0].attempts == 1
    good.append(box.put(blob(4)))
    second = box.drain(send)
    assert second.dead_lettered == 1 and [d.key for d in box.dead_letters()] == [bad]
    assert box.stats()["delivered"] == len(good) == 4


def test_rows_that_cannot_be_decoded_are_dead_lettered_not_blockers(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    bad_context, bad_body, good = (box.put(blob(i)) for i in range(3))
    with pytest.raises(InvalidRequestError, match="printable ASCII"):
        box.put(keyed(blob(3), "bad\nkey"))  # refused at put, not at every drain after
    with sqlite3.connect(tmp_path / "o.db") as db:  # damage two rows quick_check cannot see
        db.execute("UPDATE items SET sensitivity = 'secret' WHERE key = ?", (bad_context,))
        db.execute("UPDATE items SET body = x'7b7b' WHERE key = ?", (bad_body,))
    seen, send = recording(lambda r: None)
    result = box.drain(send)
    assert seen == [good] and result.dead_lettered == 2
    assert [d.reason for d in box.dead_letters()] == ["undecodable", "undecodable"]


def test_concurrent_drains_send_each_item_once_and_count_it_once(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    keys = [box.put(blob(i)) for i in range(30)]
    sent: list[str] = []

    def slow(request: InferRequest) -> None:
        sent.append(str(request.context.idempotency_key))
        time.sleep(0.002)

    threads = [threading.Thread(target=box.drain, args=(slow,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(sent) == sorted(keys)  # none twice, none lost
    assert box.stats()["delivered"] == 30 and len(box) == 0


# -- corruption --------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "not-a-database":
        data[:100] = b"x" * 100
    elif how == "damaged-pages":
        page = int.from_bytes(data[16:18], "big")
        for n in range(1, len(data) // page):  # every page but the first
            data[n * page : n * page + 64] = b"\xff" * 64
    else:  # truncated
        data = data[: len(data) // 3]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["not-a-database", "damaged-pages", "truncated"])
def test_a_corrupt_file_is_quarantined_and_reported(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    for i in range(40):
        box.put(blob(i))
    box.close()
    damage(path, how)
    damaged = path.read_bytes()
    with caplog.at_level(logging.ERROR, logger="edgecloud.outbox"):
        fresh = Outbox(path)  # never a crash of the device app
    assert fresh.quarantined is not None and fresh.quarantined.name.startswith("outbox.db.corrupt-")
    assert fresh.quarantined.read_bytes() == damaged  # kept for forensics, byte for byte
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    ((_, moved_to, problem),) = fresh.quarantines()
    assert moved_to == str(fresh.quarantined) and problem
    assert fresh.stats()["quarantined"] == 1 and len(fresh) == 0
    key = fresh.put(blob(0))  # a working outbox again
    fresh.close()
    again = Outbox(path)
    assert again.quarantined is None and again.stats()["quarantined"] == 1  # on record
    assert [i.key for i in again.items()] == [key]
    again.close()
    if how == "not-a-database":  # and the CLI reports it (one run is enough)
        shown = subprocess.run(
            [sys.executable, "-m", "edgecloud.cli", "outbox", str(path)],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"},
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert "quarantined" in shown.stdout and str(fresh.quarantined) in shown.stderr


# -- idempotency keys --------------------------------------------------------------


def keyed(request: InferRequest, key: str, **context: object) -> InferRequest:
    request.context = RequestContext(idempotency_key=key, **context)  # type: ignore[arg-type]
    return request


def test_a_key_reused_with_another_payload_raises_and_stores_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put(keyed(affine(1.0), "k1"))
    with pytest.raises(IdempotencyKeyReuseError, match="k1") as info:
        box.put(keyed(affine(2.0), "k1"))
    assert info.value.status_code == 422
    with pytest.raises(IdempotencyKeyReuseError):
        box.put(keyed(lookup(0), "k1"))  # another model under the key
    box.put(keyed(affine(3.0), "k2", sensitivity=Sensitivity.RESTRICTED))  # a dead letter
    with pytest.raises(IdempotencyKeyReuseError):
        box.put(keyed(affine(4.0), "k2"))  # its key stays bound too
    box.close()
    box = Outbox(tmp_path / "o.db")
    with pytest.raises(IdempotencyKeyReuseError):
        box.put(keyed(affine(5.0), "k1"))  # the binding survives a restart
    stats = box.stats()
    assert stats["key_reuse"] == 4 and stats["pending"] == 1 and stats["dead_letters"] == 1
    sent: list[InferRequest] = []
    box.drain(sent.append)
    (only,) = sent
    np.testing.assert_array_equal(only.inputs["x"], affine(1.0).inputs["x"])  # the first one


def test_concurrent_puts_under_one_key_store_exactly_one(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    errors: list[Exception] = []

    def put(value: float) -> None:
        try:
            box.put(keyed(affine(value), "same"))
        except IdempotencyKeyReuseError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(float(v),)) for v in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(box) == 1 and len(errors) == 7 and box.stats()["key_reuse"] == 7


def test_the_same_key_and_payload_is_a_counted_no_op(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    first = InferRequest("affine", {"x": x})
    again = InferRequest("affine", {"x": np.asfortranarray(x)})  # same values, other layout
    assert box.put(keyed(first, "k")) == box.put(keyed(again, "k")) == "k"
    assert len(box) == 1 and box.stats()["duplicates"] == 1
    # a duplicate that says the data is more sensitive tightens the stored item
    box.put(keyed(InferRequest("affine", {"x": x}), "k", sensitivity=Sensitivity.RESTRICTED))
    (item,) = box.items()
    assert item.sensitivity is Sensitivity.RESTRICTED and box.stats()["duplicates"] == 2
    sent: list[InferResponse] = []
    result = box.drain(sent.append)
    assert sent == [] and result.dead_lettered == 1 and box.stats()["privacy_refused"] == 1
