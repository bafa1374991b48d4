"""Monotonic behaviour over random workloads (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.advisor import Workload, advise
from edgecloud.advisor.decide import with_value

positive = st.floats(min_value=0.01, max_value=1e4, allow_nan=False, allow_infinity=False)
share = st.floats(min_value=0.5, max_value=0.99999)


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    p50 = draw(st.floats(min_value=1, max_value=5000))
    small = draw(st.booleans())
    model: dict[str, Any] = {
        "name": "big",
        "memory_mb": draw(st.floats(min_value=1, max_value=50_000)),
        "gflops": draw(st.floats(min_value=0.001, max_value=5000)),
        "accuracy": draw(st.floats(min_value=0.6, max_value=0.99)),
    }
    if small:
        model |= {
            "small_name": "small",
            "small_memory_mb": draw(st.floats(min_value=0.5, max_value=2000)),
            "small_gflops": draw(st.floats(min_value=0.0001, max_value=50)),
            "small_accuracy": draw(st.floats(min_value=0.5, max_value=0.99)),
        }
    raw = {
        "application": {
            "latency_p50_ms": p50,
            "latency_p99_ms": p50 * draw(st.floats(min_value=1, max_value=10)),
            "requests_per_s": draw(st.floats(min_value=0.0001, max_value=100)),
            "payload_kb": draw(positive),
            "availability": draw(share),
            "time_sensitive": draw(st.booleans()),
        },
        "model": model,
        "device": {
            "memory_mb": draw(st.floats(min_value=64, max_value=64_000)),
            "gflops_per_s": draw(st.floats(min_value=1, max_value=100_000)),
            "count": draw(st.integers(min_value=1, max_value=100_000)),
            "hardware_usd": draw(st.floats(min_value=0, max_value=2000)),
        },
        "network": {
            "rtt_ms": draw(st.floats(min_value=0, max_value=1000)),
            "jitter_ms": draw(st.floats(min_value=0, max_value=200)),
            "uplink_mbps": draw(st.floats(min_value=0.05, max_value=1000)),
            "availability": draw(share),
            "cost_per_gb": draw(st.floats(min_value=0, max_value=5)),
        },
        "privacy": {"data_class": draw(st.sampled_from(["public", "personal", "regulated"]))},
        "hybrid": {
            "escalation_rate": draw(st.floats(min_value=0, max_value=1)),
            "event_fraction": draw(st.one_of(st.none(), st.floats(min_value=0.001, max_value=1))),
        },
    }
    return Workload.model_validate(raw)


@settings(max_examples=150, deadline=None)
@given(workloads(), st.floats(min_value=0, max_value=2000))
def test_raising_the_rtt_never_makes_remote_more_attractive(w: Workload, extra: float) -> None:
    before = advise(w)
    after = advise(with_value(w, "network.rtt_ms", w.network.rtt_ms + extra))
    r0, r1 = before.candidate("remote"), after.candidate("remote")
    assert r1.latency.p50_ms >= r0.latency.p50_ms
    assert r1.latency.p99_ms >= r0.latency.p99_ms
    assert r1.scores["latency"].value <= r0.scores["latency"].value
    assert r1.total <= r0.total + 1e-9
    assert r0.feasible or not r1.feasible
    if before.strategy == "local":  # what runs on the device does not care about the RTT
        assert after.strategy != "remote"


@settings(max_examples=150, deadline=None)
@given(workloads(), st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=5))
def test_raising_transfer_prices_never_lowers_remote_cost(
    w: Workload, egress: float, metered: float
) -> None:
    months = w.horizon_months
    base = advise(w).candidate("remote").costs.average_monthly(months)
    pricier = with_value(w, "prices.cloud_egress_per_gb", w.prices.cloud_egress_per_gb + egress)
    pricier = with_value(pricier, "network.cost_per_gb", w.network.cost_per_gb + metered)
    assert advise(pricier).candidate("remote").costs.average_monthly(months) >= base - 1e-9


@settings(max_examples=200, deadline=None)
@given(workloads())
def test_infeasible_options_are_never_recommended(w: Workload) -> None:
    d = advise(w)
    if d.recommended is None:
        assert all(not c.feasible for c in d.candidates)
        assert d.strategy == "none"
    else:
        assert d.recommended.feasible
        assert d.recommended.total == max(c.total for c in d.candidates if c.feasible)
    if w.privacy.data_class == "regulated":
        assert d.strategy in ("local", "none")
