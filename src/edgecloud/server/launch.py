"""Starting edgecloud processes (server, gateway) and waiting until they are ready.

One implementation for the demo, the benchmarks and the tests: start the
command, poll its ``/v2/health/ready`` until it answers 200, and fail with
the process's own log if it exits or times out first. Standard library only.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UnavailableError

__all__ = ["ServerProcess", "address", "free_port", "launch", "serve_process"]


def address(host: str, port: int) -> str:
    """``host:port`` as URLs and grpc take it: an IPv6 address bracketed.

    ``address("::1", 8001) == "[::1]:8001"`` (RFC 3986 section 3.2.2; grpc reads
    an unbracketed ``:::8001`` as a misformatted name); names and IPv4 as given.
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        is_v6 = isinstance(ipaddress.ip_address(bare.split("%", 1)[0]), ipaddress.IPv6Address)
    except ValueError:
        is_v6 = False
    return f"[{bare}]:{port}" if is_v6 else f"{host}:{port}"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A started process and the base URL it answers on."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path | None = None
    group: bool = False
    """The process leads its own process group (its workers die with it)."""

    def stop(self, timeout: float = 15.0) -> float | None:
        """SIGTERM and wait; seconds it took, or None if it had to be killed."""
        if self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
            return time.monotonic() - started
        except subprocess.TimeoutExpired:
            if self.group:
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                self.process.kill()
            self.process.wait()
            return None


def _ready(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def launch(
    argv: Sequence[str],
    url: str,
    *,
    timeout: float = 60.0,
    log: Path | None = None,
    wrap: Callable[[list[str]], list[str]] | None = None,
    cafile: str | None = None,
    ready_path: str = "/v2/health/ready",
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    group: bool = False,
) -> ServerProcess:
    """Start ``argv`` and wait until ``url + ready_path`` answers 200.

    ``group`` starts it in a new session, so a forced stop takes its worker
    processes too (MLServer's inference pool, for one).
    """
    command = wrap(list(argv)) if wrap else list(argv)
    options: dict[str, Any] = {"cwd": cwd, "env": env, "start_new_session": group}
    # Without a log, stderr still goes to a file (not a pipe nobody drains), so
    # a process that refuses to start is reported with its own one-line reason.
    with (
        log.open("w+b") if log is not None else tempfile.TemporaryFile() as out,
    ):
        stderr: Any = subprocess.STDOUT if log is not None else out
        stdout: Any = out if log is not None else subprocess.DEVNULL
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, **options)
        server = ServerProcess(process, url, log, group)
        return _wait_ready(server, argv, out, url + ready_path, cafile, timeout)


def _wait_ready(
    server: ServerProcess,
    argv: Sequence[str],
    out: Any,
    url: str,
    cafile: str | None,
    timeout: float,
) -> ServerProcess:
    process = server.process
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out.flush()
            out.seek(0)
            detail = out.read()[-2000:].decode(errors="replace").strip()
            raise UnavailableError(
                f"{' '.join(argv[:4])}… exited with {process.returncode}: {detail}"
            )
        if _ready(url, context):
            return server
        time.sleep(0.1)
    server.stop()
    raise UnavailableError(f"{server.url} did not become ready within {timeout:g} s")


def serve_process(
    repo: str | Path,
    *,
    host: str = "127.0.0.1",
    http_port: int | None = None,
    grpc_port: int | None = None,
    extra: Sequence[str] = (),
    log: Path | None = None,
    wrap: Callable[[list[str]], list[str]] | None = None,
    scheme: str = "http",
    cafile: str | None = None,
    workers: int = 1,
) -> ServerProcess:
    """``edgecloud serve`` on ``repo`` (gRPC off unless a port is given), once ready.

    ``workers``: server processes (``--workers``); 1 (a single process, as the
    benchmarks and tests want unless they measure workers) unless ``extra``
    gives ``--workers`` itself. Workers die with their supervisor
    (``PR_SET_PDEATHSIG``), so the server stays in this session: with Linux's
    autogroup scheduling a new session would get a CPU share of its own, and
    1 and N workers would not be compared on equal terms.
    """
    port = http_port or free_port()
    extra = list(extra)
    if "--workers" not in extra[:-1]:
        extra += ["--workers", str(workers)]
    argv = [
        sys.executable, "-m", "edgecloud.cli", "serve", "--repo", str(repo), "--host", host,
        "--http-port", str(port), "--grpc-port", str(grpc_port if grpc_port is not None else -1),
        *extra,
    ]  # fmt: skip
    url = f"{scheme}://{address(host, port)}"
    return launch(argv, url, log=log, wrap=wrap, cafile=cafile)
