"""The one check of a v2 server's address and client timeout, shared by every client.

A remote URL is ``scheme://host[:port][/]``: scheme ``http``, ``https``, ``grpc`` or
``grpcs`` (lower case), a host (DNS name, IPv4 or a bracketed IPv6 address), an
optional port 1-65535 (RFC 3986 section 3.2.3; no leading zero, so ``:99999`` is never
read modulo 2^16 by a lower layer), and nothing else: no path, query, fragment or
``user:password@`` (a token goes in ``token_env``, never in a URL that is logged).
:data:`URL_PATTERN` states exactly that, so the deployment file's JSON Schema and
:func:`check_url` agree.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from ..errors import ConfigError

__all__ = ["MAX_TIMEOUT_S", "URL_PATTERN", "RemoteURL", "check_timeout", "check_url"]

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"

#: A whole remote URL (ECMA-262 and Python ``re`` read it alike).
URL_PATTERN = rf"^(?:https?|grpcs?)://{_HOST}(?::{_PORT})?/?$"

#: Longest client timeout, seconds: an hour. Longer is a mistyped number (``1e300``,
#: ``.inf`` overflow the HTTP and gRPC clients' deadline arithmetic), not a wait.
MAX_TIMEOUT_S = 3600.0

_SCHEMES = ("http", "https", "grpc", "grpcs")


class RemoteURL(NamedTuple):
    scheme: str
    """``http``, ``https``, ``grpc`` or ``grpcs``."""
    base: str
    """``scheme://host[:port]`` without a trailing slash."""
    target: str
    """``host[:port]`` (a gRPC channel's target)."""


def check_url(url: object) -> RemoteURL:
    """``url`` split into its parts, or :class:`ConfigError` naming what is wrong."""
    if not isinstance(url, str):
        raise ConfigError(f"remote URL must be a string like http://host:8000, not {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ConfigError(
            f"remote URL {url!r} must start with http://, https://, grpc:// or grpcs://"
        )
    authority, _, path = rest.partition("/")
    for char, what in (("?", "a query"), ("#", "a fragment")):
        if char in rest:
            raise ConfigError(f"remote URL {url!r} has {what}: give only {scheme}://host:port")
    if "@" in authority:
        raise ConfigError(
            f"remote URL {url!r} carries credentials: remove them and put the token "
            "in the environment variable named by token_env"
        )
    if path:
        raise ConfigError(f"remote URL {url!r} has a path /{path}: give only {scheme}://host:port")
    host, port = authority, None
    if not authority.endswith("]") and ":" in authority:
        host, _, port = authority.rpartition(":")
    if port is not None and not re.fullmatch(_PORT, port):
        raise ConfigError(f"remote URL {url!r} has port {port!r}: a port is a number 1-65535")
    if not re.fullmatch(_HOST, host):
        raise ConfigError(f"remote URL {url!r} has no valid host (a name, IPv4 or [IPv6])")
    if not re.fullmatch(URL_PATTERN, url):  # a control character, say: the schema's rule
        raise ConfigError(f"remote URL {url!r} is not {scheme}://host[:port]")
    return RemoteURL(scheme, f"{scheme}://{authority}", authority)


def check_timeout(seconds: object, what: str = "timeout") -> float:
    """``seconds`` as a float in (0, :data:`MAX_TIMEOUT_S`], or :class:`ConfigError`."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ConfigError(f"{what} must be a number of seconds, not {seconds!r}")
    value = float(seconds)
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise ConfigError(f"{what} is {seconds!r}: give seconds in (0, {MAX_TIMEOUT_S:g}]")
    return value
