"""Real outages: a server process killed mid-traffic, and a real link cut in a namespace."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from edgecloud import InferRequest, LocalBackend, ModelRepository, RemoteBackend
from edgecloud.routing import CircuitBreaker, Outbox, prefer_remote
from edgecloud.server.launch import free_port, serve_process
from edgecloud.zoo import datasets

from ..netns import NetNamespace, require_netns

pytestmark = [pytest.mark.slow, pytest.mark.network]


class Traffic:
    """Requests in a loop from a thread, every answer (and its trace) recorded."""

    def __init__(self, tree, outbox: Outbox | None = None) -> None:  # type: ignore[no-untyped-def]
        self.tree, self.outbox = tree, outbox
        self.records: list[tuple[float, str, list[str]]] = []
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._x = datasets.digits("test").x
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            pixels = self._x[i % len(self._x)][None]
            i += 1
            try:
                response = self.tree.infer(InferRequest("digits-large", {"pixels": pixels}))
            except Exception as exc:  # every failure is a test failure
                self.errors.append(exc)
                continue
            reasons = [s.reason for s in response.trace.spans if s.kind == "decision"]
            if self.outbox is not None and "remote:" not in response.trace.served_by:
                self.outbox.put(
                    InferRequest("digits-large", {"pixels": pixels}), kind="hard-example"
                )
            self.records.append((time.monotonic(), response.trace.served_by, reasons))
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def since(self, t: float) -> list[tuple[float, str, list[str]]]:
        return [r for r in self.records if r[0] >= t]


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_server_killed_mid_traffic_then_restarted(
    zoo_repo: ModelRepository, tmp_path: Path
) -> None:
    port = free_port()
    server = serve_process(zoo_repo.root, http_port=port)
    remote = RemoteBackend(f"http://127.0.0.1:{port}", timeout=1)
    tree = prefer_remote(remote, LocalBackend(zoo_repo), breaker=CircuitBreaker(reset_after_s=0.5))
    outbox = Outbox(tmp_path / "outbox.db")
    try:
        with Traffic(tree, outbox) as traffic:
            wait_for(lambda: len(traffic.records) > 20)
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
            killed = time.monotonic()
            wait_for(lambda: len(traffic.since(killed)) > 30)
            during = traffic.since(killed + 0.2)
            assert during and all("remote:" not in served for _, served, _ in during)
            assert all(any(r.startswith("fallback:") for r in reasons) for _, _, reasons in during)
            server = serve_process(zoo_repo.root, http_port=port)
            back = time.monotonic()
            wait_for(lambda: any("remote:" in s for _, s, _ in traffic.since(back)))
        assert traffic.errors == [], traffic.errors[:3]
        queued = len(outbox)
        assert queued > 0
        assert outbox.drain(remote.infer).delivered == queued and len(outbox) == 0
    finally:
        tree.close()
        outbox.close()
        server.stop()


def test_real_link_cut_in_a_namespace(zoo_repo: ModelRepository, tmp_path: Path) -> None:
    require_netns()
    with NetNamespace() as ns:
        port = 8000
        server = serve_process(zoo_repo.root, host=ns.ns_ip, http_port=port, wrap=ns.command)
        remote = RemoteBackend(f"http://{ns.ns_ip}:{port}", timeout=0.5)
        breaker = CircuitBreaker(failure_threshold=2, reset_after_s=0.5)
        tree = prefer_remote(remote, LocalBackend(zoo_repo), breaker=breaker)
        outbox = Outbox(tmp_path / "outbox.db")
        try:
            with Traffic(tree, outbox) as traffic:
                wait_for(lambda: sum("remote:" in s for _, s, _ in traffic.records) > 10)
                ns.link(up=False)
                cut = time.monotonic()
                wait_for(lambda: len(traffic.since(cut + 1.5)) > 20)
                during = traffic.since(cut + 1.5)  # after in-flight calls time out
                assert during and all("remote:" not in s for _, s, _ in during)
                ns.link(up=True)
                restored = time.monotonic()
                wait_for(lambda: any("remote:" in s for _, s, _ in traffic.since(restored)))
            assert traffic.errors == [], traffic.errors[:3]
            reasons = {r.split(" ")[0] for _, _, rs in traffic.records for r in rs}
            assert {"fallback:timeout", "fallback:circuit-open"} & reasons
            assert outbox.drain(remote.infer).remaining == 0
        finally:
            tree.close()
            outbox.close()
            server.stop()
