"""Argument and shape checks shared by the transforms (internal to cgh_jax.optim).

Structural arguments (``num_groups``, ``num_clipped``) are plain Python ints in normal use.
Under :func:`optax.inject_hyperparams` every numeric argument of an alias becomes a JAX
array stored in the optimizer state, and a traced one inside ``jax.jit``. The helpers here
turn concrete values into ints and report traced values as ``None`` so that callers can fall
back to what the (static) shapes of the updates tell them.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


def static_int_or_none(value: Any, name: str) -> int | None:
    """Returns ``value`` as an int, or None when it is a traced JAX value.

    Raises:
      ValueError: if ``value`` is concrete but not an integer (e.g. 2.5 or a vector).
    """
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got the bool {value!r}.")
    if isinstance(value, numbers.Integral):
        return int(value)
    arr = np.asarray(value)
    if arr.shape != () or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{name} must be a scalar integer, got {value!r} "
            f"(shape {arr.shape}, dtype {arr.dtype})."
        )
    return int(arr)


def check_odd_group_count(num_groups: int, name: str = "num_groups") -> None:
    """Raises ValueError unless ``num_groups`` is a positive odd integer."""
    if num_groups < 1:
        raise ValueError(f"{name} must be a positive odd integer, got {num_groups}.")
    if num_groups % 2 == 0:
        raise ValueError(
            f"{name} must be odd, got {num_groups}. The median of an even number of values is "
            "not one of the values (not an order statistic); the usual midpoint rule averages "
            "the two middle groups and reintroduces the mean this transform exists to avoid. "
            f"Use {num_groups - 1} or {num_groups + 1} groups."
        )


def leading_axis_size(leaves: Sequence[jax.Array], what: str) -> int:
    """Returns the common leading-axis size of ``leaves`` (ValueError if none or mixed)."""
    if not leaves:
        raise ValueError(f"{what}: the update tree has no array leaves.")
    sizes = set()
    for leaf in leaves:
        if np.ndim(leaf) == 0:
            raise ValueError(
                f"{what}: got a scalar update leaf, but every leaf needs a leading group/example "
                "axis (shape [n, *param.shape]). Produce the updates with cgh_jax.grouped_grads "
                "or cgh_jax.per_example_grads."
            )
        sizes.add(np.shape(leaf)[0])
    if len(sizes) != 1:
        raise ValueError(
            f"{what}: update leaves disagree on the size of the leading group/example axis "
            f"({sorted(sizes)}); every leaf must have shape [n, *param.shape] with the same n."
        )
    return sizes.pop()


def require_params(params: Any, what: str) -> None:
    """Raises ValueError (optax's ``NO_PARAMS_MSG`` wording) when ``params`` is None.

    The transforms with a leading group/example axis need the params to check that every
    update leaf is ``[n, *param.shape]``: without them an update lacking the axis whose
    first dimension happens to equal ``n`` would pass unnoticed.
    """
    if params is None:
        raise ValueError(
            f"{what}: You are using a transformation that requires the current value of "
            "parameters, but you are not passing `params` when calling `update`; call "
            "update(updates, state, params), so that every update leaf can be checked to be "
            "[n, *param.shape] (a leading group/example axis, then the parameter's shape)."
        )


def check_grouped_shapes(updates: Any, params: Any, size: int | None, what: str) -> int:
    """Checks that every update leaf is ``[size, *param.shape]``; returns ``size``.

    With ``size=None`` the size is taken from the updates (it must still agree across
    leaves).

    Raises:
      ValueError: ``params`` is None (:func:`require_params`), a leaf lacks the leading
        axis or has another size there, or the trees differ.
    """
    require_params(params, what)
    leaves = jax.tree.leaves(updates)
    found = leading_axis_size(leaves, what)
    if size is None:
        size = found
    param_leaves = jax.tree.leaves(params)
    if len(param_leaves) != len(leaves):
        raise ValueError(
            f"{what}: updates have {len(leaves)} leaves but params have {len(param_leaves)}."
        )
    for u, p in zip(leaves, param_leaves, strict=True):
        expected = (size, *np.shape(p))
        if tuple(np.shape(u)) != expected:
            raise ValueError(
                f"{what}: expected an update of shape {expected} (a leading group/example axis "
                f"of size {size}, then the parameter's shape {tuple(np.shape(p))}), got "
                f"{tuple(np.shape(u))}. Produce the updates with cgh_jax.grouped_grads or "
                "cgh_jax.per_example_grads, and put this transform first in the chain."
            )
    return size
