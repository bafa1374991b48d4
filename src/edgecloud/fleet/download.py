"""Resumable target downloads into a staging file, within a bandwidth budget and on allowed links.

python-tuf's ``Updater.download_target`` neither resumes nor writes
atomically, so the agent fetches targets itself (the way Mender's client
resumes an artifact): bytes are appended to ``<staging>.part`` as they
arrive; a restart sends ``Range: bytes=<size>-`` and appends the rest.

The prefix already on disk is never trusted on its own: when the file is
complete its length and sha256 are checked against the *signed*
``TargetFile`` (the final hash over the whole file decides). A staging file
longer than the target, or one that fails the check after a resume, is
discarded and the target fetched again from byte 0 once. Only a verified file
is returned to the caller, which renames or installs it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DownloadError, LinkNotAllowedError
from ..repository import sha256_file
from .agent_state import storage_errors

__all__ = [
    "METERED_LINKS",
    "MIN_RATE_ALLOWANCE_S",
    "MIN_RATE_BYTES_S",
    "FetchResult",
    "LinkPolicy",
    "RateFloor",
    "TokenBucket",
    "env_link",
    "fetch_target",
]

#: Link types (``EDGECLOUD_LINK``) that cost money per byte: refused when ``metered_ok`` is false.
METERED_LINKS = frozenset({"cellular", "metered", "satellite"})

MIN_BURST_BYTES = 16 * 1024
"""Smallest default burst of the token bucket, bytes (else a tenth of a second of the rate)."""


MIN_RATE_BYTES_S = 1024.0
"""Default slowest average transfer rate, bytes/s, a download may keep after
:data:`MIN_RATE_ALLOWANCE_S` (a 1 MB model gets ~17 minutes; a mirror that
drips a byte a second is cut after the allowance)."""

MIN_RATE_ALLOWANCE_S = 30.0
"""Seconds a transfer may take regardless of its size (connection setup, a slow start)."""


class RateFloor:
    """An overall deadline for one transfer: after ``allowance_s`` seconds, at least
    ``min_rate_bytes_s`` on average, else DownloadError.

    httpx's (and urllib3's) read timeout is per read, so a server that sends a
    byte just before each timeout holds a client forever (the "slow retrieval"
    attack of TUF's threat model). At ``t`` seconds into the transfer the bytes
    received must be at least ``min_rate_bytes_s * (t - allowance_s)``, which
    for a file of ``n`` bytes is a deadline of ``allowance_s + n / min_rate``
    that cuts a dripping server as soon as it falls behind, without knowing
    ``n`` beforehand (metadata too). ``min_rate_bytes_s`` None disables it.
    """

    def __init__(
        self,
        min_rate_bytes_s: float | None = MIN_RATE_BYTES_S,
        *,
        allowance_s: float = MIN_RATE_ALLOWANCE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_rate_bytes_s is not None and not (0 < min_rate_bytes_s < float("inf")):
            raise ConfigError(f"min_rate_bytes_s must be a positive number, not {min_rate_bytes_s}")
        if not (0 <= allowance_s < float("inf")):
            raise ConfigError(
                f"the allowance must be a non-negative number of seconds, not {allowance_s}"
            )
        self.min_rate = min_rate_bytes_s
        self.allowance_s = allowance_s
        self._clock = clock
        self._start = clock()
        self.received = 0

    def add(self, n: int, what: str) -> None:
        """Count ``n`` bytes of ``what`` (a URL); DownloadError when the transfer is too slow."""
        self.received += n
        if self.min_rate is None:
            return
        late = self._clock() - self._start - self.allowance_s
        if late > 0 and self.received < self.min_rate * late:
            raise DownloadError(
                f"{what}: too slow ({self.received} B in {late + self.allowance_s:.1f} s, "
                f"under the minimum {self.min_rate:g} B/s after {self.allowance_s:g} s; "
                "updates.min_rate_bytes_s); the bytes received are kept for a resume"
            )


def env_link() -> str:
    """The device's current link type from ``EDGECLOUD_LINK`` (``wifi``, ``ethernet``,
    ``cellular``...); ``unknown`` when unset. Read at every check, so a device that
    moves from Wi-Fi to cellular stops downloading at the next chunk."""
    return os.environ.get("EDGECLOUD_LINK", "unknown").strip().lower() or "unknown"


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    """Which links may carry update bytes."""

    metered_ok: bool = True
    """Download on a metered link (:data:`METERED_LINKS`)."""
    link: Callable[[], str] = env_link
    """Returns the current link type (default :func:`env_link`)."""

    def check(self) -> None:
        """LinkNotAllowedError when the current link may not carry updates."""
        current = self.link()
        if not self.metered_ok and current in METERED_LINKS:
            raise LinkNotAllowedError(
                f"the device is on a metered link ({current!r}) and updates have "
                "metered_ok: false; the download resumes on another link"
            )


class TokenBucket:
    """A token bucket of bytes: at most ``rate_bytes_s`` on average, bursts up to ``burst_bytes``.

    ``take(n)`` blocks (``sleep``) until ``n`` tokens are there. The classic
    shaper (RFC 2697's single-rate bucket without the colours). ``rate_bytes_s``
    None means unlimited; ``burst_bytes`` defaults to a tenth of a second of the
    rate, at least :data:`MIN_BURST_BYTES`.
    """

    def __init__(
        self,
        rate_bytes_s: float | None,
        *,
        burst_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_bytes_s is not None and not (0 < rate_bytes_s < float("inf")):
            raise ConfigError(f"bandwidth must be a positive number of bytes/s, not {rate_bytes_s}")
        self.rate = rate_bytes_s
        default = max(MIN_BURST_BYTES, int((rate_bytes_s or 0) / 10))
        self.burst = burst_bytes if burst_bytes is not None else default
        if self.burst <= 0:
            raise ConfigError(f"burst_bytes must be positive, not {self.burst}")
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> float:
        """Charge ``n`` bytes; returns the seconds slept to stay within the rate."""
        if self.rate is None or n <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n  # may go negative: a chunk larger than the burst waits longer
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What one :func:`fetch_target` moved."""

    path: Path
    """The verified file (the staging file, complete)."""
    downloaded: int
    """Bytes received in this call."""
    resumed_from: int
    """Bytes of the staging file kept from an earlier, interrupted try."""
    redownloaded: int
    """Bytes received again because a kept prefix was discarded (too long, wrong hash)."""


def fetch_target(
    client: Any,
    url: str,
    staging: Path,
    *,
    length: int,
    sha256: str,
    bucket: TokenBucket | None = None,
    links: LinkPolicy | None = None,
    min_rate_bytes_s: float | None = MIN_RATE_BYTES_S,
    allowance_s: float = MIN_RATE_ALLOWANCE_S,
) -> FetchResult:
    """Download ``url`` into ``staging`` (resuming what is there) and verify it.

    ``client``: an ``httpx.Client``. ``length`` (bytes) and ``sha256`` (hex)
    come from the signed ``TargetFile``. Raises DownloadError (HTTP failure,
    a body longer than ``length``, a hash mismatch after a fresh download —
    the staging file is then removed), UpdateAuthError (a 401/403: the
    ``Authorization`` header of ``client`` is missing or wrong) or
    LinkNotAllowedError (the staging file is kept for a later resume). A
    transfer slower than ``min_rate_bytes_s`` on average after ``allowance_s``
    (:class:`RateFloor`) is a DownloadError that keeps the staging prefix.
    Storage failures (a full disk, a read-only directory) are
    :class:`~edgecloud.errors.UpdateStorageError` (:func:`storage_errors`).
    """
    with storage_errors(f"staging {staging.name}"):
        return _fetch_target(
            client, url, staging, length, sha256, bucket, links or LinkPolicy(),
            lambda: RateFloor(min_rate_bytes_s, allowance_s=allowance_s),
        )  # fmt: skip


def _fetch_target(
    client: Any,
    url: str,
    staging: Path,
    length: int,
    sha256: str,
    bucket: TokenBucket | None,
    policy: LinkPolicy,
    floor: Callable[[], RateFloor],
) -> FetchResult:
    kept, dropped = _kept_prefix(staging, length, sha256)
    if kept == length:
        return FetchResult(staging, 0, kept, 0)
    got = _stream(client, url, staging, kept, length, bucket, policy, floor())
    if sha256_file(staging) == sha256 and staging.stat().st_size == length:
        return FetchResult(staging, got, kept, dropped)
    staging.unlink(missing_ok=True)
    if kept == 0:
        raise DownloadError(f"{url}: the downloaded bytes do not match the signed sha256")
    # The kept prefix was wrong (a torn write, another file): fetch it all once more.
    again = _stream(client, url, staging, 0, length, bucket, policy, floor())
    if sha256_file(staging) != sha256:
        staging.unlink(missing_ok=True)
        raise DownloadError(f"{url}: the downloaded bytes do not match the signed sha256")
    return FetchResult(staging, got + again, 0, dropped + kept)


def _kept_prefix(staging: Path, length: int, sha256: str) -> tuple[int, int]:
    """(bytes of ``staging`` to resume from, bytes discarded)."""
    try:
        size = staging.stat().st_size
    except FileNotFoundError:
        return 0, 0
    if size > length or (size == length and sha256_file(staging) != sha256):
        staging.unlink()
        return 0, size
    return size, 0


def _stream(
    client: Any,
    url: str,
    staging: Path,
    start: int,
    length: int,
    bucket: TokenBucket | None,
    links: LinkPolicy,
    floor: RateFloor,
) -> int:
    """Append bytes ``start..length`` of ``url`` to ``staging``; returns bytes received."""
    httpx = _httpx()
    links.check()
    headers = {"Range": f"bytes={start}-"} if start else {}
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        with client.stream("GET", url, headers=headers) as response:
            start = _resume_point(response, url, start)
            received = 0
            with staging.open("r+b" if staging.exists() else "wb") as out:
                out.truncate(start)
                out.seek(start)
                for chunk in response.iter_bytes():  # as received: a cut keeps its prefix
                    if start + received + len(chunk) > length:
                        raise _Discard(
                            f"{url}: the server sent more than the signed {length} bytes"
                        )
                    links.check()
                    if bucket is not None:
                        bucket.take(len(chunk))
                    out.write(chunk)
                    out.flush()  # the prefix survives a SIGKILL of this process
                    received += len(chunk)
                    floor.add(len(chunk), url)  # after the write: a cut keeps the prefix
                os.fsync(out.fileno())
    except httpx.HTTPError as exc:
        raise DownloadError(f"{url}: {type(exc).__name__}: {exc}") from exc
    except _Discard:  # the bytes are wrong, not late: the staging file cannot be resumed
        staging.unlink(missing_ok=True)
        raise
    return received


def _resume_point(response: Any, url: str, start: int) -> int:
    """Where the body of ``response`` goes in the staging file."""
    if response.status_code == 200:
        return 0  # no range support (or a fresh fetch): the whole file again
    if response.status_code == 206 and start:
        first = response.headers.get("content-range", "").removeprefix("bytes ").split("-")[0]
        if first.strip() != str(start):
            raise _Discard(f"{url}: asked for bytes {start}- and got Content-Range {first!r}")
        return start
    if response.status_code in (401, 403):  # the token, not the file: kept for a retry
        from .http_auth import refused

        raise refused(response.status_code, url, response.request.headers.get("authorization"))
    if response.status_code == 416:  # the server's file is shorter than what is staged
        raise _Discard(f"{url}: HTTP 416 for bytes {start}-")
    raise DownloadError(f"{url}: HTTP {response.status_code}")  # 5xx, 404: kept for a retry


class _Discard(DownloadError):
    """A download whose bytes are wrong (too long, another range): its staging file goes."""


def _httpx() -> Any:
    from .._optional import require

    return require("httpx", extra="fleet", feature="fleet updates")
