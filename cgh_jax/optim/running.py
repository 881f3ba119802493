"""RM3 (running median of the last three gradients) and RA3 (running mean control)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cgh_jax.optim.median import median3

_BUFFER_SIZE = 3


class RunningBufferState(NamedTuple):
    """State of :func:`rm3` and :func:`ra3`.

    Attributes:
      count: int32 scalar, the number of updates seen so far (saturating at the int32 max).
      buffer: a tree like the params whose leaves have shape ``[3, *param.shape]`` in the
        params' dtype: the ring buffer of the last three gradients. The gradient of update
        ``t`` (zero-based) is stored in slot ``t % 3``; the first gradient fills all three.
        Memory: three copies of the parameters.
    """

    count: jax.Array
    buffer: Any


RunningMedianState = RunningBufferState
RunningMeanState = RunningBufferState


def _check_param_shaped(updates: Any, params: Any, what: str) -> None:
    if params is None:
        return
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
        if u.shape != p.shape:
            raise ValueError(
                f"{what}: expected param-shaped updates, got a leaf of shape {u.shape} for a "
                f"parameter of shape {p.shape}. {what} takes ordinary mini-batch gradients (no "
                "leading group axis)."
            )


def _mean3(stacked: jax.Array) -> jax.Array:
    """(b0 + b1 + b2) / 3 as one elementwise kernel (16-bit floats summed in float32)."""
    acc = stacked.dtype
    if jnp.issubdtype(acc, jnp.floating) and jnp.finfo(acc).bits < 32:
        acc = jnp.float32
    b0, b1, b2 = (stacked[i].astype(acc) for i in range(_BUFFER_SIZE))
    return ((b0 + b1 + b2) / 3).astype(stacked.dtype)


def _running_buffer(
    reduce_fn: Callable[[jax.Array], jax.Array], name: str
) -> optax.GradientTransformation:
    """A ring buffer of three gradients, reduced coordinate-wise from the third call on."""

    def init_fn(params):
        buffer = jax.tree.map(lambda p: jnp.zeros((_BUFFER_SIZE, *p.shape), p.dtype), params)
        return RunningBufferState(count=jnp.zeros([], jnp.int32), buffer=buffer)

    def update_fn(updates, state, params=None):
        _check_param_shaped(updates, params, name)
        count = state.count

        def fill(buffer, grads):
            return jax.tree.map(
                lambda b, g: jnp.broadcast_to(g.astype(b.dtype)[None], b.shape), buffer, grads
            )

        def write(buffer, grads):
            slot = count % _BUFFER_SIZE
            return jax.tree.map(
                lambda b, g: jax.lax.dynamic_update_index_in_dim(b, g.astype(b.dtype), slot, 0),
                buffer,
                grads,
            )

        buffer = jax.lax.cond(count == 0, fill, write, state.buffer, updates)
        ready = count >= _BUFFER_SIZE - 1
        new_updates = jax.tree.map(
            lambda b, g: jnp.where(ready, reduce_fn(b).astype(g.dtype), jnp.zeros_like(g)),
            buffer,
            updates,
        )
        return new_updates, RunningBufferState(count=optax.safe_increment(count), buffer=buffer)

    return optax.GradientTransformation(init_fn, update_fn)


def rm3() -> optax.GradientTransformation:
    r"""RM3: the coordinate-wise running median of the last three gradients.

  With :math:`g_t` the (param-shaped) gradient of update :math:`t = 0, 1, 2, \dots`:

  .. math::
    u_t = \begin{cases}
      0 & t < 2 \\
      \operatorname{median}(g_t, g_{t-1}, g_{t-2}) & t \ge 2
    \end{cases}

  coordinate-wise, by the min/max network of :func:`cgh_jax.optim.median3` (exact, in the
  gradient's dtype). This is the authors' reference semantics: a ring buffer of three
  slots, the first gradient fills all three, and no parameter update is made on the first
  two steps. Unlike M3 it needs no grouped gradients, at the price of using gradients
  taken at stale parameters.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a :class:`RunningBufferState`.
    Memory: the buffer holds **three copies of the parameters** (in the params' dtype;
    incoming gradients are stored in that dtype and the output is cast back to the
    gradient's dtype).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import cgh_jax
    >>> opt = optax.chain(cgh_jax.rm3(), optax.sgd(1.0))
    >>> params = jnp.zeros(2)
    >>> state = opt.init(params)
    >>> for g in ([1., 5.], [2., -1.], [9., 0.]):
    ...   updates, state = opt.update(jnp.array(g), state, params)
    >>> updates  # -median of the three gradients
    Array([-2., -0.], dtype=float32)

  References:
    Zielinski, Krishnan and Chatterjee, `Weak and Strong Gradient Directions: Explaining
    Memorization, Generalization, and Hardness of Examples at Scale
    <https://arxiv.org/abs/2003.07422>`_, 2020.

  .. warning::
    Place it first in a chain (on the raw gradients, after coupled weight decay if any).
    :class:`optax.MultiSteps` would accumulate gradients before they enter the buffer,
    which is a different algorithm.
  """
    return _running_buffer(lambda b: median3(b[0], b[1], b[2]), "rm3")


def ra3() -> optax.GradientTransformation:
    r"""RA3: the running mean of the last three gradients (the control for RM3).

    Same ring buffer and warm-up as :func:`rm3` (zero updates on the first two calls), but

    .. math::
      u_t = \tfrac13\,(g_t + g_{t-1} + g_{t-2}), \qquad t \ge 2.

    Comparing RA3 with RM3 separates the effect of the median from the effect of using stale
    gradients. For bf16/f16 gradients the mean is accumulated in float32 and cast back.

    Returns:
      An :class:`optax.GradientTransformation` whose state is a :class:`RunningBufferState`
      (memory: three copies of the parameters).

    Example:
      >>> import jax.numpy as jnp
      >>> import cgh_jax
      >>> opt = cgh_jax.ra3()
      >>> params = jnp.zeros(1)
      >>> state = opt.init(params)
      >>> for g in (3., 6., 9.):
      ...   updates, state = opt.update(jnp.array([g]), state, params)
      >>> updates
      Array([6.], dtype=float32)

    References:
      Zielinski, Krishnan and Chatterjee, `Weak and Strong Gradient Directions: Explaining
      Memorization, Generalization, and Hardness of Examples at Scale
      <https://arxiv.org/abs/2003.07422>`_, 2020.

    .. warning::
      Place it first in a chain; incompatible with :class:`optax.MultiSteps`.
    """
    return _running_buffer(_mean3, "ra3")
