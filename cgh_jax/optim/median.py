"""Exact coordinate-wise medians and the median-of-means (M3) transform.

The kernels here select an order statistic: every output coordinate is one of the input
values, bit for bit, in the input's own dtype (bf16 stays bf16). Nothing is averaged or
rescaled.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from cgh_jax.optim import _checks

# Up to this many groups the median is a min/max network (elementwise, fused by XLA into
# one pass over the inputs); above it, a sort along the group axis.
_MAX_NETWORK_SIZE = 9

MedianOfMeansState = optax.EmptyState


def median3(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    r"""Coordinate-wise median of three arrays by a min/max network.

    .. math::
      \operatorname{med}(a, b, c) = \max\big(\min(a, b), \min(\max(a, b), c)\big)

    Four elementwise min/max operations, no sort and no arithmetic, so the result is exactly
    one of the inputs at every coordinate and keeps their dtype. A NaN in any input gives
    NaN at that coordinate.

    Args:
      a: an array.
      b: an array of the same shape and dtype as ``a``.
      c: an array of the same shape and dtype as ``a``.

    Returns:
      The coordinate-wise median, shaped and typed like ``a``.

    Example:
      >>> import jax.numpy as jnp
      >>> from cgh_jax.optim import median3
      >>> median3(jnp.array([1., 5.]), jnp.array([3., 4.]), jnp.array([2., 9.]))
      Array([2., 5.], dtype=float32)
    """
    return jnp.maximum(jnp.minimum(a, b), jnp.minimum(jnp.maximum(a, b), c))


def _median_network(values: list[jax.Array]) -> jax.Array:
    """Middle element of an odd-even transposition sorting network (min/max only).

    XLA removes the comparators whose outputs do not reach the middle element.
    """
    vals = list(values)
    n = len(vals)
    for rnd in range(n):
        for i in range(rnd % 2, n - 1, 2):
            lo = jnp.minimum(vals[i], vals[i + 1])
            hi = jnp.maximum(vals[i], vals[i + 1])
            vals[i], vals[i + 1] = lo, hi
    return vals[n // 2]


def coordinate_median(x: jax.Array) -> jax.Array:
    r"""Exact coordinate-wise median over the leading axis of ``x`` (odd size).

    For ``x`` of shape ``[k, *s]`` with odd ``k`` returns ``y`` of shape ``s`` with
    :math:`y_i = x_{(m), i}`, the :math:`m`-th smallest of :math:`x_{0,i},\dots,x_{k-1,i}`
    with :math:`m = (k-1)/2` (zero-based). The result is an order statistic: one of the
    inputs, bit for bit, in the input dtype. ``k = 3`` uses :func:`median3`; ``k <= 9`` a
    min/max network; larger ``k`` a sort along the axis. In every case a NaN anywhere in a
    coordinate's column gives NaN there.

    Args:
      x: array with a leading axis of odd size.

    Returns:
      The median over axis 0, shape ``x.shape[1:]``, dtype ``x.dtype``.

    Raises:
      ValueError: if ``x`` is a scalar or its leading axis has even size.
    """
    if x.ndim == 0:
        raise ValueError("coordinate_median needs an array with a leading axis, got a scalar.")
    k = x.shape[0]
    _checks.check_odd_group_count(k, "the leading axis size")
    if k == 1:
        return x[0]
    if k == 3:
        return median3(x[0], x[1], x[2])
    if k <= _MAX_NETWORK_SIZE:
        return _median_network([x[i] for i in range(k)])
    med = jnp.sort(x, axis=0)[k // 2]
    if jnp.issubdtype(x.dtype, jnp.inexact):
        med = jnp.where(jnp.isnan(x).any(axis=0), jnp.asarray(jnp.nan, x.dtype), med)
    return med


def _median_of_means(num_groups: Any) -> optax.GradientTransformation:
    """median_of_means for an int or, under inject_hyperparams, a traced group count.

    A traced count cannot be read; the group axis of the updates (static) is used instead.
    """
    static_k = _checks.static_int_or_none(num_groups, "num_groups")
    if static_k is not None:
        _checks.check_odd_group_count(static_k)

    def init_fn(params):
        del params
        return MedianOfMeansState()

    def update_fn(updates, state, params=None):
        k = _checks.check_grouped_shapes(updates, params, static_k, "median_of_means")
        if static_k is None:
            _checks.check_odd_group_count(k, "the group axis size")
        return jax.tree.map(coordinate_median, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def median_of_means(num_groups: int) -> optax.GradientTransformation:
    r"""Coordinate-wise median of ``num_groups`` group-mean gradients.

    The input carries a leading group axis: leaf ``g`` has shape ``[k, *param.shape]``,
    where ``g[j]`` is the mean gradient of group ``j`` of a mini-batch (see
    :func:`cgh_jax.grouped_grads`). The output is param-shaped:

    .. math::
      u_i = \operatorname{median}\big(g_{0,i}, g_{1,i}, \dots, g_{k-1,i}\big)

    for every coordinate :math:`i`, an exact order statistic in the gradient's own dtype.
    A direction that only a minority of groups push along (a *weak* direction, e.g. the
    gradient of a few memorized examples) is suppressed; directions most groups agree on
    (*strong* directions) pass.

    Args:
      num_groups: the number of groups ``k``, a positive odd integer. Even values are
        refused: the median of an even count is not an order statistic, and the midpoint
        rule would average the two middle groups, reintroducing the mean.

    Returns:
      An :class:`optax.GradientTransformation` (stateless).

    Raises:
      ValueError: at construction for an even or non-positive ``num_groups``; in ``update``
        without ``params`` (they are required: every leaf must be exactly
        ``[k, *param.shape]``, which only the params can tell), or when a leaf lacks the
        leading group axis or has the wrong size there (the message names the expected
        shape).

    Example:
      >>> import jax.numpy as jnp
      >>> import cgh_jax
      >>> opt = cgh_jax.median_of_means(3)
      >>> params = {"w": jnp.zeros(2)}
      >>> grads = {"w": jnp.array([[1., 10.], [2., -5.], [30., 0.]])}  # [3 groups, 2]
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> updates["w"]
      Array([2., 0.], dtype=float32)

    References:
      Chatterjee, `Coherent Gradients: An Approach to Understanding Generalization in
      Gradient Descent-based Optimization <https://arxiv.org/abs/2002.10657>`_, ICLR 2020.

      Zielinski, Krishnan and Chatterjee, `Weak and Strong Gradient Directions: Explaining
      Memorization, Generalization, and Hardness of Examples at Scale
      <https://arxiv.org/abs/2003.07422>`_, 2020.

    .. warning::
      The input updates must have the group axis in position 0 (per-group gradients, not
      param-shaped gradients), so this transform must come **first** in a chain.
      Accumulators such as :class:`optax.MultiSteps` or :func:`optax.apply_every` do not
      compose with it: they would average the grouped updates (or accumulate steps) before
      the median is taken, which is a different algorithm.
    """
    if _checks.static_int_or_none(num_groups, "num_groups") is None:
        raise ValueError(
            "num_groups must be a Python int (it fixes the shape of the updates), not a traced "
            "value."
        )
    return _median_of_means(num_groups)


def m3() -> optax.GradientTransformation:
    r"""M3: the coordinate-wise median of 3 group-mean gradients.

    ``m3()`` is ``median_of_means(3)``: a mini-batch is split into three groups (each the
    size of an SGD mini-batch in the paper), and the update is, per coordinate,

    .. math::
      u_i = \max\big(\min(g_{0,i}, g_{1,i}),\ \min(\max(g_{0,i}, g_{1,i}), g_{2,i})\big).

    Returns:
      An :class:`optax.GradientTransformation` taking updates of shape
      ``[3, *param.shape]`` and returning param-shaped updates. ``update`` requires
      ``params`` (to check the group axis against them).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import cgh_jax
      >>> params = jnp.ones(4)
      >>> loss = lambda p, batch: jnp.mean((batch @ p) ** 2)
      >>> grads = cgh_jax.grouped_grads(loss, 3)(params, jnp.ones((6, 4))).grads
      >>> grads.shape
      (3, 4)
      >>> opt = optax.chain(cgh_jax.m3(), optax.sgd(0.1))
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> updates.shape
      (4,)

    References:
      Zielinski, Krishnan and Chatterjee, `Weak and Strong Gradient Directions: Explaining
      Memorization, Generalization, and Hardness of Examples at Scale
      <https://arxiv.org/abs/2003.07422>`_, 2020.

    .. warning::
      Must be first in a chain (leading group axis); incompatible with
      :class:`optax.MultiSteps`. See :func:`median_of_means`.
    """
    return median_of_means(3)
