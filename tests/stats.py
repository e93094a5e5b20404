"""Small statistics helpers for distribution tests (no SciPy in the dev environment).

Bounds in tests come from these, at a stated false-alarm probability, never from tuning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def chi2_sf(x: float, df: int) -> float:
    """Return ``P(X >= x)`` for ``X`` chi-square with ``df`` (>= 1) degrees of freedom."""
    if x <= 0:
        return 1.0
    h = x / 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for j in range(1, df // 2):
            term *= h / j
            total += term
        return math.exp(-h) * total
    total = math.erfc(math.sqrt(h))
    term = math.sqrt(h) / math.gamma(1.5)  # h^(j - 1/2) / Gamma(j + 1/2) at j = 1
    for j in range(1, (df - 1) // 2 + 1):
        total += math.exp(-h) * term
        term *= h / (j + 0.5)
    return total


def chi2_critical(df: int, alpha: float) -> float:
    """Return ``x`` with ``chi2_sf(x, df) == alpha`` (bisection)."""
    lo, hi = 0.0, 1.0
    while chi2_sf(hi, df) > alpha:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if chi2_sf(mid, df) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def chi2_statistic(counts: Sequence[int], probs: Sequence[float]) -> float:
    """Return Pearson's statistic of observed ``counts`` against expected ``probs``."""
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs, strict=True))
