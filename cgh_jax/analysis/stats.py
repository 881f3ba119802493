"""Small statistics over seeds: mean and sample std, and paired differences with a t-interval.

Results of a study are a handful of runs per setting, one per seed. Tables show
``mean ± std`` (sample std, ``ddof=1``) over the seeds; a comparison of two settings trained
with the same seeds pairs the runs by seed and reports the mean difference with its
two-sided Student-t interval (:func:`paired_difference`), 95% by default. A page that
reports ``m`` such tests as one family corrects them by Bonferroni: each interval at
confidence ``1 - 0.05 / m`` (:func:`bonferroni`), with the quantile from
:func:`t_quantile` (Student's t distribution through the regularized incomplete beta
function).

Plain Python and NumPy only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

#: Two-sided 95% quantiles of Student's t distribution (``t_{0.975, df}``) for df = 1..10,
#: as printed in t tables: 12.706 (df 1), 4.303 (2), 3.182 (3), 2.776 (4), 2.571 (5),
#: 2.447 (6), 2.365 (7), 2.306 (8), 2.262 (9), 2.228 (10). Beyond df 10,
#: :func:`t95` returns df 10's value, which is larger than the true quantile (1.96 as
#: df -> infinity), so the interval is conservative.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t95(df: int) -> float:
    """The two-sided 95% t quantile for ``df >= 1`` degrees of freedom (:data:`T95`)."""
    if df < 1:
        raise ValueError(f"t95 needs at least one degree of freedom, got {df}.")
    return T95[min(df, len(T95)) - 1]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value).

    NaN values are kept (and make the result NaN); :func:`mean` and :func:`std` skip them.

    Example:
      >>> mean_std([1.0, 2.0, 3.0])
      (2.0, 1.0)
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_std needs at least one value.")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def _finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if not math.isnan(v)]


def mean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values (NaN if there is none), e.g. over the seeds that finished."""
    values = _finite(values)
    return mean_std(values)[0] if values else math.nan


def std(values: Iterable[float]) -> float:
    """Sample standard deviation (``ddof=1``) of the non-NaN values (0 for fewer than two)."""
    values = _finite(values)
    return mean_std(values)[1] if values else 0.0


def spread_comparison(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Two settings' values over seeds (NaN skipped), compared without pairing: their means
    and the *floor* a difference must exceed to count, twice the larger sample std.

    Example:
      >>> spread_comparison([1.0, 2.0, 3.0], [5.0, 5.0])  # sample std 1 and 0: floor 2
      (2.0, 5.0, 2.0)
    """
    return mean(a), mean(b), 2 * max(std(a), std(b))


def less_beyond_spread(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a``'s mean is below ``b``'s by more than :func:`spread_comparison`'s floor."""
    mean_a, mean_b, floor = spread_comparison(a, b)
    return mean_b - mean_a > floor


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz method)."""
    tiny, frac = 1e-300, 1.0
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    frac = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            frac *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return frac


def regularized_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function :math:`I_x(a, b)` for ``0 <= x <= 1``."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_tail(t: float, df: float) -> float:
    r"""``P(|T| > t)`` for Student's t with ``df`` degrees of freedom:
    :math:`I_{df / (df + t^2)}(df/2, 1/2)`."""
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t quantile: ``t`` with ``P(|T| <= t) = confidence``.

    Solved by bisection on :func:`t_two_sided_tail` to 1e-10. ``t_quantile(0.95, df)``
    equals :func:`t95`'s table to its 3 decimals for df = 1..10.

    Example:
      >>> round(t_quantile(0.95, 4), 3)
      2.776
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    if df < 1:
        raise ValueError(f"t_quantile needs at least one degree of freedom, got {df}.")
    low, high = 0.0, 1.0
    while t_two_sided_tail(high, df) > 1.0 - confidence:
        low, high = high, 2.0 * high
    while high - low > 1e-10 * max(1.0, high):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if t_two_sided_tail(mid, df) > 1.0 - confidence else (low, mid)
    return 0.5 * (low + high)


def bonferroni(num_tests: int, confidence: float = 0.95) -> float:
    """The per-test confidence of ``num_tests`` simultaneous intervals at family-wise
    ``confidence``: ``1 - (1 - confidence) / num_tests``."""
    if num_tests < 1:
        raise ValueError(f"bonferroni needs at least one test, got {num_tests}.")
    return 1.0 - (1.0 - confidence) / num_tests


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean of the per-seed differences ``a[i] - b[i]`` and its two-sided t-interval.

    With ``n`` pairs (pairs with a NaN left out), mean difference ``d`` and sample std ``s``
    of the differences, the interval is ``d ± t * s / sqrt(n)`` with ``t = t95(n - 1)`` at
    the default 95% (the table), else :func:`t_quantile` at ``confidence``.

    Args:
      a, b: values of two settings, in the same seed order (equal lengths).
      confidence: the interval's two-sided confidence (e.g. :func:`bonferroni`'s).

    Returns:
      ``(d, low, high)``; ``low`` and ``high`` are NaN for fewer than two pairs (and all
      three for none).

    Example:
      >>> paired_difference([3.0, 5.0], [2.0, 2.0])  # d = 2, s = sqrt(2), t95(1) = 12.706
      (2.0, -10.706, 14.706)
    """
    diffs = _finite(x - y for x, y in zip(a, b, strict=True))
    n = len(diffs)
    mid, spread = mean(diffs), std(diffs)
    if n > 1:
        t = t95(n - 1) if confidence == 0.95 else t_quantile(confidence, n - 1)
        half = t * spread / math.sqrt(n)
    else:
        half = math.nan
    return mid, mid - half, mid + half


__all__ = [
    "T95",
    "bonferroni",
    "less_beyond_spread",
    "mean",
    "mean_std",
    "paired_difference",
    "regularized_beta",
    "spread_comparison",
    "std",
    "t95",
    "t_quantile",
    "t_two_sided_tail",
]
