"""Exact binomial tails and Clopper–Pearson intervals, in numpy and ``math`` only.

The edge package must not need scipy, so the few exact binomial quantities
calibration uses are computed here:

- :func:`binom_cdf` ``P(X <= k)`` and :func:`binom_sf` ``P(X >= k)`` for
  ``X ~ Binomial(n, p)``, summed term by term from ``log C(n, j)``
  (``math.lgamma``) in log space, so tails far below 1e-300 are 0 rather
  than noise; each call is O(n);
- :func:`cdf_table` every ``P(X <= k)``, k = 0..n, at once (the p-values of
  a whole threshold sweep from one O(n) pass);
- :func:`clopper_pearson`, the exact ("conservative") interval of a binomial
  proportion: C. J. Clopper and E. S. Pearson, "The use of confidence or
  fiducial limits illustrated in the case of the binomial", *Biometrika*
  26(4), 404–413, 1934. Its bounds are the ``p`` at which a binomial tail
  equals ``(1 - level) / 2``, found by bisection on ``p`` (the tails are
  monotone in ``p``), to 1e-12.

Arguments are checked: ``n >= 0`` and ``0 <= k <= n`` integers, ``p`` and
``level`` in their ranges, else ValueError (a programming error; callers
validate user input first).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["binom_cdf", "binom_sf", "cdf_table", "clopper_pearson", "lower_bound"]

Array = np.ndarray[Any, Any]


@lru_cache(maxsize=8)
def _log_choose(n: int) -> Array:
    """``log C(n, j)`` for j = 0..n: [n + 1] float64, read-only."""
    log_fact = np.fromiter((math.lgamma(j + 1.0) for j in range(n + 1)), float, n + 1)
    table = log_fact[n] - log_fact - log_fact[::-1]
    table.flags.writeable = False
    return np.asarray(table)


def _check(k: int, n: int, p: float) -> None:
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"need 0 <= p <= 1, got {p}")


def _pmf(n: int, p: float, start: int, stop: int) -> Array:
    """``P(X = j)`` for j in [start, stop): exact zeros where p is 0 or 1."""
    j = np.arange(start, stop)
    if p == 0.0:
        return np.asarray(j == 0, float)
    if p == 1.0:
        return np.asarray(j == n, float)
    log = _log_choose(n)[start:stop] + j * math.log(p) + (n - j) * math.log1p(-p)
    return np.asarray(np.exp(log))


def binom_cdf(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, p)``."""
    _check(k, n, p)
    return min(1.0, float(_pmf(n, p, 0, k + 1).sum()))


def binom_sf(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)`` (note: >=, not >)."""
    _check(k, n, p)
    return min(1.0, float(_pmf(n, p, k, n + 1).sum()))


def cdf_table(n: int, p: float) -> Array:
    """``P(X <= k)`` for every k = 0..n: [n + 1] float64, non-decreasing, capped at 1."""
    _check(0, n, p)
    return np.asarray(np.minimum(np.cumsum(_pmf(n, p, 0, n + 1)), 1.0))


def _solve(tail: Any, target: float, increasing: bool) -> float:
    """The ``p`` in [0, 1] where the monotone ``tail(p)`` crosses ``target`` (bisection)."""
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-12:
        mid = (lo + hi) / 2
        if (tail(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return lo if increasing else hi


def lower_bound(k: int, n: int, delta: float) -> float:
    """One-sided exact lower confidence bound on ``p`` at level ``1 - delta``.

    The ``p`` with ``P(X >= k; p) = delta`` (0 when k = 0): ``p >= bound``
    with probability at least ``1 - delta`` (Clopper & Pearson 1934).
    """
    _check(k, n, 0.0)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"need 0 < delta < 1, got {delta}")
    if k == 0:
        return 0.0
    # P(X >= k; p) increases with p; the bound is the largest p still below delta.
    return _solve(lambda p: binom_sf(k, n, p), delta, increasing=True)


def _upper_bound(k: int, n: int, delta: float) -> float:
    if k == n:
        return 1.0
    # P(X <= k; p) decreases with p; the bound is the smallest p already below delta.
    return _solve(lambda p: binom_cdf(k, n, p), delta, increasing=False)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact two-sided ``level`` interval of a proportion with ``k`` of ``n``.

    Covers the true proportion with probability at least ``level`` for every
    ``p`` (Clopper & Pearson 1934); each side at ``(1 - level) / 2``.
    ``n = 0`` gives (0, 1): no rows, no information.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"need 0 < level < 1, got {level}")
    _check(k, n, 0.0)
    if n == 0:
        return 0.0, 1.0
    side = (1.0 - level) / 2
    return lower_bound(k, n, side), _upper_bound(k, n, side)
