"""Test hosts in Linux network namespaces (iproute2): real links we can cut and shape.

Each ``NetNamespace`` makes its own namespace and veth pair with addresses in
10.231.N.0/24, runs processes inside it, and removes everything on exit.
Tests skip with the reason when namespaces are not permitted (not root, no
iproute2). netem is not compiled into every kernel; ``tbf`` rate shaping is
used where delay emulation is not needed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from types import TracebackType

import pytest

_ids = itertools.count(os.getpid() % 200)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if shutil.which("ip") is None:
        return "iproute2 is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"ecprobe{os.getpid()}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"network namespaces are not permitted here: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def require_netns() -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)


class NetNamespace:
    """A namespace reachable from this one over a veth pair."""

    def __init__(self) -> None:
        n = next(_ids) % 250
        self.name = f"ec{os.getpid()}n{n}"
        self.host_if, self.ns_if = f"ech{n}x{os.getpid() % 1000}", f"ecn{n}x{os.getpid() % 1000}"
        self.host_ip, self.ns_ip = f"10.231.{n}.1", f"10.231.{n}.2"

    def __enter__(self) -> NetNamespace:
        # Safety net: if our /24 route ever disappears, 10.231/16 is dropped here
        # instead of following the default route off this machine.
        _ip("route", "add", "blackhole", "10.231.0.0/16", check=False)
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        self.exec_ip("addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if)
        self.exec_ip("link", "set", self.ns_if, "up")
        self.exec_ip("link", "set", "lo", "up")
        return self

    def exec_ip(self, *args: str) -> None:
        _ip("netns", "exec", self.name, "ip", *args)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def link(self, up: bool) -> None:
        """Cut or restore the link on the far side, as a dead network would.

        The host side stays up, so its /24 route stays and packets are dropped
        at the veth (never sent elsewhere).
        """
        self.exec_ip("link", "set", self.ns_if, "up" if up else "down")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.name, check=False)
        _ip("route", "del", "blackhole", "10.231.0.0/16", check=False)
