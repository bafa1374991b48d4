"""``/fleet/metadata/<file>`` and ``/fleet/targets/<file>``: the update repository over HTTP.

An ASGI wrapper in front of the inference app (:func:`mount`): these two
prefixes are answered here, every other path goes to the wrapped app (so
``/fleet/telemetry`` and ``/fleet/status`` stay another module's). Files are
served read-only, as a static file server or CDN would serve a TUF repository:
the signatures, not the transport, make them trustworthy.

HTTP semantics (RFC 9110):

* ``GET`` and ``HEAD`` (same headers, no body); other methods 405 with ``Allow``.
* ``Range: bytes=a-b | a- | -n`` → 206 with ``Content-Range``; a ``b`` past
  the end (any number of digits) is clamped to the last byte and an ``n``
  longer than the file selects all of it (section 14.1.2); a range that
  starts at or past the end (or ``-0``) → 416 with ``Content-Range: bytes */size``;
  a header that is not one ``bytes`` range (another unit, bad syntax, several
  ranges) is ignored and the whole file sent with 200, which section 14.2
  allows ("a server MAY ignore the Range header field"): a multipart answer
  would buy nothing for the device agent, which asks one range at a time.
* ``ETag`` (size and mtime, nginx's form) and ``If-Range``: a resumed
  download of a file that changed meanwhile gets the whole new file (200), not
  a splice of two versions. ``Accept-Ranges: bytes`` on every file answer.
* Targets are content-addressed (``<sha256>.<name>``), so cacheable for a year;
  metadata must be revalidated (``no-cache``).

Path safety: each component must start with a letter or digit (no ``..``,
``.``, hidden or temporary files), no NUL or backslash; the resolved path
(symlinks followed) must lie inside ``metadata/`` or ``targets/`` and be a
regular file. Anything else is 404, never a file from outside. ``%2e%2e`` is
decoded by the HTTP server before routing and caught by the same check.

With keys (``--fleet-keys``) a thread re-signs the timestamp once half its
validity has passed, so devices never see it expire while the server runs; the
validity is the one the repository was published with (``expiry.json``, written
at each sign), not a default.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import stat
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["FleetFiles", "mount", "parse_range"]

log = logging.getLogger("edgecloud.server")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Bytes read from disk and sent per message of a file answer.
CHUNK_BYTES = 1 << 20

_COMPONENT = re.compile(r"[A-Za-z0-9][^/\\\x00]*")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")

#: Digits of a range position beyond which it is past any file (``int()`` of a
#: longer string is not even attempted: Python refuses over 4300 digits).
_POS_DIGITS = 30


def _pos(digits: str) -> int:
    """A range position; any longer than :data:`_POS_DIGITS` significant digits
    stands for "past the end of any file" (``2**100``)."""
    digits = digits.lstrip("0") or "0"
    return 2**100 if len(digits) > _POS_DIGITS else int(digits)


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """One ``bytes`` range of a ``size``-byte file as (first, last) inclusive.

    RFC 9110 section 14.1.2: a last-byte-pos at or past the end is clamped to
    ``size - 1`` (however many digits it has), a suffix longer than the file
    selects the whole file. None: no usable range (absent, another unit, bad
    syntax, first > last, several ranges: send the whole file).
    ``"unsatisfiable"``: a syntactically valid range that selects nothing: a
    first-byte-pos at or past the end, ``-0``, or any range of an empty file
    (416).
    """
    match = _RANGE.fullmatch(header.strip())
    if match is None or (not match[1] and not match[2]):
        return None
    if not match[1]:  # suffix: the last n bytes
        length = _pos(match[2])
        if length == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    first = _pos(match[1])
    if match[2] and _pos(match[2]) < first:
        return None  # invalid syntax (RFC 9110 14.1.1): ignored
    if first >= size:
        return "unsatisfiable"
    return first, min(_pos(match[2]) if match[2] else size - 1, size - 1)


class FleetFiles:
    """ASGI app: the update repository at ``root`` under ``/fleet/``, else ``inner``."""

    def __init__(
        self, inner: ASGIApp, root: Path, *, token: str | None = None, keys: Path | None = None
    ) -> None:
        self.inner = inner
        self.root = root
        self._dirs = {kind: (root / kind).resolve() for kind in ("metadata", "targets")}
        self._token = token.encode() if token else None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        if keys is not None:
            from ..fleet.update_repo import UpdateRepository

            repo = UpdateRepository(root, keys)
            self._refresh_if_due(repo)  # errors (wrong key) surface at start-up
            self._refresher = threading.Thread(
                target=self._refresh_loop, args=(repo,), name="fleet-timestamp", daemon=True
            )
            self._refresher.start()

    def __getattr__(self, name: str) -> Any:  # the inner app's attributes (ready, host)
        return getattr(self.inner, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(("/fleet/metadata/", "/fleet/targets/")):
            await self.inner(scope, receive, send)
            return
        status, headers, file, span = self._answer(scope)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if file is None:  # an error: span is its body
            await send({"type": "http.response.body", "body": span})
        elif scope["method"] == "HEAD":
            file.close()
            await send({"type": "http.response.body", "body": b""})
        else:
            await _stream(file, span, send)

    def close(self) -> None:
        """Stop re-signing the timestamp."""
        self._stop.set()

    # -- answering -------------------------------------------------------------

    def _answer(self, scope: Scope) -> tuple[int, list[Any], Any, Any]:
        """(status, headers, open file or None, (first, last) or an error body)."""
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            return _plain(405, b"use GET or HEAD\n", [(b"allow", b"GET, HEAD")])
        if not self._authorized(scope):
            return _plain(401, b"this server needs 'Authorization: Bearer <token>'\n")
        file = self._open(scope["path"])
        if file is None:
            return _plain(404, b"no such file\n")
        info = os.fstat(file.fileno())
        size = info.st_size
        etag = f'"{size:x}-{info.st_mtime_ns:x}"'.encode()
        kind = scope["path"].split("/")[2]
        targets = kind == "targets"
        headers = [
            (b"accept-ranges", b"bytes"),
            (b"etag", etag),
            (b"cache-control", b"public, max-age=31536000, immutable" if targets else b"no-cache"),
            (b"content-type", b"application/octet-stream" if targets else b"application/json"),
        ]
        wanted = _header(scope, b"range")
        if_range = _header(scope, b"if-range")
        span = None
        if wanted is not None and (if_range is None or if_range.encode() == etag):
            span = parse_range(wanted, size)
        if span == "unsatisfiable":
            file.close()
            status, plain, _, body = _plain(416, b"range not satisfiable\n")
            return status, [*plain, (b"content-range", f"bytes */{size}".encode())], None, body
        if isinstance(span, tuple):
            first, last = span
            headers += [
                (b"content-range", f"bytes {first}-{last}/{size}".encode()),
                (b"content-length", str(last - first + 1).encode()),
            ]
            return 206, headers, file, span
        headers.append((b"content-length", str(size).encode()))
        return 200, headers, file, (0, size - 1)

    def _open(self, url_path: str) -> Any:
        """The regular file ``url_path`` names inside the repository, open; None: 404."""
        parts = url_path.split("/")[2:]  # ["metadata" | "targets", *components]
        kind, rest = parts[0], parts[1:]
        if not rest or not all(_COMPONENT.fullmatch(p) for p in rest):
            return None
        base = self._dirs[kind]
        try:
            resolved = base.joinpath(*rest).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(base):
            return None
        try:
            fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")

    def _authorized(self, scope: Scope) -> bool:
        if self._token is None:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    token.strip(), self._token
                )
        return False

    # -- re-signing the timestamp ------------------------------------------------

    def _refresh_if_due(self, repo: Any) -> None:
        """Re-sign the timestamp when less than half its validity is left, for the validity
        the repository was last published with (``expiry.json``: a publish with
        ``--timestamp-days 7`` while the server runs is followed at the next tick)."""
        from ..fleet.update_repo import recorded_expiry

        repo.expiry = recorded_expiry(repo.path)
        left = repo.timestamp_expires() - datetime.now(UTC)
        if left < repo.expiry.of("timestamp") / 2:
            version = repo.refresh_timestamp()
            log.info("fleet: re-signed timestamp.json as version %d", version)

    def _refresh_loop(self, repo: Any) -> None:
        period = max(1.0, min(60.0, repo.expiry.of("timestamp").total_seconds() / 8))
        while not self._stop.wait(period):
            try:
                self._refresh_if_due(repo)
            except Exception:  # keep serving; the next tick retries
                log.exception("fleet: cannot re-sign timestamp.json")


def _plain(
    status: int, body: bytes, extra: list[Any] | None = None
) -> tuple[int, list[Any], None, bytes]:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    return status, headers, None, body


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _stream(file: Any, span: tuple[int, int], send: Send) -> None:
    """Send bytes ``span[0]..span[1]`` of ``file`` in chunks read off the event loop."""
    first, last = span
    left = last - first + 1
    try:
        file.seek(first)
        while left > 0:
            chunk = await asyncio.to_thread(file.read, min(CHUNK_BYTES, left))
            if not chunk:  # the file shrank under us: end the answer short
                break
            left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        file.close()


def mount(app: ASGIApp, settings: Any, token: str | None) -> Any:
    """``app`` behind :class:`FleetFiles` when ``settings.fleet`` is set, else ``app``.

    Raises:
        ConfigError: the directory holds no update repository.
        UpdateRepositoryError: ``fleet_keys`` has no valid timestamp key.
    """
    if settings.fleet is None:
        return app
    from ..errors import ConfigError

    if not (settings.fleet / "metadata" / "root.json").is_file():
        raise ConfigError(
            f"--fleet {settings.fleet} is not an update repository (no metadata/root.json); "
            f"create it with: edgecloud fleet keys --keys fleet-keys --fleet {settings.fleet}"
        )
    return FleetFiles(app, settings.fleet, token=token, keys=settings.fleet_keys)
