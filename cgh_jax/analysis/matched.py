r"""Memorization at matched fit: a run's metrics where its own training path reaches a level.

A run is evaluated at steps :math:`t_0 < t_1 < \dots`; its path is the sequence of pairs
:math:`(x_i, y_i)`, e.g. :math:`x` = pristine training accuracy (or loss) and :math:`y` =
memorization (accuracy on the corrupted examples against their noisy label). Comparing two
optimizers at the same *epoch* mixes what they learn with how fast they learn; comparing
them at the same *fit* :math:`x = L` removes the speed:

.. math::
  y(L) = y_{i-1} + (y_i - y_{i-1}) \frac{L - x_{i-1}}{x_i - x_{i-1}},
  \qquad i = \min\{\, i : x_i \ge L \,\}

(for a falling measure such as the loss, :math:`x_i \le L`), linear interpolation between
the last evaluation below the level and the first at or above it. The *first* crossing is
used, so a path that later falls back below :math:`L` (non-monotone) is read where it first
reached it; :math:`y(L) = y_0` when the path starts at or beyond :math:`L`; a path that
never reaches :math:`L` has no value (NaN).

Evaluations are noisy (a pristine accuracy of 1,000 examples moves by about half a point
from one evaluation to the next), so a path can be smoothed first (:func:`smooth`, a
centered moving average) before it is matched.

The *frontier* of a family of runs (e.g. SGD at five learning rates) at level :math:`L` is
the least memorization any of them has when it reaches :math:`L`: the best that family
does at that fit. :func:`compare` pairs a setting's runs with a base's (or a family's
frontier) by seed. Plain NumPy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from cgh_jax.analysis import stats


def value_at_level(
    x: Sequence[float], y: Sequence[float], level: float, *, falling: bool = False
) -> float:
    """``y`` where the path ``x`` first reaches ``level``, linearly interpolated.

    Args:
      x: the matched measure at each evaluation, in time order (e.g. pristine accuracy).
      y: the measure read off at each evaluation (e.g. memorization), same length.
      level: the level of ``x``.
      falling: ``x`` falls towards the level (a loss): the first ``x_i <= level``.

    Returns:
      The interpolated ``y``; ``y[0]`` if ``x[0]`` is already at the level; NaN if ``x``
      never reaches it (or the path is empty).

    Example:
      >>> value_at_level([0.5, 0.8, 1.0], [0.0, 0.2, 0.6], 0.9)
      0.4
    """
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {xs.shape} and {ys.shape}.")
    sign = -1.0 if falling else 1.0
    xs, level = sign * xs, sign * level
    reached = np.flatnonzero(xs >= level)
    if reached.size == 0:
        return math.nan
    i = int(reached[0])
    if i == 0:
        return float(ys[0])
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return float(y0 + (y1 - y0) * (level - x0) / (x1 - x0))


def smooth(values: Sequence[float], width: int = 3) -> np.ndarray:
    """A centered moving average over ``width`` (odd) evaluations, the window shrunk at
    the ends, so that one noisy evaluation does not decide where a path reaches a level.

    Example:
      >>> smooth([0.0, 3.0, 0.0, 3.0]).tolist()
      [1.5, 1.0, 2.0, 1.5]
    """
    if width < 1 or width % 2 == 0:
        raise ValueError(f"width must be a positive odd number, got {width}.")
    xs, half = np.asarray(values, np.float64), width // 2
    return np.array([xs[max(0, i - half) : i + half + 1].mean() for i in range(xs.size)])


def best_value(values: Iterable[float], better=min) -> float:
    """``better`` (``min`` or ``max``) of the values that exist (NaN: that run never reached
    the level, or is missing); NaN if none does."""
    finite = [float(v) for v in values if not math.isnan(v)]
    return better(finite) if finite else math.nan


def frontier(values: Iterable[float]) -> float:
    """The least of the values that exist: a family's frontier (NaN if none exists)."""
    return best_value(values, min)


def first_reached(x: Sequence[float], level: float, *, falling: bool = False) -> int | None:
    """The index of the first evaluation at or beyond ``level`` (None if never)."""
    xs = np.asarray(x, np.float64) * (-1.0 if falling else 1.0)
    reached = np.flatnonzero(xs >= (-level if falling else level))
    return int(reached[0]) if reached.size else None


# ----------------------------------------------------------------------------- runs
# A run here is a finished run's curve: ``{"curve": {metric: [value at each evaluation]}}``
# (:func:`cgh_jax.study.archive_entry`), or None for a run not trained yet; a setting is its
# runs, one per seed.


def curve(run, key: str) -> list[float]:
    return [] if run is None else run["curve"][key]


def final(run, key: str) -> float:
    """The last evaluation's value (NaN for a missing run)."""
    return math.nan if run is None else float(curve(run, key)[-1])


def best(run, key: str) -> float:
    """The largest value over the run (NaN for a missing run)."""
    return math.nan if run is None else float(np.nanmax(curve(run, key)))


def path(run, key: str, width: int) -> np.ndarray:
    """A curve smoothed for matching (:func:`smooth`)."""
    return smooth(curve(run, key), width) if run is not None else np.zeros(0)


