"""The outbox against the failure modes of durable queues (issue 14, item 5; item 1).

One test per member of the kind: a full disk (a real tiny filesystem, and
SQLite's own page limit), the wall clock jumping forward and back (while
open and across a restart), a poison item a real server fails forever, a
failure that only looks like one (the link is down, the credentials are
wrong), a corrupt file (not a database, damaged pages, truncated), and an
idempotency key reused with another payload or the same one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
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
from edgecloud.server import idempotency
from edgecloud.wire.fingerprint import binding, request_fingerprint

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


def test_a_key_reused_with_other_requested_outputs_is_reuse_as_on_the_server(
    tmp_path: Path,
) -> None:
    """The outbox binds a key as the server does (:func:`binding`: fingerprint and
    requested outputs), so it never keeps one of two requests the server tells apart."""
    box = Outbox(tmp_path / "o.db")
    x = {"x": np.ones((1, 4), np.float32)}
    context = RequestContext(idempotency_key="K1")
    box.put(InferRequest("affine", x, outputs=["y", "z"], context=context))
    assert box.put(InferRequest("affine", x, outputs=["z", "y"], context=context)) == "K1"
    assert box.stats()["duplicates"] == 1  # the same outputs in another order: the same
    for outputs in (["y"], ["w"], None):  # fewer, others, all of them
        with pytest.raises(IdempotencyKeyReuseError, match="K1"):
            box.put(InferRequest("affine", x, outputs=outputs, context=context))
    assert box.stats()["key_reuse"] == 3 and len(box) == 1
    (sent,) = [r for r in _drained(box)]
    assert sent.outputs is not None and sorted(sent.outputs) == ["y", "z"]
    assert idempotency.binding is binding  # one function: the server binds keys as we do


def _drained(box: Outbox) -> list[InferRequest]:
    sent: list[InferRequest] = []
    box.drain(sent.append)
    return sent


# -- damage the integrity check cannot see ------------------------------------------


def crashed(path: Path, n: int = 20) -> list[str]:
    """An outbox whose ``n`` items are still in its write-ahead log, as a process
    killed before closing leaves it (the files copied while it is open)."""
    live = path.parent / "live"
    live.mkdir()
    box = Outbox(live / path.name, monotonic=Clock())
    keys = [
        box.put(InferRequest("affine", {"x": np.full((1, 4), i, np.float32)})) for i in range(n)
    ]
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{live / path.name}{suffix}", f"{path}{suffix}")
    box.close()
    assert Path(f"{path}-wal").stat().st_size > 0
    return keys


def scribble(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


WAL_DAMAGE: dict[str, Callable[[Path], None]] = {
    "log middle": lambda p: scribble(
        Path(f"{p}-wal"), Path(f"{p}-wal").stat().st_size // 2, os.urandom(200)
    ),
    "log header": lambda p: scribble(Path(f"{p}-wal"), 0, os.urandom(32)),
    "first frame": lambda p: scribble(Path(f"{p}-wal"), 32 + 24 + 3000, b"\xff" * 8),
    "a frame's salts": lambda p: scribble(Path(f"{p}-wal"), 32 + 2 * (24 + 4096) + 8, b"\0" * 8),
    "log cut mid-commit": lambda p: os.truncate(f"{p}-wal", Path(f"{p}-wal").stat().st_size - 1000),
    "database emptied": lambda p: os.truncate(p, 0),
}


@pytest.mark.parametrize("how", list(WAL_DAMAGE))
def test_a_damaged_write_ahead_log_is_reported_not_silently_replayed_short(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    keys = crashed(path)
    WAL_DAMAGE[how](path)
    damaged = Path(f"{path}-wal").read_bytes()
    with caplog.at_level(logging.ERROR, logger="edgecloud.outbox"):
        box = Outbox(path)
    assert box.quarantined is not None  # SQLite alone would open it and lose items quietly
    assert Path(f"{box.quarantined}-wal").read_bytes() == damaged  # kept for forensics
    assert any("damaged" in r.getMessage() for r in caplog.records)
    ((_, where, problem),) = box.quarantines()
    assert where == str(box.quarantined) and ("write-ahead log" in problem), problem
    assert box.stats()["quarantined"] == 1
    left = [i.key for i in box.items()]
    assert left == keys[: len(left)] and len(left) < len(keys)  # what SQLite could recover
    key = box.put(blob(0))  # and a working outbox
    assert [r.context.idempotency_key for r in _drained(box)] == [*left, key]
    box.close()
    again = Outbox(path)  # reported once, not at every open
    assert again.quarantined is None and again.stats()["quarantined"] == 1
    again.close()


def test_an_intact_log_after_a_crash_or_in_use_by_another_process_is_no_alarm(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.db"
    keys = crashed(path)
    box = Outbox(path)  # replayed in full: nothing to report
    assert box.quarantined is None and [i.key for i in box.items()] == keys
    more = [box.put(blob(i)) for i in range(5)]
    other = Outbox(path)  # the log is live (another opener): not checked, not alarmed
    assert other.quarantined is None and other.stats()["quarantined"] == 0
    assert [i.key for i in other.items()] == keys + more
    other.close()
    box.close()


def test_a_body_altered_on_disk_is_a_counted_dead_letter_never_sent(tmp_path: Path) -> None:
    """Damage inside a cleanly closed file that ``quick_check`` passes: every body is
    checked against the binding stored with it before it is sent."""
    path = tmp_path / "o.db"
    box = Outbox(path)
    keys = [
        box.put(InferRequest("affine", {"x": np.full((1, 64), i, np.float32)})) for i in range(100)
    ]
    box.close()
    data = bytearray(path.read_bytes())
    at = data.find(np.full(64, 77, np.float32).tobytes())
    data[at + 40 : at + 44] = np.float32(-1e30).tobytes()
    path.write_bytes(bytes(data))
    box = Outbox(path)
    assert box.quarantined is None  # a valid database, so quick_check is content
    with sqlite3.connect(path) as db:  # two more members: the model and the binding column
        db.execute("UPDATE items SET model = 'lookup' WHERE key = ?", (keys[3],))
        db.execute("UPDATE items SET fingerprint = ? WHERE key = ?", ("0" * 64, keys[5]))
    sent = _drained(box)
    assert len(sent) == 97 and all(np.all(r.inputs["x"] == r.inputs["x"][0, 0]) for r in sent)
    dead = box.dead_letters()
    assert [d.key for d in dead] == [keys[3], keys[5], keys[77]]
    assert {d.reason for d in dead} == {"corrupt"} and "altered" in dead[0].error
    assert box.stats()["corrupt"] == 3 and box.stats()["dead_lettered"] == 3


# -- every outcome of a send ---------------------------------------------------------


@pytest.mark.parametrize(
    "error", [ValueError("cannot decode the answer"), KeyError("outputs"), RuntimeError("bug")]
)
def test_an_unexpected_exception_from_send_costs_an_attempt_never_the_queue(
    tmp_path: Path, error: Exception
) -> None:
    monotonic = Clock()
    box = Outbox(tmp_path / "o.db", max_attempts=3, monotonic=monotonic)
    bad = box.put(blob(0))
    good = [box.put(blob(i)) for i in range(1, 4)]
    seen, send = recording(lambda r: error if r.context.idempotency_key == bad else None)
    first = box.drain(send)  # the items behind it go through
    assert (first.delivered, first.deferred, first.stopped_by) == (3, 1, None)
    (item,) = box.items()
    assert item.attempts == 1 and type(error).__name__ in str(item.last_error)
    for _ in range(6):
        monotonic.now += 600  # past its backoff
        box.drain(send)
    (dead,) = box.dead_letters()
    assert dead.key == bad and dead.reason == "poisoned" and type(error).__name__ in dead.error
    assert seen.count(bad) == 3 and [k for k in seen if k != bad] == good


def test_each_outcome_of_a_send_is_classified(tmp_path: Path) -> None:
    """Delivered; the caller's mistake (dead letter at once); the item's own failure
    (attempt counted); the link down, also as a raw socket error (stop, no attempt)."""
    monotonic = Clock()
    box = Outbox(tmp_path / "o.db", max_attempts=5, monotonic=monotonic)
    mistake, own, fine = box.put(blob(0)), box.put(blob(1)), box.put(blob(2))
    outcomes: dict[str, Exception] = {
        mistake: InvalidRequestError("input 'x' has the wrong shape"),
        own: ZeroDivisionError("division by zero"),
    }
    _, send = recording(lambda r: outcomes.get(str(r.context.idempotency_key)))
    result = box.drain(send)
    assert (result.delivered, result.dead_lettered, result.deferred) == (1, 1, 1)
    assert [d.reason for d in box.dead_letters()] == ["rejected"]
    assert [(i.key, i.attempts) for i in box.items()] == [(own, 1)]
    for down in (ConnectionRefusedError("refused"), TimeoutError("timed out")):
        later = box.put(blob(3 + len(box)))
        monotonic.now += 600
        _, dead = recording(lambda r, down=down: down)  # type: ignore[misc]
        stopped = box.drain(dead)
        assert stopped.stopped_by is not None and type(down).__name__ in stopped.stopped_by
        assert [(i.key, i.attempts) for i in box.items()][-1] == (later, 0)
    assert [i.attempts for i in box.items()] == [1, 0, 0]  # the link cost nobody an attempt
    assert box.stats()["delivered"] == 1 and fine not in [i.key for i in box.items()]


# -- clocks from another time namespace -----------------------------------------------


def test_a_monotonic_clock_from_another_namespace_expires_nothing_at_once(
    tmp_path: Path,
) -> None:
    """The same ``boot_id`` but ``CLOCK_BOOTTIME`` offset (``unshare --time``, a CRIU
    restore): no single reading credits more than ``max_clock_credit_s`` unless the
    wall clock agrees."""
    wall, monotonic = Clock(), Clock()

    def reopen() -> Outbox:
        return Outbox(
            tmp_path / "o.db", ttl_s=TTL, max_clock_credit_s=600, clock=wall,
            monotonic=monotonic, boot=lambda: "boot-1",
        )  # fmt: skip

    box = reopen()
    keys = [box.put(blob(i)) for i in range(8)]
    box.close()
    monotonic.now += 30 * 86_400  # reopened in another time namespace: 600 s credited
    box = reopen()
    assert [i.key for i in box.items()] == keys and box.stats()["expired"] == 0
    monotonic.now += 30 * 86_400  # and while open (a process restored by CRIU): 600 s
    late = box.put(blob(8))
    assert len(box) == 9 and box.stats()["expired"] == 0
    monotonic.now -= 90 * 86_400  # a clock that goes back credits nothing
    assert len(box) == 9
    for _ in range(4):  # readings of a plausible size count in full: 1200 + 4 x 599
        monotonic.now += 599
        assert len(box) == 9
    monotonic.now += 5  # 3601 s observed: the first eight are a TTL old
    box.put(blob(9))
    assert box.stats()["expired"] == 8 and late in [i.key for i in box.items()]
    box.close()
    wall.now += 2 * TTL  # a real downtime, both clocks agree: credited in full
    monotonic.now += 2 * TTL
    box = reopen()
    assert _drained(box) == [] and box.stats()["expired"] == 10


# -- a full disk must not wedge the queue ----------------------------------------------


def mounted_tmpfs(where: Path, size: str) -> Path:
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return where


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mountpoint = mounted_tmpfs(tmp_path / "small", "1m")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_full_disk_drains_every_item_once_and_takes_puts_again(
    small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = small_fs / "o.db"
    box = Outbox(path, monotonic=Clock())
    assert Path(f"{path}-reserve").exists()  # kept free beside the database
    keys, error = fill_until_full(box)
    assert "disk is full" in error.message and len(keys) > 50
    sent: list[str] = []
    with caplog.at_level(logging.WARNING, logger="edgecloud.outbox"):
        result = box.drain(lambda r: sent.append(str(r.context.idempotency_key)))
    assert any("released its reserve" in r.getMessage() for r in caplog.records)
    assert result.delivered == len(keys) and result.remaining == 0
    assert sent == keys  # each once, in order: nothing re-sent
    assert box.stats()["delivered"] == len(keys)
    assert Path(f"{path}-reserve").exists()  # re-created once space returned
    more = [box.put(blob(i)) for i in range(20)]  # puts work again
    assert [r.context.idempotency_key for r in _drained(box)] == more
    box.close()


def test_a_delete_that_fails_stops_the_drain_and_never_resends(small_fs: Path) -> None:
    """No reserve could be made (the disk was full at open): the first delete after a
    send fails; the drain stops there, later drains send nothing until the delete
    succeeds, and that item is counted delivered once."""
    path = small_fs / "o.db"
    box = Outbox(path, monotonic=Clock())
    keys, _ = fill_until_full(box)
    box.close()
    Path(f"{path}-reserve").unlink()
    ballast = small_fs / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):  # take every byte left
        while os.write(fd, b"\0" * 4096):
            pass
    os.close(fd)
    box = Outbox(path, monotonic=Clock())  # opening writes nothing: it opens
    assert not Path(f"{path}-reserve").exists()
    sent: list[str] = []

    def send(request: InferRequest) -> None:
        sent.append(str(request.context.idempotency_key))

    for _ in range(3):
        with pytest.raises(OutboxStorageError, match="disk is full"):
            box.drain(send)
    assert sent == keys[:1]  # sent once, not once per drain
    ballast.unlink()  # space returns
    result = box.drain(send)
    assert result.delivered == len(keys) and result.remaining == 0
    assert sent == keys and box.stats()["delivered"] == len(keys)
    box.close()


@pytest.mark.parametrize(
    "column, value",
    [
        ("sensitivity", 5),  # a number where text belongs
        ("local_only", "yes"),
        ("header_length", 10**9),  # a JSON header longer than the body
        ("header_length", -3),
        ("body", b"\x00" * 64),
        ("version", 7),
        ("model", b"\xff\xfe"),
    ],
)
def test_no_damaged_row_stops_the_queue(tmp_path: Path, column: str, value: object) -> None:
    box = Outbox(tmp_path / "o.db")
    bad, good = box.put(blob(0)), box.put(blob(1))
    with sqlite3.connect(tmp_path / "o.db") as db:
        db.execute(f"UPDATE items SET {column} = ? WHERE key = ?", (value, bad))
    seen, send = recording(lambda r: None)
    result = box.drain(send)  # never raises, never stops at the row
    assert seen == [good] and result.remaining == 0 and result.dead_lettered == 1
    assert [d.key for d in box.dead_letters()] == [bad]


def test_a_schema_2_file_is_rebound_with_outputs_and_still_checked(tmp_path: Path) -> None:
    """Schema 2 bound keys to the fingerprint alone: rows that named their outputs
    are re-bound at open, so a retry is still a duplicate, and a body altered
    before the upgrade is still found out."""
    path = tmp_path / "o.db"
    box = Outbox(path)
    x = {"x": np.ones((1, 4), np.float32)}
    kept = InferRequest("affine", x, outputs=["y"], context=RequestContext(idempotency_key="a"))
    altered = InferRequest(
        "affine", {"x": np.full((1, 4), 7, np.float32)}, outputs=["y"],
        context=RequestContext(idempotency_key="b"),
    )  # fmt: skip
    box.put(kept)
    box.put(altered)
    box.close()
    with sqlite3.connect(path) as db:  # as schema 2 wrote them
        for request in (kept, altered):
            db.execute(
                "UPDATE items SET fingerprint = ? WHERE key = ?",
                (request_fingerprint(request), request.context.idempotency_key),
            )
        db.execute("UPDATE items SET model = 'lookup' WHERE key = 'b'")
        db.execute("PRAGMA user_version = 2")
    box = Outbox(path)
    assert box.put(kept) == "a" and box.stats()["duplicates"] == 1
    assert [r.context.idempotency_key for r in _drained(box)] == ["a"]
    assert [(d.key, d.reason) for d in box.dead_letters()] == [("b", "corrupt")]
