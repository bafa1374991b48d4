"""``edgecloud serve --fleet``: the update repository over HTTP with Range, no traversal.

One real server process; requests through http.client, which sends paths
exactly as written (``..``, ``%2e%2e``) where httpx would normalise them.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgecloud.errors import ConfigError
from edgecloud.fleet.publish import publish
from edgecloud.server.fleet_files import parse_range
from edgecloud.server.settings import ServerSettings

from ..fleet.conftest import Fleet, make_fleet
from .conftest import Server, start_server


@dataclass
class FleetServer:
    server: Server
    fleet: Fleet
    signed_timestamp_version: int

    def get(self, path: str, method: str = "GET", **headers: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.http_port, timeout=10)
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        response.body = response.read()  # type: ignore[attr-defined]
        conn.close()
        return response


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    tmp = tmp_path_factory.mktemp("fleet")
    twenty_hours_ago = datetime.now(UTC) - timedelta(hours=20)
    fleet = make_fleet(tmp, clock=lambda: twenty_hours_ago)  # timestamp: 4 h left of 24
    publish(fleet.models, "affine", 1, fleet.repo(clock=lambda: twenty_hours_ago), deltas=None)
    signed = json.loads((fleet.path / "metadata" / "timestamp.json").read_bytes())
    (tmp / "outside.txt").write_text("secret outside the repository\n")
    server = start_server(
        fleet.models, tmp, "--fleet", str(fleet.path), "--fleet-keys", str(fleet.keys)
    )
    yield FleetServer(server, fleet, signed["signed"]["version"])
    server.stop()


def test_the_server_re_signs_a_timestamp_past_half_its_life(served: FleetServer) -> None:
    answer = served.get("/fleet/metadata/timestamp.json")
    assert answer.status == 200
    timestamp = json.loads(answer.body)["signed"]  # type: ignore[attr-defined]
    assert timestamp["version"] == served.signed_timestamp_version + 1
    expires = datetime.fromisoformat(timestamp["expires"].replace("Z", "+00:00"))
    assert expires - datetime.now(UTC) > timedelta(hours=23)


def test_a_device_updates_through_the_server(served: FleetServer, tmp_path: Path) -> None:
    from tuf.ngclient import Updater

    url = f"{served.server.url}/fleet"
    (tmp_path / "md").mkdir()
    device = Updater(
        str(tmp_path / "md"), f"{url}/metadata/", str(tmp_path), f"{url}/targets/",
        bootstrap=served.fleet.root_bytes,
    )  # fmt: skip
    device.refresh()
    target = device.get_targetinfo("affine/1/model.onnx")
    assert Path(device.download_target(target)).stat().st_size == target.length


def _model_url(served: FleetServer) -> tuple[str, bytes]:
    [file] = (served.fleet.path / "targets" / "affine" / "1").glob("*.model.onnx")
    return f"/fleet/targets/affine/1/{file.name}", file.read_bytes()


def test_ranges(served: FleetServer) -> None:
    url, data = _model_url(served)
    size = len(data)
    whole = served.get(url)
    assert whole.status == 200 and whole.body == data  # type: ignore[attr-defined]
    assert whole.getheader("accept-ranges") == "bytes" and whole.getheader("etag")
    assert "immutable" in whole.getheader("cache-control", "")
    spans = [
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, size - 1),
        ("bytes=-7", size - 7, size - 1),
        (f"bytes=5-{size * 9}", 5, size - 1),
        ("bytes=-99999", 0, size - 1),
        # RFC 9110 14.1.2: a last-byte-pos past the end is clamped, however long
        ("bytes=0-99999999999999999999", 0, size - 1),
        (f"bytes=0-{'9' * 5000}", 0, size - 1),
        (f"bytes=0-{size - 1}", 0, size - 1),
        (f"bytes=0-{size}", 0, size - 1),
        (f"bytes={size - 1}-", size - 1, size - 1),
        ("bytes=-99999999999999999999999", 0, size - 1),
        (f"bytes=-{size}", 0, size - 1),
        ("bytes=00003-0000004", 3, 4),
    ]
    for header, first, last in spans:
        part = served.get(url, Range=header)
        assert part.status == 206, header
        assert part.getheader("content-range") == f"bytes {first}-{last}/{size}"
        assert part.body == data[first : last + 1]  # type: ignore[attr-defined]
        assert part.getheader("content-length") == str(last - first + 1)
    for header in (
        f"bytes={size}-",
        f"bytes={size}-{size}",
        f"bytes={size + 5}-{size + 9}",
        "bytes=-0",
        "bytes=-000",
        "bytes=99999999999999999999-",
        f"bytes={'9' * 5000}-",
    ):
        refused = served.get(url, Range=header)
        assert refused.status == 416, header
        assert refused.getheader("content-range") == f"bytes */{size}"
    # not one bytes range: ignored, the whole file (RFC 9110 14.2 lets a server ignore Range)
    for header in ("bytes=0-1,4-5", "items=0-1", "bytes=x-y", "bytes=9-3", "bytes=-"):
        assert served.get(url, Range=header).body == data, header  # type: ignore[attr-defined]
    # a resumed download of a file that changed since: the whole new file
    stale = served.get(url, Range="bytes=3-", **{"If-Range": '"0-0"'})
    assert stale.status == 200 and stale.body == data  # type: ignore[attr-defined]
    fresh = served.get(url, Range="bytes=3-", **{"If-Range": whole.getheader("etag")})
    assert fresh.status == 206 and fresh.body == data[3:]  # type: ignore[attr-defined]


def test_head_and_methods(served: FleetServer) -> None:
    url, data = _model_url(served)
    head = served.get(url, "HEAD")
    assert head.status == 200 and head.body == b""  # type: ignore[attr-defined]
    assert head.getheader("content-length") == str(len(data))
    head_range = served.get(url, "HEAD", Range="bytes=0-3")
    assert head_range.status == 206 and head_range.getheader("content-length") == "4"
    post = served.get(url, "POST")
    assert post.status == 405 and post.getheader("allow") == "GET, HEAD"


def test_no_path_leaves_the_repository(served: FleetServer) -> None:
    targets = served.fleet.path / "targets"
    outside = served.fleet.path.parent / "outside.txt"
    (targets / "escape.txt").symlink_to(outside)
    (targets / "keys").symlink_to(served.fleet.keys, target_is_directory=True)
    (served.fleet.path / "metadata" / ".timestamp.json.1.tmp").write_text("{}")
    for path in (
        "/fleet/targets/../../outside.txt",
        "/fleet/targets/%2e%2e/%2e%2e/outside.txt",
        "/fleet/targets/%2E%2E/metadata/root.json",
        "/fleet/metadata/..%2f..%2foutside.txt",
        "/fleet/targets//etc/passwd",
        "/fleet/targets/%2fetc%2fpasswd",
        "/fleet/targets/escape.txt",
        "/fleet/targets/keys/targets.pem",
        "/fleet/metadata/.timestamp.json.1.tmp",
        "/fleet/targets/affine",
        "/fleet/targets/",
        "/fleet/metadata/nope.json",
        "/fleet/metadata/root.json%00.txt",
        "/fleet/metadata/..\\root.json",
    ):
        answer = served.get(path)
        assert answer.status == 404, path
        assert b"secret" not in answer.body and b"PRIVATE" not in answer.body  # type: ignore[attr-defined]


def test_other_paths_reach_the_inference_app(served: FleetServer) -> None:
    assert served.get("/v2/health/live").status == 200
    # /fleet/telemetry is the telemetry store's (POST only), not a file: 405, not 404
    assert served.get("/fleet/telemetry").status == 405


def test_parse_range_edges() -> None:
    assert parse_range("bytes=0-0", 1) == (0, 0)
    assert parse_range("bytes=0-", 0) == "unsatisfiable"
    assert parse_range("bytes=-1", 0) == "unsatisfiable"
    assert parse_range("bytes=99999999999999999999-", 5) == "unsatisfiable"
    assert parse_range("bytes=0-99999999999999999999", 5) == (0, 4)
    assert parse_range(f"bytes=0-{'9' * 5000}", 5) == (0, 4)
    assert parse_range("bytes=-99999999999999999999", 5) == (0, 4)
    assert parse_range("bytes=3-99999999999999999999", 0) == "unsatisfiable"
    assert parse_range("bytes=9999999999999999999999-3", 5) is None  # first > last
    assert parse_range(" bytes=1-2 ", 5) == (1, 2)


def test_fleet_keys_need_a_fleet() -> None:
    with pytest.raises(ConfigError, match="fleet_keys"):
        ServerSettings.resolve(cli={"fleet_keys": Path("k")}, environ={})


def test_telemetry_names_only_what_the_repository_holds(served: FleetServer) -> None:
    """With ``--fleet`` the server reads the signed targets: an event about a model
    it does not hold, or a download/install/health/swap of a version never
    published, is a 400 naming the field; a check or rollback may name a version
    the device had before (installed locally)."""
    import httpx

    url = f"{served.server.url}/fleet/telemetry"

    def ev(seq: int, kind: str, model: str = "affine", **over: object) -> dict[str, object]:
        return {
            "id": f"dev:{seq}", "device": "dev", "group": None, "model": model, "event": kind,
            "version": 1, "from_version": None, "ok": True, "detail": "", "bytes": 0, "at": 1.0,
        } | over  # fmt: skip

    for bad, field in [
        (ev(1, "check", "../../etc"), "model"),
        (ev(1, "error", "nope"), "model"),
        (ev(1, "download", version=99), "version"),
        (ev(1, "install", version=99), "version"),
        (ev(1, "health", version=2), "version"),
        (ev(1, "swap", version=99, from_version=1), "version"),
    ]:
        reply = httpx.post(url, json=bad)
        assert reply.status_code == 400, bad
        assert reply.json()["error"].startswith(f"event 0: {field}: "), reply.text
    fine = [
        ev(1, "check", version=1, from_version=7),  # runs a local 7, wants the published 1
        ev(2, "swap", version=1, from_version=7),
        ev(3, "rollback", version=7, from_version=1),
        ev(4, "error", version=None, ok=False, detail="link down"),
    ]
    assert httpx.post(url, json=fine).json() == {"accepted": 4, "duplicates": 0}


def test_serve_fleet_without_a_repository_gives_a_hint_that_works(tmp_path: Path) -> None:
    """atk-newuser #9: the hint lacked --keys; run as printed, it must create the repository."""
    import shlex
    import subprocess
    import sys

    from edgecloud.server.fleet_files import mount

    settings = type("S", (), {"fleet": tmp_path / "nofleet", "fleet_keys": None})()
    with pytest.raises(ConfigError, match="--keys") as refused:
        mount(lambda *a: None, settings, None)  # type: ignore[arg-type,return-value]
    hint = refused.value.message.split("create it with: ")[1]
    argv = shlex.split(hint)
    assert argv[:3] == ["edgecloud", "fleet", "keys"]
    run = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", *argv[1:]],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "nofleet" / "metadata" / "root.json").is_file()