def at_fit(run, key: str, level: float, *, by: str, width: int) -> float:
    """``run``'s ``key`` where its ``by`` first reaches ``level`` (a ``.../loss`` falls to
    it), both smoothed over ``width`` evaluations; NaN if it never does."""
    if run is None or math.isnan(level):
        return math.nan
    falling = by.endswith("/loss")
    return value_at_level(path(run, by, width), path(run, key, width), level, falling=falling)


def reach(run, *, by: str, width: int) -> float:
    """The best fit ``run`` reaches: the highest (smoothed) ``by``, or the lowest for a
    ``.../loss``; NaN for a missing run."""
    if run is None:
        return math.nan
    values = path(run, by, width)
    return float(values.min() if by.endswith("/loss") else values.max())


def common_level(reaches: Iterable[float], *, by: str, step: float, digits: int) -> float:
    """The best fit that every one of ``reaches`` (:func:`reach`) attains: the least of
    them floored to ``step``, or for a ``.../loss`` the largest rounded up to ``digits``
    significant digits. NaN when there is none."""
    values = [v for v in reaches if not math.isnan(v)]
    if not values:
        return math.nan
    if not by.endswith("/loss"):
        return math.floor(min(values) / step + 1e-9) * step
    worst = max(values)
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(worst)))
    return math.ceil(worst * scale - 1e-9) / scale


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``arm`` against ``base``: a setting's key, or a family of keys read as its frontier
    (per seed, the least value of the family's runs that have one)."""

    arm: str
    base: str | tuple[str, ...]
    primary: bool = False

    @property
    def key(self) -> str:
        return f"{self.arm}-{'frontier' if isinstance(self.base, tuple) else self.base}"

    def reaches(self, settings: Mapping[str, Sequence], *, by: str, width: int) -> list[float]:
        """Per seed, the fits that bound the comparison's level (:func:`reach`): the arm's
        and the base's (a family: its best member's); seeds missing either are left out."""
        fit = lambda r: reach(r, by=by, width=width)  # noqa: E731
        better = min if by.endswith("/loss") else max
        arm = per_seed(settings[self.arm], fit)
        base = base_values(settings, self.base, fit, lambda v: best_value(v, better))
        return [
            v
            for pair in zip(arm, base, strict=True)
            if not any(map(math.isnan, pair))
            for v in pair
        ]


def per_seed(runs: Sequence, fn) -> list[float]:
    return [fn(r) for r in runs]


def base_values(settings: Mapping[str, Sequence], base, fn, pick=frontier) -> list[float]:
    """Per seed, ``fn`` of the base run, or ``pick`` (the least: :func:`frontier`) over a
    family's runs; NaN on a seed where one of the family's runs is not trained yet (a
    partial family is no frontier)."""
    if not isinstance(base, tuple):
        return per_seed(settings[base], fn)
    members = [settings[k] for k in base if k in settings]
    return [
        math.nan if any(r is None for r in runs) else pick([fn(r) for r in runs])
        for runs in zip(*members, strict=True)
    ]


def compare(settings: Mapping[str, Sequence], c: Comparison, fn, confidence: float) -> dict:
    """Per seed, ``fn(arm's run)`` minus the base's (:func:`base_values`); the mean
    difference and its t-interval at ``confidence`` over the seeds where both exist."""
    arm, base = per_seed(settings[c.arm], fn), base_values(settings, c.base, fn)
    d, lo, hi = stats.paired_difference(arm, base, confidence)
    n = sum(not (math.isnan(a) or math.isnan(b)) for a, b in zip(arm, base, strict=True))
    return dict(arm=arm, base=base, d=d, lo=lo, hi=hi, n=n)


def largest(values: Iterable[float]) -> float:
    """The largest value that exists (NaN if none): a family's best test accuracy."""
    return best_value(values, max)


def compare_at_fit(
    settings: Mapping[str, Sequence],
    c: Comparison,
    *,
    y: str,
    also: str,
    by: str,
    width: int,
    step: float,
    digits: int,
    confidence: float,
) -> dict:
    """``c`` at its own fit: the best level of ``by`` that the arm and its base reach on
    every seed (:meth:`Comparison.reaches`, :func:`common_level` with ``step`` and
    ``digits``), each run read there (:func:`at_fit`, smoothed over ``width``).

    Returns:
      :func:`compare`'s result for ``y`` (e.g. memorization; a family: its frontier) at
      ``confidence``, with the ``level`` and, for a second measure ``also`` (e.g. test
      accuracy; a family: its best, :func:`largest`), ``arm_also`` and ``base_also`` per
      seed and ``also_d``, their mean paired difference.
    """
    reaches = c.reaches(settings, by=by, width=width)
    level = common_level(reaches, by=by, step=step, digits=digits)
    y_at, also_at = (lambda r, k=k: at_fit(r, k, level, by=by, width=width) for k in (y, also))
    result = compare(settings, c, y_at, confidence)
    arm_also = per_seed(settings[c.arm], also_at)
    base_also = base_values(settings, c.base, also_at, largest)
    also_d = stats.paired_difference(arm_also, base_also)[0]
    return {
        **result,
        "level": level,
        "arm_also": arm_also,
        "base_also": base_also,
        "also_d": also_d,
    }


__all__ = [
    "Comparison",
    "at_fit",
    "base_values",
    "best",
    "best_value",
    "common_level",
    "reach",
    "compare",
    "compare_at_fit",
    "curve",
    "final",
    "first_reached",
    "frontier",
    "largest",
    "path",
    "per_seed",
    "smooth",
    "value_at_level",
]
