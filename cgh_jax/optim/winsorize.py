"""Winsorized mean of per-example gradients (the original Coherent Gradients experiment)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from cgh_jax.optim import checks

WinsorizeState = optax.EmptyState


def winsorized_mean(x: jax.Array, num_clipped: Any) -> jax.Array:
    r"""Coordinate-wise winsorized mean over the leading axis of ``x``.

    With :math:`x_{(0)} \le \dots \le x_{(n-1)}` the values of one coordinate sorted over
    the leading axis and :math:`c` = ``num_clipped``:

    .. math::
      \bar x = \frac1n \sum_{e=0}^{n-1} \operatorname{clip}\big(x_e,\ x_{(c)},\ x_{(n-1-c)}\big)

    The clipping bounds are exact order statistics in ``x``'s dtype; the mean is accumulated
    in float32 for 16-bit floats and cast back.

    Args:
      x: array of shape ``[n, *s]``.
      num_clipped: ``c``, an int with ``0 <= 2 c < n``, or a traced integer scalar (then
        it is clamped to ``[0, (n-1)//2]`` instead of checked).

    Returns:
      Array of shape ``s`` and dtype ``x.dtype``.
    """
    n = x.shape[0]
    c = checks.static_int_or_none(num_clipped, "num_clipped")
    if c is None:
        c_dyn = jnp.clip(jnp.asarray(num_clipped, jnp.int32), 0, (n - 1) // 2)
    elif c == 0:
        return _mean(x)
    elif c < 0 or 2 * c >= n:
        raise ValueError(_too_many_clipped(c, n))
    srt = jnp.sort(x, axis=0)
    if c is None:
        lo = jax.lax.dynamic_index_in_dim(srt, c_dyn, 0, keepdims=False)
        hi = jax.lax.dynamic_index_in_dim(srt, n - 1 - c_dyn, 0, keepdims=False)
    else:
        lo, hi = srt[c], srt[n - 1 - c]
    return _mean(jnp.clip(x, lo, hi))


def _mean(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        return jnp.mean(x.astype(jnp.float32), axis=0).astype(x.dtype)
    return jnp.mean(x, axis=0).astype(x.dtype)


def _too_many_clipped(c: int, n: int) -> str:
    return (
        f"num_clipped={c} is out of range for {n} examples: it must satisfy "
        f"0 <= 2 * num_clipped < n (at most {(n - 1) // 2} here), so that the lower bound "
        "x_(c) does not pass the upper bound x_(n-1-c). Use a larger batch or a smaller "
        "num_clipped."
    )


def winsorize(num_clipped: int) -> optax.GradientTransformation:
    r"""Winsorized mean of per-example gradients (winsorized SGD's aggregator).

    The input carries a leading per-example axis: leaf ``g`` has shape
    ``[n, *param.shape]`` with ``g[e]`` the gradient of example ``e`` (see
    :func:`cgh_jax.per_example_grads`). Per coordinate, the ``n`` values are clipped to the
    ``c``-th smallest and ``c``-th largest of them (zero-based ``c`` = ``num_clipped``)
    and then averaged:

    .. math::
      u_i = \frac1n \sum_{e=0}^{n-1}
        \operatorname{clip}\big(g_{e,i},\ g_{(c),i},\ g_{(n-1-c),i}\big)

    so ``num_clipped=0`` is the plain mean and larger values suppress directions that only a
    few examples push along. With ``n = 100`` this is the paper's percentile rule with
    ``c = num_clipped``.

    Args:
      num_clipped: ``c >= 0``; ``update`` requires ``2 c < n``.

    Returns:
      An :class:`optax.GradientTransformation` (stateless) returning param-shaped updates.

    Raises:
      ValueError: for a negative ``num_clipped``; in ``update`` without ``params`` (they
        are required: every leaf must be exactly ``[n, *param.shape]``), for ``2 c >= n``,
        or for updates without the per-example axis.

    Example:
      >>> import jax.numpy as jnp
      >>> import cgh_jax
      >>> opt = cgh_jax.winsorize(1)
      >>> params = jnp.zeros(1)
      >>> per_example = jnp.array([[0.], [1.], [2.], [3.], [100.]])  # 5 examples
      >>> updates, _ = opt.update(per_example, opt.init(params), params)
      >>> updates  # values clipped to [1, 3]: mean(1, 1, 2, 3, 3)
      Array([2.], dtype=float32)

    References:
      Chatterjee, `Coherent Gradients: An Approach to Understanding Generalization in
      Gradient Descent-based Optimization <https://arxiv.org/abs/2002.10657>`_, ICLR 2020.

    .. warning::
      The input must carry the per-example axis in position 0, so this transform must come
      **first** in a chain. :class:`optax.MultiSteps` and :func:`optax.apply_every` do not
      compose with it (they would accumulate before the clipping). Per-example gradients
      cost memory ``n`` times the parameters; the sort over the example axis costs
      :math:`O(n \log n)` per coordinate.
    """
    c = checks.static_int_or_none(num_clipped, "num_clipped")
    if c is not None and c < 0:
        raise ValueError(f"num_clipped must be >= 0, got {c}.")

    def init_fn(params):
        del params
        return WinsorizeState()

    def update_fn(updates, state, params=None):
        n = checks.check_grouped_shapes(updates, params, None, "winsorize")
        if c is not None and 2 * c >= n:
            raise ValueError(_too_many_clipped(c, n))
        return jax.tree.map(lambda g: winsorized_mean(g, num_clipped), updates), state

    return optax.GradientTransformation(init_fn, update_fn)
