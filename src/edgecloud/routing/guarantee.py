"""A cascade threshold with a finite-sample guarantee: Learn then Test.

Average calibration (pick the least-escalating threshold whose accuracy on the
validation rows reaches the target) meets the target on *new* data only about
half the time: the threshold sits where the validation estimate just crosses
the target, and the estimate is noisy. :func:`certify` instead chooses among
thresholds that a multiple test *certifies*, following

    A. N. Angelopoulos, S. Bates, E. J. Candès, M. I. Jordan, L. Lei,
    "Learn then Test: Calibrating Predictive Algorithms to Achieve Risk
    Control", arXiv:2110.01052, 2021 (LTT),

with fixed-sequence testing (LTT §4; Bauer, "Multiple testing in clinical
trials", Statistics in Medicine 10(6), 1991) and the binomial-tail p-value
for a binary loss (LTT §3; Bates, Angelopoulos, Lei, Malik, Jordan,
"Distribution-free, risk-controlling prediction sets", JACM 68(6), 2021):
for a loss with mean ``R(t)`` and ``k`` losses in ``n`` rows,
``p = P(Binomial(n, alpha) <= k)`` is a valid p-value for ``H0: R(t) > alpha``.

**Assumption**: the validation rows are drawn i.i.d. from the traffic the
deployment will see. Then, with ``δ = delta``:

- ``target`` R (relative accuracy). Loss per row at threshold ``t``: *harm*,
  the cascade keeps the small model's answer (score >= t), that answer is
  wrong, and the large model's is right. The large model's accuracy ``l``
  gets a one-sided Clopper–Pearson lower bound ``l_lo`` at level ``1 - δ/2``;
  the budget is ``alpha = (1 - R) * l_lo``. Thresholds are tested from the
  most to the least escalating (harm grows along that order) at level
  ``δ/2``, stopping at the first that is not certified. Guarantee: with
  probability at least ``1 - δ`` over the draw of the validation rows, every
  certified threshold, the one written included, has population harm rate
  ``h(t) <= (1 - R) * l``, hence population cascade accuracy
  ``>= l - h(t) >= R * l``: its *expected* relative accuracy on new traffic
  is at least R. (Proof: the bound on ``l`` fails with probability <= δ/2;
  when it holds ``alpha <= (1 - R) * l``, so each p-value is at least the one
  against the fixed budget ``(1 - R) * l``, whose fixed-sequence test errs
  with probability <= δ/2.) Rows where the small model is right and the large
  one wrong only help, so the guarantee is conservative.
- ``max_escalation`` E. Loss per row: the row is escalated (score < t).
  Thresholds are tested from the least to the most escalating at level δ.
  Guarantee: with probability at least ``1 - δ``, every certified threshold
  escalates at most a share E of new traffic in expectation; the most
  accurate certified one (on the validation rows) is written.

The candidates are the distinct thresholds of the validation rows
(:func:`~edgecloud.routing.calibrate.outcomes`); both losses are monotone in
``t`` and their counts only change at observed scores, so testing these is
fixed-sequence testing over *every* threshold in [0, 1] ordered the same way
(whose validity for a monotone loss is the argument of Bates et al. 2021,
Thm. 1: only the one bad threshold nearest the boundary can fail first).

What it does not say: the accuracy on any *finite* batch of new rows still
fluctuates around the population value; the guarantee is about the
population (expected) rate, for one validation draw.

When no threshold is certified (too few rows for the target and δ, or a
target the models cannot reach), :func:`certify` refuses with a ConfigError
saying how many rows would be needed: escalating everything would meet any
accuracy target but defeats the cascade, and writing a threshold the user
asked to be guaranteed that is not would be a silent downgrade.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ..errors import ConfigError
from .binomial import cdf_table, lower_bound
from .calibrate import Outcomes

__all__ = ["certify", "fixed_sequence"]


def fixed_sequence(p_values: Iterable[float], delta: float) -> int:
    """How many leading hypotheses fixed-sequence testing rejects at level ``delta``.

    Tests in the given order, each at the full level, and stops at the first
    p-value above ``delta``: the family-wise error rate is at most ``delta``
    whatever the order, as long as it is fixed before seeing the data (Bauer 1991;
    LTT §4).
    """
    rejected = 0
    for p in p_values:
        if not p <= delta:  # NaN never rejects
            break
        rejected += 1
    return rejected


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"the guarantee δ must be in (0, 1), got {delta}")


def certify(
    found: Outcomes,
    *,
    delta: float,
    target: float | None = None,
    max_escalation: float | None = None,
) -> int:
    """The candidate of ``found`` to deploy with a guarantee at level ``1 - delta``.

    See the module docstring for exactly what is guaranteed. Returns an index
    into ``found``'s arrays; ConfigError when no threshold can be certified.
    """
    _check_delta(delta)
    if (target is None) == (max_escalation is None):
        raise ConfigError("give exactly one of a target relative accuracy or an escalation budget")
    if target is not None:
        return _certify_accuracy(found, delta, target)
    assert max_escalation is not None
    return _certify_escalation(found, delta, max_escalation)


def _certify_accuracy(found: Outcomes, delta: float, target: float) -> int:
    n = found.rows
    large_low = lower_bound(found.large_right, n, delta / 2)
    alpha = (1.0 - target) * large_low
    table = cdf_table(n, alpha)  # p-value of k harmful rows: P(Binomial(n, alpha) <= k)
    order = np.argsort(-found.escalated, kind="stable")  # most escalating first
    certified = fixed_sequence((float(table[found.harm[i]]) for i in order), delta / 2)
    if certified == 0:
        raise ConfigError(_none_certified(found, delta, target, alpha))
    # every certified threshold is covered; deploy the one escalating least
    return int(order[certified - 1])


def _none_certified(found: Outcomes, delta: float, target: float, alpha: float) -> str:
    most = int(np.argmax(found.escalated))
    harm = int(found.harm[most])
    why = f"no threshold can be certified to keep {target:.4g} of the large model's accuracy "
    why += f"with probability {1 - delta:.4g} from {found.rows} rows"
    if alpha <= 0:
        return why + f" (the large model is right on {found.large_right} rows)"
    if harm == 0:  # even the most escalating threshold: zero harm is too few rows
        needed = math.ceil(math.log(2 / delta) / alpha)
        return why + (
            f": even escalating every row below threshold "
            f"{found.thresholds[most]:.4g} needs about {needed} rows; pass more rows, "
            f"a lower target or a larger δ"
        )
    return why + (
        f": the most escalating threshold ({found.thresholds[most]:.4g}) already keeps "
        f"{harm} wrong answers the large model gets right; lower the target"
    )


def _certify_escalation(found: Outcomes, delta: float, budget: float) -> int:
    n = found.rows
    table = cdf_table(n, budget)  # p-value of k escalations: P(Binomial(n, budget) <= k)
    order = np.argsort(found.escalated, kind="stable")  # least escalating first
    certified = fixed_sequence((float(table[found.escalated[i]]) for i in order), delta)
    if certified == 0:
        needed = math.ceil(math.log(1 / delta) / budget) if budget > 0 else None
        raise ConfigError(
            f"no threshold can be certified to escalate at most {budget:.4g} of requests "
            f"with probability {1 - delta:.4g} from {n} rows"
            + (f"; that needs at least {needed} rows" if needed else "")
        )
    chosen = order[:certified]
    # the most accurate certified threshold, then the fewest escalations
    return int(chosen[np.lexsort((found.escalated[chosen], -found.right[chosen]))[0]])
