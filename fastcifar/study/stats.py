"""Welch's t-test for "does row A beat row B over seeds", with no dependency beyond the standard library.

The Student t distribution's tail is the regularised incomplete beta function
``P(|T| > t) = I_x(df/2, 1/2)`` with ``x = df / (df + t²)``, evaluated with its continued
fraction (modified Lentz); the 97.5% quantile for the confidence interval is found by bisection.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def _beta_continued_fraction(a: float, b: float, x: float, iterations: int = 300, eps: float = 1e-15) -> float:
    """The continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, iterations + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(probability: float, df: float) -> float:
    """The ``probability`` quantile (> 0.5) of Student's t, by bisection on the two-sided tail."""
    tail = 2.0 * (1.0 - probability)
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > tail:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        low, high = (mid, high) if t_two_sided_p(mid, df) > tail else (low, mid)
    return (low + high) / 2.0


@dataclass(frozen=True)
class Comparison:
    """Mean of A minus mean of B, its 95% confidence half-width and Welch's two-sided p-value."""

    diff: float
    ci95: float
    p: float
    df: float


def welch(a: Sequence[float], b: Sequence[float]) -> Comparison | None:
    """Welch's unequal-variance t-test of mean(a) - mean(b); None with fewer than 2 values per side."""
    if len(a) < 2 or len(b) < 2:
        return None
    var_a, var_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se2 = var_a + var_b
    if se2 == 0.0:  # identical values on both sides: the difference is exact
        return Comparison(diff, 0.0, 1.0 if diff == 0 else 0.0, math.inf)
    df = se2 * se2 / (var_a * var_a / (len(a) - 1) + var_b * var_b / (len(b) - 1))
    se = math.sqrt(se2)
    return Comparison(diff, t_quantile(0.975, df) * se, t_two_sided_p(diff / se, df), df)
