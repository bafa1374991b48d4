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

from ..errors import ConfigError, UpdateAuthError

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


def tuf_fetcher(token: str | None, timeout_s: float) -> Any:
    """A python-tuf ``FetcherInterface`` that sends ``token``; ``.refused`` holds the
    HTTP status of the last 401/403 it got (None if none) and ``.close()`` ends it.

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
            self._client = httpx.Client(timeout=timeout_s, headers=auth_headers(token))

        def _fetch(self, url: str) -> Iterator[bytes]:
            try:
                response = self._client.send(self._client.build_request("GET", url), stream=True)
            except httpx.TimeoutException as exc:
                raise tuf_errors.SlowRetrievalError(f"{url}: {exc}") from exc
            except httpx.HTTPError as exc:
                raise tuf_errors.DownloadError(f"{url}: {type(exc).__name__}: {exc}") from exc
            if response.status_code != 200:
                response.close()
                if response.status_code in (401, 403):
                    self.refused = response.status_code
                raise tuf_errors.DownloadHTTPError(
                    f"{url}: HTTP {response.status_code}", response.status_code
                )
            return self._chunks(response, url)

        def _chunks(self, response: Any, url: str) -> Iterator[bytes]:
            try:
                yield from response.iter_bytes()
            except httpx.TimeoutException as exc:
                raise tuf_errors.SlowRetrievalError(f"{url}: {exc}") from exc
            except httpx.HTTPError as exc:
                raise tuf_errors.DownloadError(f"{url}: {type(exc).__name__}: {exc}") from exc
            finally:
                response.close()

        def close(self) -> None:
            self._client.close()

    return _HttpxFetcher()
