"""Small statistics over seeds: mean and sample std, and paired differences with a t-interval.

Results of a study are a handful of runs per setting, one per seed. Tables show
``mean ± std`` (sample std, ``ddof=1``) over the seeds; a comparison of two settings trained
with the same seeds pairs the runs by seed and reports the mean difference with its
two-sided 95% Student-t interval (:func:`paired_difference`).

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


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Mean of the per-seed differences ``a[i] - b[i]`` and its two-sided 95% t-interval.

    With ``n`` pairs (pairs with a NaN left out), mean difference ``d`` and sample std ``s``
    of the differences, the interval is ``d ± t95(n - 1) * s / sqrt(n)``.

    Args:
      a, b: values of two settings, in the same seed order (equal lengths).

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
    half = t95(n - 1) * spread / math.sqrt(n) if n > 1 else math.nan
    return mid, mid - half, mid + half


__all__ = ["T95", "mean", "mean_std", "paired_difference", "std", "t95"]
