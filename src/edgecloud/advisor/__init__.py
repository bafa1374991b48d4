"""``edgecloud advise``: a workload spec in, a reasoned local / remote / hybrid decision out.

::

    from edgecloud.advisor import advise, load_workload, scenario

    decision = advise(scenario("camera-fleet"))
    print(decision.strategy, decision.reasons[0])
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .decide import Candidate, Decision, Flip, decide, sensitivity
from .deploy import deployment_for, deployment_yaml
from .spec import Workload, load_workload

__all__ = [
    "Candidate",
    "Decision",
    "Flip",
    "Workload",
    "advise",
    "deployment_for",
    "deployment_yaml",
    "load_workload",
    "scenario",
    "scenario_names",
    "sensitivity",
]

SCENARIOS = Path(__file__).parent / "scenarios"


def scenario_names() -> list[str]:
    """The built-in example workloads."""
    return sorted(p.stem for p in SCENARIOS.glob("*.yaml"))


def scenario(name: str) -> Workload:
    """Load a built-in example workload by name."""
    path = SCENARIOS / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown scenario {name!r}; built in: {', '.join(scenario_names())}")
    return load_workload(path)


def advise(workload: Workload) -> Decision:
    """The recommendation for a workload (see :mod:`edgecloud.advisor.decide`)."""
    return decide(workload)
