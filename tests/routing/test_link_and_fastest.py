from __future__ import annotations

import time

import numpy as np
import pytest

from edgecloud import ConfigError, FunctionBackend, InferRequest, UnavailableError
from edgecloud.routing.fastest import Fastest
from edgecloud.routing.link import LinkEstimate, ShapedLink


def echo(name: str, compute_s: float = 0.0) -> FunctionBackend:
    def fn(inputs: dict) -> dict:
        if compute_s:
            time.sleep(compute_s)
        return {"who": np.array([name])}

    return FunctionBackend(fn, name=name)  # type: ignore[arg-type]


def req(nbytes: int = 64) -> InferRequest:
    return InferRequest("m", {"x": np.zeros(nbytes // 4, np.float32)})


def test_link_estimate_learns_base_and_throughput() -> None:
    est = LinkEstimate()
    assert est.predict(100) is None
    for size in (1000, 2000, 4000, 8000):
        est.record(size, 0.010 + size / 1e6)  # 10 ms + 1 µs per byte
    assert est.predict(16000) == pytest.approx(0.026, rel=1e-6)
    same = LinkEstimate()
    for t in (0.01, 0.03, 0.02):
        same.record(100, t)
    assert same.predict(100) == pytest.approx(0.02)


def test_shaped_link_delays_and_traces() -> None:
    waits: list[float] = []
    link = ShapedLink(echo("server"), delay_s=0.04, bandwidth_bps=8_000, sleep=waits.append)
    response = link.infer(req(1000))
    assert sum(waits) == pytest.approx(
        0.04 + 1000 * 8 / 8000 + response.outputs["who"].nbytes * 8 / 8000
    )
    span = response.trace.spans[0]
    assert span.kind == "network" and span.bytes_up == 1000


def test_shaped_link_outage_and_loss() -> None:
    now = [0.0]
    link = ShapedLink(echo("server"), outages=[(5, 10)], clock=lambda: now[0], sleep=lambda s: None)
    assert link.infer(req()).outputs["who"][0] == "server"
    now[0] = 7
    with pytest.raises(UnavailableError, match="link down"):
        link.infer(req())
    now[0] = 11
    assert link.infer(req())
    lossy = ShapedLink(echo("server"), loss=1.0, sleep=lambda s: None)
    with pytest.raises(UnavailableError, match="lost"):
        lossy.infer(req())
    with pytest.raises(ConfigError):
        ShapedLink(echo("s"), loss=2)


def test_fastest_learns_the_quicker_path_and_follows_changes() -> None:
    # Margins wide enough for a loaded 2-core CI machine: a 0-delay call must
    # not look slower than a 20 ms one because the scheduler preempted it.
    slow_link = ShapedLink(echo("remote"), delay_s=0.08, seed=0)
    fastest = Fastest([echo("local", 0.02), slow_link], explore=0.2, seed=1)
    served = [fastest.infer(req()).trace.served_by for _ in range(40)]
    assert served[-20:].count("local") >= 12  # mostly local once both are measured
    slow_link.delay_s = 0.0  # the network got fast: remote is now quicker than local compute
    served = [fastest.infer(req()).trace.served_by for _ in range(100)]
    assert served[-20:].count("remote") >= 12
    reasons = [s.reason for s in fastest.infer(req()).trace.spans if s.kind == "decision"]
    assert reasons[0].startswith("fastest:")


def test_fastest_skips_a_failing_path() -> None:
    down = ShapedLink(echo("remote"), outages=[(0, 1e9)])
    fastest = Fastest([down, echo("local")], explore=0.0)
    response = fastest.infer(req())
    assert response.outputs["who"][0] == "local"
    assert (
        "remote" in response.trace.spans[0].reason
        and "unavailable" in response.trace.spans[0].reason
    )


def test_every_path_failing_is_unavailable() -> None:
    fastest = Fastest([ShapedLink(echo("a"), loss=1.0), ShapedLink(echo("b"), loss=1.0)])
    with pytest.raises(UnavailableError, match="every path failed"):
        fastest.infer(req())


def test_hedging_starts_the_second_path_when_the_first_is_late() -> None:
    spiky = ShapedLink(echo("remote"), delay_s=0.005)
    fastest = Fastest([spiky, echo("local", 0.05)], hedge=True, explore=0.0)
    for _ in range(12):  # remote measured fast, local slow
        fastest.infer(req())
    spiky.delay_s = 0.5  # a spike: remote is now far past its p95
    started = time.perf_counter()
    response = fastest.infer(req())
    assert time.perf_counter() - started < 0.3
    assert response.outputs["who"][0] == "local"
    assert any(s.reason.startswith("hedge:local") for s in response.trace.spans)
    fastest.close()


def test_probes_keep_an_avoided_path_current() -> None:
    link = ShapedLink(echo("remote"), delay_s=0.02)
    fastest = Fastest([link, echo("local", 0.005)], explore=0.0)
    for _ in range(5):
        fastest.infer(req())  # remote measured slow: requests avoid it from now on
    link.delay_s = 0.0
    for _ in range(20):
        fastest.probe_once()  # zero-byte probes see the link got fast
    assert fastest.estimates[0].predict(0) < 0.005
    down = ShapedLink(echo("remote"), outages=[(0, 1e9)])
    probed = Fastest([down, echo("local")])
    for _ in range(2):
        probed.probe_once()
    assert not probed.breakers[0].allow()  # an unreachable probe opens the breaker


def test_remote_ping_measures_a_real_round_trip(zoo_server) -> None:  # type: ignore[no-untyped-def]
    from edgecloud import RemoteBackend

    from ..server.conftest import free_port

    with RemoteBackend(zoo_server.url) as remote:
        rtt = remote.ping()
        assert rtt is not None and 0 < rtt < 1
    with RemoteBackend(f"http://127.0.0.1:{free_port()}", timeout=1) as dead:
        assert dead.ping() is None
