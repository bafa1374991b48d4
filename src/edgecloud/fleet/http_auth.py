"""The device's bearer token for the fleet server, on every request the agent makes.

``edgecloud serve --token T --fleet ...`` answers 401 to a request without
``Authorization: Bearer T``: metadata, targets and telemetry alike. The agent
sends the token on all three — metadata through python-tuf's ``Updater`` with
:func:`tuf_fetcher` (python-tuf 7's ``Urllib3Fetcher`` takes a user agent but
no other header, so a small ``FetcherInterface`` on httpx), targets and
telemetry through httpx clients built with :func:`auth_headers`.

Where the token comes from, first found wins: ``--token-file`` of ``edgecloud
fleet agent/check``, the ``EDGECLOUD_FLEET_TOKEN`` environment variable, the
``updates.token_file`` of the deployment file. A 401/403 answer is an
:class:`~edgecloud.errors.UpdateAuthError` naming these settings
(:data:`TOKEN_HINT`), never a silent failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DownloadError, UpdateAuthError
from .download import RateFloor

__all__ = [
    "TOKEN_ENV",
    "TOKEN_HINT",
    "auth_headers",
    "read_token",
    "refused",
    "resolve_token",
    "tuf_fetcher",
]

#: The environment variable holding the fleet server's bearer token.
TOKEN_ENV = "EDGECLOUD_FLEET_TOKEN"
#: What an authentication failure tells the operator to set.
TOKEN_HINT = (
    f"set the server's token in updates.token_file of the deployment file, {TOKEN_ENV}, "
    "or --token-file"
)


def auth_headers(token: str | None) -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}``, or no header without a token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def read_token(path: Path, where: str) -> str:
    """The token in file ``path`` (surrounding whitespace stripped).

    Raises:
        ConfigError: naming ``where`` (the setting) when the file is missing,
            unreadable, empty or holds more than one line.
    """
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read the token file {path}: {exc}") from exc
    if not token or any(c in token for c in "\r\n\0"):
        raise ConfigError(f"{where}: {path} must hold the bearer token on one line")
    return token


def resolve_token(cli_file: Path | None, spec_file: Path | None) -> str | None:
    """The token from ``--token-file``, else ``EDGECLOUD_FLEET_TOKEN``, else
    ``updates.token_file`` (``spec_file``, already resolved against the deployment
    file's directory); None when none is set. ConfigError as :func:`read_token`."""
    if cli_file is not None:
        return read_token(cli_file, "--token-file")
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env
    if spec_file is not None:
        return read_token(spec_file, "updates.token_file")
    return None


def refused(status: int, url: str, token: str | None) -> UpdateAuthError:
    """The error for a 401/403 answer to ``url``."""
    sent = "refused the token the device sent" if token else "needs a token and none is set"
    return UpdateAuthError(f"{url}: HTTP {status}: the fleet server {sent}; {TOKEN_HINT}")


def tuf_fetcher(
    token: str | None,
    timeout_s: float,
    *,
    min_rate_bytes_s: float | None = None,
    allowance_s: float = 30.0,
) -> Any:
    """A python-tuf ``FetcherInterface`` that sends ``token``; ``.refused`` holds the
    HTTP status of the last 401/403 it got (None if none), ``.unreachable`` why the
    server could not be reached (``connection refused``, ``timed out after 30 s``;
    None if it was), ``.slow`` the error of a transfer cut by the rate floor, and
    ``.close()`` ends it. Each metadata transfer has the overall
    deadline of :class:`.download.RateFloor` (``min_rate_bytes_s``, ``allowance_s``).

    HTTP errors are python-tuf's ``DownloadHTTPError`` (the ``Updater`` reads
    403/404 on ``N.root.json`` as "no newer root"), a timeout its
    ``SlowRetrievalError``, other transport failures its ``DownloadError``.
    """
    from .._optional import require

    feature = "fleet updates"
    fetcher = require("tuf.ngclient.fetcher", extra="fleet", feature=feature)
    tuf_errors = require("tuf.api.exceptions", extra="fleet", feature=feature)
    httpx = require("httpx", extra="fleet", feature=feature)

    base: Any = fetcher.FetcherInterface

    class _HttpxFetcher(base):  # type: ignore[misc]
        def __init__(self) -> None:
            self.refused: int | None = None
            self.unreachable: str | None = None
            self.slow: str | None = None
            self._client = httpx.Client(timeout=timeout_s, headers=auth_headers(token))

        def _fetch(self, url: str) -> Iterator[bytes]:
            try:
                response = self._client.send(self._client.build_request("GET", url), stream=True)
            except httpx.TimeoutException as exc:
                self.unreachable = f"no answer within {timeout_s:g} s"
                raise tuf_errors.SlowRetrievalError(f"{url}: {self.unreachable}") from exc
            except httpx.HTTPError as exc:
                self.unreachable = _transport_reason(exc)
                raise tuf_errors.DownloadError(f"{url}: {self.unreachable}") from exc
            if response.status_code != 200:
                response.close()
                if response.status_code in (401, 403):
                    self.refused = response.status_code
                raise tuf_errors.DownloadHTTPError(
                    f"{url}: HTTP {response.status_code}", response.status_code
                )
            return self._chunks(response, url)

        def _chunks(self, response: Any, url: str) -> Iterator[bytes]:
            floor = RateFloor(min_rate_bytes_s, allowance_s=allowance_s)
            try:
                for chunk in response.iter_bytes():
                    floor.add(len(chunk), url)
                    yield chunk
            except DownloadError as exc:  # too slow: python-tuf's name for it
                self.slow = exc.message
                raise tuf_errors.SlowRetrievalError(exc.message) from exc
            except httpx.TimeoutException as exc:
                self.unreachable = f"no data within {timeout_s:g} s"
                raise tuf_errors.SlowRetrievalError(f"{url}: {self.unreachable}") from exc
            except httpx.HTTPError as exc:
                self.unreachable = _transport_reason(exc)
                raise tuf_errors.DownloadError(f"{url}: {self.unreachable}") from exc
            finally:
                response.close()

        def close(self) -> None:
            self._client.close()

    return _HttpxFetcher()


def _transport_reason(exc: BaseException) -> str:
    """``connection refused``, ``name not resolved``...: an httpx transport error in words."""
    import errno

    text = str(exc)
    for code in (errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH):
        if f"[Errno {code}]" in text:
            return os.strerror(code).lower()
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "host name not resolved"
    return f"{type(exc).__name__}: {' '.join(text.split())}" if text else type(exc).__name__
