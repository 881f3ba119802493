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
does at that fit. Plain NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


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


def frontier(values: Iterable[float]) -> float:
    """The least of the values that exist (NaN: that run never reached the level); NaN if
    none does."""
    finite = [float(v) for v in values if not math.isnan(v)]
    return min(finite) if finite else math.nan


def first_reached(x: Sequence[float], level: float, *, falling: bool = False) -> int | None:
    """The index of the first evaluation at or beyond ``level`` (None if never)."""
    xs = np.asarray(x, np.float64) * (-1.0 if falling else 1.0)
    reached = np.flatnonzero(xs >= (-level if falling else level))
    return int(reached[0]) if reached.size else None


__all__ = ["first_reached", "frontier", "smooth", "value_at_level"]
