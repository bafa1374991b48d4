"""Every client of a v2 server checks its URL and timeout once, in the same way.

``RemoteBackend`` (what ``load``, ``advise --remote``, ``split`` and the CLI's clients
build) and the gRPC transport refuse an address a lower layer would silently rewrite:
port 99999 used to reach port 34463 (99999 - 65536) over HTTP and gRPC.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import yaml

import edgecloud
from edgecloud.backends.remote import RemoteBackend
from edgecloud.backends.remote_grpc import GrpcTransport
from edgecloud.backends.remote_url import check_url
from edgecloud.errors import ConfigError

BAD_URLS = [
    ("http://127.0.0.1:99999", "port '99999'"),
    ("grpc://127.0.0.1:99999", "port '99999'"),
    ("http://127.0.0.1:65536", "port"),
    ("http://127.0.0.1:0", "port"),
    ("http://127.0.0.1:-1", "port"),
    ("http://127.0.0.1:", "port"),
    ("http://127.0.0.1:8000/v2", "path"),
    ("http://127.0.0.1:8000?x=1", "query"),
    ("http://127.0.0.1:8000#x", "fragment"),
    ("http://user:secret@127.0.0.1:8000", "credentials"),
    ("http://:8000", "host"),
    ("ftp://127.0.0.1:8000", "must start with"),
    ("127.0.0.1:8000", "must start with"),
]


@pytest.mark.parametrize(("url", "says"), BAD_URLS)
def test_a_bad_url_is_refused_by_every_client(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        RemoteBackend(url)
    if url.startswith("grpc://"):
        with pytest.raises(ConfigError, match=says):
            GrpcTransport(url[7:], token=None, tls=False, root_certificates=None)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("https://example.org", "https://example.org"),
        ("grpc://[::1]:8001", "grpc://[::1]:8001"),
        ("grpcs://edge-1.example.org:65535", "grpcs://edge-1.example.org:65535"),
    ],
)
def test_a_good_url_is_kept(url: str, base: str) -> None:
    assert check_url(url).base == base
    with RemoteBackend(url) as remote:
        assert remote.url == base


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan, 1e300, 3600.5, True, "5"])
def test_a_timeout_outside_0_to_an_hour_is_refused(timeout: object) -> None:
    with pytest.raises(ConfigError, match="timeout"):
        RemoteBackend("http://127.0.0.1:8000", timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout_s", [".inf", "-.inf", ".nan", "1e300", "3601"])
def test_load_refuses_an_unbounded_remote_timeout(tmp_path: Path, timeout_s: str) -> None:
    path = tmp_path / "deployment.yaml"
    path.write_text(
        f"remotes: {{cloud: {{url: 'http://127.0.0.1:8000', timeout_s: {timeout_s}}}}}\n"
        "root: cloud\n"
    )
    with pytest.raises(ConfigError, match="timeout_s"):
        edgecloud.load(path)


def test_a_wrapped_port_reaches_nothing(tmp_path: Path) -> None:
    """The reviewer's case: a listener on 99999 - 65536 gets no request."""
    with socket.socket() as listener:
        try:
            listener.bind(("127.0.0.1", 99999 - 65536))
        except OSError:
            pytest.skip("port 34463 is taken on this machine")
        listener.listen()
        listener.settimeout(0.5)
        path = tmp_path / "deployment.yaml"
        spec = {"remotes": {"cloud": {"url": "http://127.0.0.1:99999"}}, "root": "cloud"}
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(ConfigError, match=r"remotes\.cloud\.url|port '99999'"):
            edgecloud.load(path)
        with pytest.raises(ConfigError, match="port '99999'"):
            RemoteBackend("grpc://127.0.0.1:99999")
        with pytest.raises(TimeoutError):
            listener.accept()


@pytest.mark.parametrize("ttl_s", [".inf", ".nan"])
def test_load_refuses_an_outbox_ttl_that_is_not_a_number(tmp_path: Path, ttl_s: str) -> None:
    path = tmp_path / "deployment.yaml"
    path.write_text(f"outbox: {{path: q.db, ttl_s: {ttl_s}}}\nroot: local\n")
    with pytest.raises(ConfigError, match="ttl_s"):
        edgecloud.load(path)
