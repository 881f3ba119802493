r"""Norm-matched controls for the median of group means: direction of one, length of the other.

A median of ``k`` group means differs from their mean in two ways at once: its *direction*
(weak directions, pushed by a minority of groups, are suppressed) and its *length* (per
tensor it is usually longer or shorter than the mean). The two transforms here separate
them, per parameter tensor (leaf) :math:`\ell`, from grouped updates
:math:`g_{0..k-1}` (leading group axis, as :func:`cgh_jax.optim.median_of_means` takes):

.. math::
  \bar g_\ell = \tfrac1k \textstyle\sum_j g_{j,\ell}, \qquad
  m_\ell = \operatorname{median}_j g_{j,\ell}, \\
  \text{mean\_at\_median\_norm:}\quad
    u_\ell = \bar g_\ell \cdot \frac{\lVert m_\ell \rVert}{\lVert \bar g_\ell \rVert}, \qquad
  \text{median\_at\_mean\_norm:}\quad
    u_\ell = m_\ell \cdot \frac{\lVert \bar g_\ell \rVert}{\lVert m_\ell \rVert},

with Frobenius norms. ``mean_at_median_norm`` is SGD's direction at the median's step
length (the norm-matched SGD arm): if it memorizes as little as the median, the length
of the update, not its direction, is what matters. ``median_at_mean_norm`` is the median's
direction at SGD's step length. A leaf whose divisor norm is 0 gives zeros (no direction).
The norms are computed in float32 and the result is cast back to the update's dtype.

With equal-size groups the mean of the group means is the mini-batch mean gradient, so
``optax.chain(mean_at_median_norm(k), optax.sgd(lr))`` takes exactly the steps of plain SGD
on the same batch, rescaled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cgh_jax.optim import checks
from cgh_jax.optim.median import coordinate_median

NormMatchState = optax.EmptyState


def _norm(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))


def _rescale(direction: jax.Array, target_norm: jax.Array) -> jax.Array:
    """``direction`` scaled to ``target_norm``; zeros where ``direction`` is all zero."""
    norm = _norm(direction)
    scale = jnp.where(norm > 0, target_norm / jnp.where(norm > 0, norm, 1.0), 0.0)
    return (direction.astype(jnp.float32) * scale).astype(direction.dtype)


def mean_at_median_norm_leaf(grouped: jax.Array) -> jax.Array:
    """One leaf of :func:`mean_at_median_norm`: ``[k, *s] -> s``."""
    return _rescale(jnp.mean(grouped, axis=0), _norm(coordinate_median(grouped)))


def median_at_mean_norm_leaf(grouped: jax.Array) -> jax.Array:
    """One leaf of :func:`median_at_mean_norm`: ``[k, *s] -> s``."""
    return _rescale(coordinate_median(grouped), _norm(jnp.mean(grouped, axis=0)))


def _grouped_transform(leaf_fn, num_groups: int, what: str) -> optax.GradientTransformation:
    k = checks.static_int_or_none(num_groups, "num_groups")
    if k is None:
        raise ValueError("num_groups must be a Python int (it fixes the shape of the updates).")
    checks.check_odd_group_count(k)

    def init_fn(params):
        del params
        return NormMatchState()

    def update_fn(updates, state, params=None):
        checks.check_grouped_shapes(updates, params, k, what)
        return jax.tree.map(leaf_fn, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def mean_at_median_norm(num_groups: int) -> optax.GradientTransformation:
    r"""The mean of ``num_groups`` group-mean gradients, rescaled per tensor to the norm of
    their coordinate-wise median: SGD's direction at the median's step length.

    .. math::
      u_\ell = \bar g_\ell \, \lVert \operatorname{median}_j g_{j,\ell} \rVert
        / \lVert \bar g_\ell \rVert

    Args:
      num_groups: ``k``, a positive odd integer (the median's group count).

    Returns:
      A stateless :class:`optax.GradientTransformation` taking updates of shape
      ``[k, *param.shape]`` (and ``params``, to check that shape) and returning
      param-shaped updates.

    Example:
      >>> import jax.numpy as jnp
      >>> import cgh_jax
      >>> tx = cgh_jax.mean_at_median_norm(3)
      >>> params = {"w": jnp.zeros(2)}
      >>> grads = {"w": jnp.array([[3., 0.], [0., 4.], [3., 4.]])}  # median (3, 4), norm 5
      >>> u = tx.update(grads, tx.init(params), params)[0]["w"]  # the mean (2, 8/3), norm 5
      >>> jnp.round(u, 4)
      Array([3., 4.], dtype=float32)

    .. warning::
      Like :func:`cgh_jax.optim.median_of_means`, it takes a leading group axis and must
      come **first** in a chain.
    """
    return _grouped_transform(mean_at_median_norm_leaf, num_groups, "mean_at_median_norm")


def median_at_mean_norm(num_groups: int) -> optax.GradientTransformation:
    r"""The coordinate-wise median of ``num_groups`` group-mean gradients, rescaled per
    tensor to the norm of their mean: the median's direction at SGD's step length.

    .. math::
      u_\ell = m_\ell \, \lVert \bar g_\ell \rVert / \lVert m_\ell \rVert,
      \qquad m_\ell = \operatorname{median}_j g_{j,\ell}

    Args:
      num_groups: ``k``, a positive odd integer.

    Returns:
      A stateless :class:`optax.GradientTransformation` taking updates of shape
      ``[k, *param.shape]`` (and ``params``) and returning param-shaped updates.

    .. warning::
      Takes a leading group axis; must come **first** in a chain.
    """
    return _grouped_transform(median_at_mean_norm_leaf, num_groups, "median_at_mean_norm")


__all__ = [
    "NormMatchState",
    "mean_at_median_norm",
    "mean_at_median_norm_leaf",
    "median_at_mean_norm",
    "median_at_mean_norm_leaf",
]
